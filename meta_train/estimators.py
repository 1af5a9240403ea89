"""Gradient estimators behind one interface: antithetic ES, PES and truncated backprop.

An estimator sees the meta-parameters as a flat vector and the inner runs as :class:`InnerState` records;
it knows nothing of the optimizer's inside. ``estimate(theta, slot, xs, ys, eps, members)`` returns the
gradient of the meta-loss for one inner run (task slot) and advances that run by one truncation.

Distributed use: every rank draws the same perturbations (shared seed) and evaluates only ``members``,
its share of the antithetic pairs; the per-pair loss differences are summed across ranks by the caller
(only ``[pairs]`` scalars cross the wire), so every rank forms the same gradient.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor
from torch.func import vmap

from .unroll import InnerState, Stepper, ThetaSpace, detach_tree, unroll

ESTIMATORS = ("es", "pes", "tbptt")


class Estimator(Protocol):
    name: str

    def estimate(self, theta: Tensor, slot: InnerState, xs: Tensor, ys: Tensor, eps: Tensor | None,
                 members: list[int]) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Returns ``(partial_numerator [D] or per-pair diffs, meta_loss, metrics)``; see subclasses."""


class _Base:
    def __init__(self, stepper: Stepper, space: ThetaSpace, sigma: float, loss_cap_factor: float):
        self.stepper, self.space, self.sigma, self.cap_factor = stepper, space, sigma, loss_cap_factor

    def _cap(self, slot: InnerState) -> float:
        return self.cap_factor * slot.task.loss_scale

    def _run(self, theta: Tensor, slot: InnerState, params, states, xs: Tensor, ys: Tensor):
        return unroll(self.stepper, self.space, theta, slot.task, params, states, slot.step, xs, ys,
                      self._cap(slot))


class AntitheticES(_Base):
    """Antithetic evolution strategies over one truncation.

    All members start from the run's shared state, which the unperturbed ``theta`` then advances::

        g = 1 / (2 sigma n) * sum_i (L(theta + sigma eps_i) - L(theta - sigma eps_i)) eps_i
    """

    name = "es"

    def pair_diffs(self, theta: Tensor, slot: InnerState, xs: Tensor, ys: Tensor, eps: Tensor,
                   members: list[int]) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Loss differences of this rank's pairs (zeros elsewhere), the central meta-loss, metrics."""
        diffs = torch.zeros(eps.shape[0])
        if members:
            e = eps[members]
            thetas = torch.cat([theta + self.sigma * e, theta - self.sigma * e])
            f = lambda th: self._run(th, slot, slot.params, slot.states, xs, ys)[0]  # noqa: E731
            losses = vmap(f)(thetas)
            diffs[members] = losses[: len(members)] - losses[len(members):]
        central, (params, states) = self._run(theta, slot, slot.params, slot.states, xs, ys)
        slot.params, slot.states = detach_tree(params), detach_tree(states)
        return diffs, central.detach(), {}

    def gradient(self, diffs: Tensor, eps: Tensor, slot: InnerState) -> Tensor:
        return (diffs[:, None] * eps).sum(0) / (2 * self.sigma * eps.shape[0])


class PES(_Base):
    """Persistent evolution strategies (Vicol et al., 2021): unbiased across truncations.

    Each member keeps its own inner state; ``xi`` accumulates the perturbations a pair has seen since its
    run was reset::

        xi_i += eps_i;   g = 1 / (2 sigma n) * sum_i (L(theta + sigma eps_i) - L(theta - sigma eps_i)) xi_i
    """

    name = "pes"

    def pair_diffs(self, theta: Tensor, slot: InnerState, xs: Tensor, ys: Tensor, eps: Tensor,
                   members: list[int]) -> tuple[Tensor, Tensor, dict[str, float]]:
        n = eps.shape[0]
        if "xi" not in slot.extra:
            slot.extra["xi"] = torch.zeros_like(eps)
        slot.extra["xi"] = slot.extra["xi"] + eps
        diffs = torch.zeros(n)
        if members:
            m = len(members)
            e = eps[members]
            thetas = torch.cat([theta + self.sigma * e, theta - self.sigma * e])
            if "member_params" not in slot.extra:  # fresh run: every member starts from the shared init
                rep = lambda t: t.unsqueeze(0).expand(2 * m, *t.shape).clone()  # noqa: E731
                slot.extra["member_params"] = [rep(p) for p in slot.params]
                slot.extra["member_states"] = None
            ps, ss = slot.extra["member_params"], slot.extra["member_states"]
            if ss is None:
                f = lambda th, p: self._run(th, slot, p, [{} for _ in p], xs, ys)  # noqa: E731
                losses, (ps, ss) = vmap(f)(thetas, ps)
            else:
                f = lambda th, p, s: self._run(th, slot, p, s, xs, ys)  # noqa: E731
                losses, (ps, ss) = vmap(f)(thetas, ps, ss)
            slot.extra["member_params"], slot.extra["member_states"] = detach_tree(ps), detach_tree(ss)
            diffs[members] = losses[:m] - losses[m:]
            central = losses.mean().detach()
        else:
            central = torch.tensor(float("nan"))
        return diffs, central, {}

    def gradient(self, diffs: Tensor, eps: Tensor, slot: InnerState) -> Tensor:
        return (diffs[:, None] * slot.extra["xi"]).sum(0) / (2 * self.sigma * eps.shape[0])


class TruncatedBackprop(_Base):
    """Truncated backprop through the K-step unroll with ``torch.func.grad``; the run's state is carried
    across truncations (detached)."""

    name = "tbptt"

    def grad(self, theta: Tensor, slot: InnerState, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
        g, (loss, (params, states)) = torch.func.grad_and_value(
            lambda th: self._run(th, slot, slot.params, slot.states, xs, ys), has_aux=True)(theta)
        slot.params, slot.states = detach_tree(params), detach_tree(states)
        return torch.nan_to_num(g), loss.detach()


def make_estimator(name: str, stepper: Stepper, space: ThetaSpace, sigma: float, loss_cap_factor: float):
    """The estimator called ``name`` (one of :data:`ESTIMATORS`)."""
    cls = {"es": AntitheticES, "pes": PES, "tbptt": TruncatedBackprop}.get(name)
    if cls is None:
        raise ValueError(f"Unknown estimator {name!r}; expected one of {ESTIMATORS}")
    return cls(stepper, space, sigma, loss_cap_factor)
