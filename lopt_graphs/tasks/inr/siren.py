"""SIRENs (sine-activated MLPs) as implicit neural representations of images, many at once.

A SIREN maps a pixel coordinate in ``[-1, 1]^2`` to an intensity. The reference module is
``nn.Sequential(Linear(2, h), Sine(w0), Linear(h, h), Sine(w0), Linear(h, 1))`` and every stacked parameter
set of this package follows its ``parameters()`` order: ``(W1 [h, 2], b1 [h], W2 [h, h], b2 [h], W3 [1, h],
b3 [1])``, each with a leading batch dim ``B`` when stacked.

All fitting and rendering runs on stacked weights with batched matmuls (``bmm``), so thousands of INRs are
fitted in one full-batch optimization; the loss is a sum of per-INR losses and Adam is elementwise, so every
INR follows exactly the trajectory it would follow alone.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


class Sine(nn.Module):
    """``sin(w0 * x)``; traced by ``torch.fx`` as a ``sin`` activation of the neurons it reads."""

    def __init__(self, w0: float = 30.0):
        super().__init__()
        self.w0 = float(w0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.w0 * x)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"


def make_siren(hidden: int = 32, w0: float = 30.0, depth: int = 2, in_dim: int = 2,
               out_dim: int = 1) -> nn.Sequential:
    """The reference SIREN module ``Linear, Sine, (Linear, Sine) * (depth - 1), Linear``.

    Its ``parameters()`` order is the order of every stacked parameter list of this package; building the
    graph spec is ``graph_from_module(make_siren(...))``.
    """
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden), Sine(w0)]
    for _ in range(depth - 1):
        layers += [nn.Linear(hidden, hidden), Sine(w0)]
    layers.append(nn.Linear(hidden, out_dim))
    return nn.Sequential(*layers)


def param_shapes(hidden: int = 32, depth: int = 2, in_dim: int = 2, out_dim: int = 1) -> list[tuple[int, ...]]:
    """Shapes of the SIREN's parameters in module order (without batch dim)."""
    dims = [in_dim] + [hidden] * depth + [out_dim]
    shapes: list[tuple[int, ...]] = []
    for a, b in zip(dims[:-1], dims[1:]):
        shapes += [(b, a), (b,)]
    return shapes


def siren_init(count: int, seeds: Tensor, hidden: int = 32, w0: float = 30.0, depth: int = 2,
               in_dim: int = 2, out_dim: int = 1) -> list[Tensor]:
    """SIREN initialization (Sitzmann et al., 2020) of ``count`` INRs, one generator per INR.

    Weights: first layer ``U(-1/in, 1/in)``, later layers ``U(-sqrt(6/in)/w0, sqrt(6/in)/w0)``; biases
    ``U(-1/sqrt(in), 1/sqrt(in))`` (PyTorch's default). INR ``i`` draws from its own ``torch.Generator``
    seeded with ``seeds[i]``, so its initialization does not depend on which other INRs are fitted with it.

    Returns:
        One tensor per parameter, ``[count, *shape]`` float32.
    """
    shapes = param_shapes(hidden, depth, in_dim, out_dim)
    bounds: list[float] = []
    for j in range(len(shapes)):
        fan_in = shapes[2 * (j // 2)][1]
        if j % 2 == 1:
            bounds.append(1.0 / math.sqrt(fan_in))
        elif j == 0:
            bounds.append(1.0 / fan_in)
        else:
            bounds.append(math.sqrt(6.0 / fan_in) / w0)
    sizes = [math.prod(s) for s in shapes]
    total = sum(sizes)
    flat = torch.empty(count, total)
    gen = torch.Generator()
    for i in range(count):
        gen.manual_seed(int(seeds[i]))
        flat[i] = torch.rand(total, generator=gen)
    out = []
    for chunk, shape, bound in zip(flat.split(sizes, dim=1), shapes, bounds):
        out.append(((chunk * 2 - 1) * bound).reshape(count, *shape).contiguous())
    return out


def pixel_grid(height: int, width: int) -> Tensor:
    """Pixel-center coordinates ``[H * W, 2]`` as ``(x, y)`` in ``[-1, 1]^2``, row-major over the image."""
    ys = torch.linspace(-1.0, 1.0, height)
    xs = torch.linspace(-1.0, 1.0, width)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], dim=-1).reshape(-1, 2)


def siren_forward(params: Sequence[Tensor], coords: Tensor, w0: float = 30.0,
                  return_hidden: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Evaluate ``B`` stacked SIRENs at shared coordinates.

    Args:
        params: ``(W1, b1, ..., WL, bL)`` with shapes ``[B, out, in]`` / ``[B, out]``.
        coords: ``[P, in_dim]`` (shared by all INRs) or ``[B, P, in_dim]``.
        w0: sine frequency of every ``Sine``.
        return_hidden: also return every layer's post-activation values (``[B, P, width]``, the output
            layer's value last), used for probe features.

    Returns:
        ``[B, P, out_dim]`` outputs (and the hidden activations).
    """
    b = params[0].shape[0]
    coords = coords.to(params[0].dtype)
    h = coords.expand(b, *coords.shape) if coords.dim() == 2 else coords
    hidden: list[Tensor] = []
    n_layers = len(params) // 2
    for layer in range(n_layers):
        w, bias = params[2 * layer], params[2 * layer + 1]
        h = torch.baddbmm(bias.unsqueeze(1), h, w.transpose(1, 2))
        if layer < n_layers - 1:
            h = torch.sin(w0 * h)
        hidden.append(h)
    return (h, hidden) if return_hidden else h


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-INR PSNR in dB for intensities in ``[0, 1]``; ``pred``/``target`` ``[B, ...]``."""
    mse = (pred - target).pow(2).flatten(1).mean(1).clamp(min=1e-12)
    return -10.0 * torch.log10(mse)
