"""lopt_graphs: neural graphs of PyTorch models and a learned optimizer over them.

``from lopt_graphs import NeuralGraphOptimizer`` gives the optimizer; ``lopt_graphs.graph`` turns networks
into graphs; ``lopt_graphs.nn`` holds the encoder shared by every task.
"""

import warnings

with warnings.catch_warnings():
    # torch_geometric (2.7) calls the deprecated torch.jit.script while it is imported, which under torch >= 2.14
    # printed a FutureWarning about code that is not the user's on every import of this package
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    import torch_geometric  # noqa: F401

from .optim import NeuralGraphOptimizer  # noqa: E402

__version__ = "0.1.0"
__all__ = ["NeuralGraphOptimizer", "__version__"]
