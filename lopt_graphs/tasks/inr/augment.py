"""Weight-space augmentations of stacked SIRENs that change the weights but not (or only geometrically)
the image an INR represents.

* ``sign``: ``sin`` is odd, so negating a hidden neuron's incoming weights and bias and its outgoing weights
  leaves the SIREN's function unchanged. The neural graph's permutation symmetry does not cover these sign
  symmetries, so an encoder has to learn them; random flips during training teach it.
* ``affine``: the INR of the image ``I(A x + t)`` (a small rotation, scaling and shift of the picture) is
  the INR of ``I`` with first layer ``W1 A`` and bias ``b1 + W1 t``: an exact edit of the weights that acts
  like the image augmentations of ordinary classifiers.

Both act on ``[B, ...]`` stacked parameters in the order of :func:`~lopt_graphs.tasks.inr.siren.make_siren`
and draw from a ``torch.Generator``, so a training run stays reproducible.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

#: Values of the ``weight_aug`` setting of the INR commands.
WEIGHT_AUGS: tuple[str, ...] = ("none", "sign", "affine", "sign_affine")


def random_signs(params: Sequence[Tensor], gen: torch.Generator) -> list[Tensor]:
    """Flip each hidden neuron of each SIREN with probability 1/2 (the function is unchanged)."""
    out = list(params)
    b = params[0].shape[0]
    for layer in range(len(params) // 2 - 1):  # hidden layers only: the output neuron has no sine
        w, bias, w_next = out[2 * layer], out[2 * layer + 1], out[2 * layer + 2]
        s = torch.randint(0, 2, (b, w.shape[1]), generator=gen).to(w.dtype).mul(2).sub(1)
        out[2 * layer] = w * s.unsqueeze(-1)
        out[2 * layer + 1] = bias * s
        out[2 * layer + 2] = w_next * s.unsqueeze(1)
    return out


def random_affine(params: Sequence[Tensor], gen: torch.Generator, max_degrees: float = 15.0,
                  scale: tuple[float, float] = (0.9, 1.1), max_shift: float = 0.1) -> list[Tensor]:
    """Compose each SIREN with a random input transform ``x -> A x + t`` (rotation up to ``max_degrees``,
    isotropic ``scale``, shift up to ``max_shift`` in ``[-1, 1]`` coordinates, i.e. about 1.4 pixels of a
    28-pixel image at 0.1)."""
    w1, b1 = params[0], params[1]
    b = w1.shape[0]
    u = torch.rand(b, 4, generator=gen, dtype=torch.float32).to(w1.dtype)
    theta = (u[:, 0] * 2 - 1) * math.radians(max_degrees)
    s = scale[0] + u[:, 1] * (scale[1] - scale[0])
    cos, sin = torch.cos(theta) * s, torch.sin(theta) * s
    a = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [B, 2, 2]
    t = (u[:, 2:] * 2 - 1) * max_shift  # [B, 2]
    return [w1 @ a, b1 + (w1 @ t.unsqueeze(-1)).squeeze(-1), *params[2:]]


def augment_weights(params: Sequence[Tensor], kind: str, gen: torch.Generator) -> list[Tensor]:
    """Apply the augmentation ``kind`` (one of :data:`WEIGHT_AUGS`) to stacked SIREN parameters."""
    if kind not in WEIGHT_AUGS:
        raise ValueError(f"Unknown weight augmentation {kind!r}; expected one of {WEIGHT_AUGS}")
    out = list(params)
    if kind in ("affine", "sign_affine"):
        out = random_affine(out, gen)
    if kind in ("sign", "sign_affine"):
        out = random_signs(out, gen)
    return out
