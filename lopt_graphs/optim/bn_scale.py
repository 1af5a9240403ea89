"""Weights that feed a BatchNorm take the base (Adam-like) step, not the learned one.

Why (measured on ``torchvision.models.resnet18(num_classes=10)``, 60 steps on 64 fixed 32x32 images, see the
README): under the default checkpoint the train-mode loss falls to 0.02 while the eval-mode loss rises from
2.37 to 25 and more. Re-estimating the BatchNorm running statistics after training brings the eval loss
back to the train loss, so the network is fine and its running statistics are stale. Stepping only the
convolution weights with Adam (everything else learned) gives an eval loss of 0.001; stepping only the
BatchNorm affine parameters with Adam does not help; Adam with the learned step's size (lr 0.02, the step
saturates at about ``e**3`` times ``base_lr``) shows the same explosion. So the learned step on the weights
that feed a BatchNorm moves the pre-normalization statistics faster than the running averages (momentum 0.1)
follow, and in training mode nothing shows it: BatchNorm renormalizes every batch, so the weights' scale and
offset are invisible to the loss, and none of the meta-training tasks has a normalization layer. Capping
those steps at 2-10% of the weight's norm, with or without keeping the norm fixed, did not fix it.

The fix: weights recorded in ``GraphSpec.scale_invariant`` (a Linear/Conv whose only consumer is a
BatchNorm, found by :func:`~lopt_graphs.graph.graph_from_module`) take the base step of the update rule,
``p <- p (1 - eta lambda) - eta m_hat r`` (the learned head's magnitude and direction corrections are not
applied; their moments and node terms are still kept, so the rest of the graph sees them as before).
"""

from __future__ import annotations

import torch
from torch import Tensor


def base_step(p: Tensor, st: dict[str, Tensor], betas: tuple[float, float], eps: float, eta: float | Tensor,
              weight_decay: float) -> Tensor:
    """The update rule's base (Adam-like) step of ``p`` from its *advanced* state ``st``.

    Args:
        p: the parameter before the step.
        st: its state after the step (``step``, ``m_adam``, ``v`` already advanced).
        eta: ``lr * base_lr``.

    Returns:
        The new value of ``p`` (its dtype).
    """
    b1, b2 = betas
    t = st["step"]
    r = torch.rsqrt(st["v"] / (1 - b2 ** t) + eps * eps)
    p32 = p.to(st["v"].dtype)
    if weight_decay:
        p32 = p32 * (1 - eta * weight_decay)
    return (p32 - eta * (st["m_adam"] / (1 - b1 ** t)) * r).to(p.dtype)
