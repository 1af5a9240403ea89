"""A small transformer sequence classifier over the embedded datasets' inputs, read as token sequences.

An image ``[1, H, W]`` is ``H`` tokens (its rows) of ``W`` features; a 1-D signal ``[1, L]`` is ``L / 4`` tokens
of 4 consecutive values. The model::

    h = embed(tokens(x)) + pos(positions)          # Linear token embedding + learned positional embedding
    h = layer_k(... layer_1(h))                    # post-norm nn.TransformerEncoderLayer, 2 heads, ff 2 d
    logits = head(mean over tokens of h)

On the neural graph (``graph_from_module(model, on_unsupported="free", embeddings="edge")``, as
``NeuralGraphOptimizer.for_module`` traces it): the token features are input neurons (``nn.Unflatten`` of the
input, :mod:`lopt_graphs.graph.from_module`), the positional embedding is an ``nn.Embedding`` read at
``positions = arange(T)``: one input neuron per position and a transposed edge block into the residual
stream (:mod:`lopt_graphs.graph.embedding_rules`), as a BERT's position embeddings. The stream is one pinned
neuron set; the feed-forward hidden neurons are permutable; the attention in-projections are the only
graph-free parameters (they read the stream by position through the attention scores,
:mod:`lopt_graphs.graph.attention_rules`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Activations a ``TransformerEncoderLayer`` takes by name.
TRANSFORMER_ACTS: tuple[str, ...] = ("relu", "gelu")
#: Values per token of a 1-D signal.
PATCH_1D = 4


def token_shape(input_shape: tuple[int, ...]) -> tuple[int, int]:
    """``(tokens, features)`` of one example: rows of a ``[1, H, W]`` image, patches of :data:`PATCH_1D`
    values of a ``[1, L]`` signal."""
    if len(input_shape) == 3 and input_shape[0] == 1:
        return input_shape[1], input_shape[2]
    if len(input_shape) == 2 and input_shape[0] == 1 and input_shape[1] % PATCH_1D == 0:
        return input_shape[1] // PATCH_1D, PATCH_1D
    raise ValueError(f"Expected a one-channel input [1, H, W] or [1, L] with L a multiple of {PATCH_1D} to "
                     f"read as tokens (got {tuple(input_shape)})")


class TokenTransformer(nn.Module):
    """Transformer encoder classifier of one-channel images or signals (see the module docstring).

    Args:
        input_shape: shape of one example (``[1, H, W]`` or ``[1, L]``).
        num_classes: outputs of the head.
        d_model: width of the residual stream.
        layers: number of encoder layers.
        activation: ``"relu"`` or ``"gelu"`` (the feed-forward blocks').
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, d_model: int, layers: int,
                 activation: str = "relu"):
        super().__init__()
        if activation not in TRANSFORMER_ACTS:
            raise ValueError(f"Invalid activation for a transformer: {activation!r} (expected one of "
                             f"{list(TRANSFORMER_ACTS)})")
        if layers < 1 or d_model < 2 or d_model % 2:
            raise ValueError(f"Invalid transformer size: {layers} layers of width {d_model} (expected >= 1 "
                             f"layers of an even width, 2 heads)")
        t, f = token_shape(input_shape)
        self.flatten = nn.Flatten()
        self.tokens = nn.Unflatten(1, (t, f))
        self.embed = nn.Linear(f, d_model)
        self.pos = nn.Embedding(t, d_model)
        # not a parameter and not saved: the position ids are part of the architecture
        self.register_buffer("positions", torch.arange(t), persistent=False)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, nhead=2, dim_feedforward=2 * d_model, dropout=0.0,
                                       activation=activation, batch_first=True)
            for _ in range(layers))
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(self.tokens(self.flatten(x))) + self.pos(self.positions)
        for layer in self.layers:
            h = layer(h)
        return self.head(h.mean(dim=1))


def reset_attention(module: nn.Module) -> None:
    """PyTorch's default init of every ``nn.MultiheadAttention`` of ``module`` (its private
    ``_reset_parameters``: Xavier in-projections, zero biases); call it after the public
    ``reset_parameters`` of the submodules, which re-draw ``out_proj`` as a plain Linear."""
    for m in module.modules():
        if isinstance(m, nn.MultiheadAttention):
            m._reset_parameters()
