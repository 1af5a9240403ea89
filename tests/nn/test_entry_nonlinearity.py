"""The kernel-entry DeepSets switch: with it the encoder tells kernels with equal means apart."""

import torch

from lopt_graphs.graph import graph_from_parameters, neural_graph
from lopt_graphs.nn import EncoderConfig, NeuralGraphEncoder


def test_entry_nonlinearity_sees_more_than_the_kernel_mean():
    torch.manual_seed(0)
    spec = graph_from_parameters([(2, 1, 3), (2,)])
    a = [torch.tensor([[[1.0, 0.0, -1.0]], [[0.5, 0.5, 0.5]]]), torch.zeros(2)]
    b = [torch.tensor([[[0.0, 0.0, 0.0]], [[0.5, 0.5, 0.5]]]), torch.zeros(2)]  # same kernel means as a
    outs = {}
    for flag in (False, True):
        torch.manual_seed(0)
        enc = NeuralGraphEncoder(EncoderConfig(graph_out=1, max_kernel=1, entry_nonlinearity=flag))
        with torch.no_grad():
            outs[flag] = (enc(neural_graph(spec, a)).graph_out - enc(neural_graph(spec, b)).graph_out).abs().item()
    assert outs[False] < 1e-6  # one feature per entry, no position embedding beyond entry 0: mean only
    assert outs[True] > 1e-4
