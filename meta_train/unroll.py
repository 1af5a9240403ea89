"""Truncated inner unrolls of the learned optimizer, as pure functions of the meta-parameters.

The meta-parameters ``theta`` are one flat vector (:class:`ThetaSpace` maps it to the
:class:`~lopt_graphs.optim.LearnedUpdate`'s named tensors), so a population is a ``[P, D]`` matrix and
``torch.func.vmap`` evaluates it in one batched call; ``torch.func.grad`` differentiates an unroll for
truncated backprop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value

from lopt_graphs.optim import LearnedUpdate, ngo_update

from .tasks import Task


class ThetaSpace:
    """Flat-vector view of a :class:`LearnedUpdate`'s parameters."""

    def __init__(self, learned: LearnedUpdate):
        self.names = [n for n, _ in learned.named_parameters()]
        self.shapes = [tuple(p.shape) for _, p in learned.named_parameters()]
        self.numels = [p.numel() for _, p in learned.named_parameters()]
        self.dim = sum(self.numels)

    def flatten(self, learned: LearnedUpdate) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for _, p in learned.named_parameters()])

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """``{"learned.<name>": tensor}`` views of ``theta`` (for ``functional_call`` on :class:`Stepper`)."""
        parts = theta.split(self.numels)
        return {f"learned.{n}": t.view(s) for n, t, s in zip(self.names, parts, self.shapes)}

    def load_into(self, learned: LearnedUpdate, theta: Tensor) -> None:
        with torch.no_grad():
            for (_, p), t in zip(learned.named_parameters(), theta.split(self.numels)):
                p.copy_(t.view_as(p))


class Stepper(nn.Module):
    """Wraps :func:`ngo_update` so ``functional_call`` can substitute the learned weights."""

    def __init__(self, learned: LearnedUpdate):
        super().__init__()
        self.learned = learned

    def forward(self, spec, params, grads, states, step: int):
        return ngo_update(self.learned, spec, params, grads, states, step=step)


@dataclass
class InnerState:
    """One inner training run: the optimizee's parameters and optimizer states, and its step count."""

    task: Task
    params: list[Tensor]
    states: list[dict[str, Tensor]]
    step: int = 0
    length: int = 0  # inner steps this run lasts before a reset
    extra: dict = field(default_factory=dict)


def unroll(stepper: Stepper, space: ThetaSpace, theta: Tensor, task: Task, params: list[Tensor],
           states: list[dict[str, Tensor]], t0: int, xs: Tensor, ys: Tensor, loss_cap: float
           ) -> tuple[Tensor, tuple[list[Tensor], list[dict[str, Tensor]]]]:
    """Run ``K = len(xs)`` inner steps from step ``t0``; pure in ``theta`` (and in ``params``/``states``).

    Returns:
        ``(meta_loss, (params, states))``: the meta-loss is the mean minibatch training loss over the
        truncation, each term NaN-safe and clipped at ``loss_cap`` so divergence cannot dominate.
    """
    weights = space.unflatten(theta)
    losses = []
    for k in range(xs.shape[0]):
        grads, loss = grad_and_value(task.loss)(params, xs[k], ys[k])
        params, states = functional_call(stepper, weights, (task.spec, params, grads, states, t0 + k + 1))
        losses.append(loss)
    loss = torch.stack(losses)
    loss = torch.nan_to_num(loss, nan=loss_cap, posinf=loss_cap).clamp(max=loss_cap)
    return loss.mean(), (params, states)


def detach_tree(tree):
    """Detach every tensor of a nested list/dict/tuple."""
    return torch.utils._pytree.tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, tree)
