"""Truncated inner unrolls of the learned optimizer, as pure functions of the meta-parameters.

The meta-parameters ``theta`` are one flat vector (:class:`ThetaSpace` maps it to the
:class:`~lopt_graphs.optim.LearnedUpdate`'s named tensors), so a population is a ``[P, D]`` matrix and
``torch.func.vmap`` evaluates it in one batched call; ``torch.func.grad`` differentiates an unroll for
truncated backprop.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value

from lopt_graphs.optim import LearnedUpdate, ngo_update

from .config import OBJECTIVES
from .tasks import Task

#: Loss offset (nats) of the ``log_final`` objective and of the validation score's log-ratio: a task that a run
#: drives to 1e-4 counts no more than one driven to 1e-2, as the final-loss evaluation sees it.
LOSS_OFFSET = 0.01
#: ``log_final`` scores the last this fraction of a run (its final loss, as a minibatch estimate).
FINAL_FRACTION = 0.2


class ThetaSpace:
    """Flat-vector view of the meta-trained parameters of a :class:`LearnedUpdate`.

    Args:
        learned: the learned update.
        frozen: name prefixes of parameters that stay at their value (not in ``theta``; ``functional_call``
            then reads them from the module), for example ``("encoder.",)`` to meta-train only the readouts
            and head on top of a fixed, seeded encoder.
    """

    def __init__(self, learned: LearnedUpdate, frozen: tuple[str, ...] = ()):
        self.frozen = tuple(frozen)
        named = self._named(learned)
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.dim = sum(self.numels)

    def _named(self, learned: LearnedUpdate) -> list[tuple[str, Tensor]]:
        return [(n, p) for n, p in learned.named_parameters() if not n.startswith(self.frozen or ("\0",))]

    def flatten(self, learned: LearnedUpdate) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for _, p in self._named(learned)])

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """``{"learned.<name>": tensor}`` views of ``theta`` (for ``functional_call`` on :class:`Stepper`)."""
        parts = theta.split(self.numels)
        return {f"learned.{n}": t.view(s) for n, t, s in zip(self.names, parts, self.shapes)}

    def load_into(self, learned: LearnedUpdate, theta: Tensor) -> None:
        with torch.no_grad():
            for (_, p), t in zip(self._named(learned), theta.split(self.numels)):
                p.copy_(t.view_as(p))


class Stepper(nn.Module):
    """Wraps :func:`ngo_update` so ``functional_call`` can substitute the learned weights."""

    def __init__(self, learned: LearnedUpdate):
        super().__init__()
        self.learned = learned

    def forward(self, spec, params, grads, states, step: int, total_steps: int | None = None):
        return ngo_update(self.learned, spec, params, grads, states, step=step, total_steps=total_steps,
                          stacked_head=True)




def unroll(stepper: Stepper, space: ThetaSpace, theta: Tensor, task: Task, params: list[Tensor],
           states: list[dict[str, Tensor]], t0: int, xs: Tensor, ys: Tensor, loss_cap: float, *,
           objective: str = "mean_loss", length: int = 0, total_steps: int | None = None,
           ) -> tuple[Tensor, tuple[list[Tensor], list[dict[str, Tensor]]]]:
    """Run ``K = len(xs)`` inner steps from step ``t0``; pure in ``theta`` (and in ``params``/``states``).

    Every step's loss is the loss of its minibatch *before* that minibatch updates the parameters, so no
    term scores parameters on a batch that produced them (an unbiased estimate of the training loss at
    that step). Each term is NaN-safe and clipped at ``loss_cap`` so divergence cannot dominate.

    Args:
        objective: ``"mean_loss"``: the mean loss over the truncation (v1). ``"log_late"``: the mean of
            ``w(t) log(L_t / L_0)``, with ``L_0 = log(classes)`` the loss of a uniform prediction
            (so every task counts alike) and ``w(t) = 2 t / length`` (mean 1 over a run of ``length``
            steps), which weights the end of the run as the final-loss evaluation does.
        length: the run's length in steps (``log_late`` weights).
        total_steps: the horizon told to the learned update (``None``: unknown to it).

    Returns:
        ``(meta_loss, (params, states))``.
    """
    weights = space.unflatten(theta)
    losses = []
    for k in range(xs.shape[0]):
        grads, loss = grad_and_value(task.loss)(params, xs[k], ys[k])
        params, states = functional_call(stepper, weights, (task.spec, params, grads, states, t0 + k + 1,
                                                            total_steps))
        losses.append(loss)
    loss = torch.stack(losses)
    loss = torch.nan_to_num(loss, nan=loss_cap, posinf=loss_cap).clamp(max=loss_cap)
    if objective == "mean_loss":
        return loss.mean(), (params, states)
    if objective not in ("log_late", "log_final"):
        raise ValueError(f"Unknown objective {objective!r}; expected one of {OBJECTIVES}")
    if length < 1:
        raise ValueError(f"objective {objective!r} needs the run length (got length={length})")
    t = torch.arange(t0 + 1, t0 + xs.shape[0] + 1, dtype=loss.dtype)
    if objective == "log_late":
        w = 2.0 * t / length
        return (w * torch.log(loss.clamp(min=1e-8) / task.loss_scale)).mean(), (params, states)
    w = (t > (1.0 - FINAL_FRACTION) * length).to(loss.dtype) / FINAL_FRACTION
    return (w * torch.log((loss.clamp(min=0.0) + LOSS_OFFSET) / task.loss_scale)).mean(), (params, states)


def detach_tree(tree):
    """Detach every tensor of a nested list/dict/tuple."""
    return torch.utils._pytree.tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, tree)
