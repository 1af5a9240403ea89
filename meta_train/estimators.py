"""Gradient estimators behind one interface: antithetic ES, PES, full-run ES and truncated backprop.

Every estimator implements :class:`Estimator`::

    out = estimator.estimate(theta, runs, batches, eps, members)

for one :class:`~meta_train.runs.RunGroup` of ``N`` inner runs and one truncation of ``K`` inner steps
(``batches = (x [N, K, B, ...], y [N, K, B])``). It returns an :class:`EstimatorOut`: the gradient of the
group's meta-loss (averaged over its runs), the meta-loss, metrics, and the group advanced by ``K`` steps
(``runs.step`` counted here). The estimators see the meta-parameters as a flat vector and know nothing of
the optimizer's inside. All runs of the group, times all population members, go through one nested
``torch.func.vmap`` call (tasks outside, members inside).

Distributed use (ES/PES/full-run ES): every rank draws the same ``eps`` (shared seed) and evaluates only ``members``,
its share of the antithetic pairs; the estimator all-reduces the ``[N, pairs]`` loss differences (and,
for PES and full-run ES, the meta-loss), so every rank forms the same gradient. Only scalars per pair cross the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Protocol

import torch
import torch.distributed as dist
from torch import Tensor
from torch.func import grad_and_value, vmap

from lopt_graphs.optim.functional import init_state

from .config import ESTIMATORS
from .runs import RunGroup
from .unroll import Stepper, ThetaSpace, detach_tree, unroll

#: Estimators whose population members carry their own inner states across truncations.
PERSISTENT_ESTIMATORS = ("pes", "full_es")


@dataclass(frozen=True)
class EstimatorOut:
    """What one estimate returns.

    Attributes:
        grad: ``[D]`` meta-gradient estimate, averaged over the group's runs (NaN-free).
        meta_loss: scalar tensor, the group's mean meta-loss (ES and TBPTT: the unperturbed runs; PES: the
            population's mean, all-reduced).
        metrics: extra floats to log.
        runs: the group advanced by one truncation.
    """

    grad: Tensor
    meta_loss: Tensor
    metrics: dict[str, float]
    runs: RunGroup


class Estimator(Protocol):
    name: str

    def estimate(self, theta: Tensor, runs: RunGroup, batches: tuple[Tensor, Tensor], eps: Tensor | None,
                 members: list[int]) -> EstimatorOut:
        """One truncation of ``runs`` and the meta-gradient it gives.

        Args:
            theta: ``[D]`` meta-parameters.
            runs: the group (``N`` runs).
            batches: ``(x [N, K, B, ...], y [N, K, B])``.
            eps: ``[N, pairs, D]`` standard-normal perturbations (ES/PES; ``None`` for TBPTT).
            members: the pair indices this process evaluates (all of them on one process).
        """


def _all_reduce(t: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


class _Base:
    def __init__(self, stepper: Stepper, space: ThetaSpace, sigma: float, loss_cap_factor: float,
                 objective: str = "mean_loss"):
        self.stepper, self.space, self.sigma, self.cap_factor = stepper, space, sigma, loss_cap_factor
        self.objective = objective

    def _unroll_fn(self, runs: RunGroup) -> Callable:
        """``f(theta, params, states, x, y) -> (meta_loss, (params, states))`` for one run (pure)."""
        task, t0, cap = runs.task, runs.step, self.cap_factor * runs.loss_scale
        kw = dict(objective=self.objective, length=runs.length, total_steps=runs.total_steps)
        return lambda th, p, s, x, y: unroll(self.stepper, self.space, th, task, p, s, t0, x, y, cap, **kw)

    # ES-type estimators only evaluate the meta-loss: no_grad keeps autograd from recording the whole
    # truncation through the frozen weights the unroll reads from the module (nn.Parameters; ~20 GB on a group
    # of 64-channel MNIST CNNs). The inner gradient is a torch.func transform, which no_grad leaves alone.
    @torch.no_grad()
    def _central(self, theta: Tensor, runs: RunGroup, xs: Tensor, ys: Tensor):
        """Every run of the group advanced with the unperturbed ``theta``: ``(losses [N], params, states)``."""
        f = vmap(self._unroll_fn(runs), in_dims=(None, 0, 0, 0, 0))
        losses, (params, states) = f(theta, runs.params, runs.states, xs, ys)
        return losses, tuple(params), tuple(states)

    @torch.no_grad()
    def _population(self, theta: Tensor, runs: RunGroup, xs: Tensor, ys: Tensor, e: Tensor, params, states,
                    shared_start: bool):
        """``2m`` perturbed members per run (``theta +- sigma e``, ``e [N, m, D]``), one nested vmap call.

        Members start from the runs' states (``shared_start``) or from their own ``[N, 2m, ...]`` ones.
        Returns ``(losses [N, 2m], params, states)``, members ``[:m]`` the ``+`` side of each pair."""
        thetas = torch.cat([theta + self.sigma * e, theta - self.sigma * e], dim=1)
        inner = 0 if not shared_start else None
        f = vmap(vmap(self._unroll_fn(runs), in_dims=(0, inner, inner, None, None)), in_dims=(0, 0, 0, 0, 0))
        losses, (ps, ss) = f(thetas, params, states, xs, ys)
        return losses, ps, ss


class AntitheticES(_Base):
    """Antithetic evolution strategies over one truncation.

    All members of a run start from its shared state, which the unperturbed ``theta`` then advances; with
    ``N`` runs and ``n`` pairs, each run ``j`` with its own perturbations ``eps_ji``::

        g = 1 / (2 sigma N n) * sum_j sum_i (L_j(theta + sigma eps_ji) - L_j(theta - sigma eps_ji)) eps_ji
    """

    name = "es"

    def estimate(self, theta: Tensor, runs: RunGroup, batches: tuple[Tensor, Tensor], eps: Tensor | None,
                 members: list[int]) -> EstimatorOut:
        xs, ys = batches
        n, pairs = runs.size, eps.shape[1]
        diffs = torch.zeros(n, pairs)
        if members:
            m = len(members)
            losses, _, _ = self._population(theta, runs, xs, ys, eps[:, members], runs.params, runs.states,
                                            shared_start=True)
            diffs[:, members] = (losses[:, :m] - losses[:, m:]).detach()
        _all_reduce(diffs)
        central, params, states = self._central(theta, runs, xs, ys)
        grad = torch.einsum("np,npd->d", diffs, eps) / (2 * self.sigma * n * pairs)
        new = replace(runs, params=detach_tree(params), states=detach_tree(states), step=runs.step + xs.shape[1])
        return EstimatorOut(torch.nan_to_num(grad), central.mean().detach(), {}, new)


class PES(_Base):
    """Persistent evolution strategies (Vicol et al., 2021): unbiased across truncations.

    Each member keeps its own inner state; ``xi`` accumulates the perturbations a pair has seen since its
    run was reset::

        xi_ji += eps_ji;   g = 1 / (2 sigma N n) * sum_j sum_i (L_j(theta + sigma eps_ji) - L_j(theta - sigma eps_ji)) xi_ji
    """

    name = "pes"

    def _noise(self, runs: RunGroup, eps: Tensor) -> tuple[Tensor, Tensor]:
        """``(perturbation of this truncation, xi the gradient is formed with)``, both ``[N, pairs, D]``."""
        return eps, (eps if runs.xi is None else runs.xi + eps)

    def estimate(self, theta: Tensor, runs: RunGroup, batches: tuple[Tensor, Tensor], eps: Tensor | None,
                 members: list[int]) -> EstimatorOut:
        xs, ys = batches
        n, pairs = runs.size, eps.shape[1]
        pert, xi = self._noise(runs, eps)
        diffs = torch.zeros(n, pairs)
        loss_sum = torch.zeros(2)  # (sum of member losses, number of members) on this rank
        mp, ms = runs.member_params, runs.member_states
        if members:
            m = len(members)
            if mp is None:  # fresh runs: every member starts from the shared init
                rep = lambda t: t.unsqueeze(1).expand(n, 2 * m, *t.shape[1:]).clone()  # noqa: E731
                mp = tuple(rep(p) for p in runs.params)
                ms = tuple(vmap(vmap(init_state))(p) for p in mp)
            losses, mp, ms = self._population(theta, runs, xs, ys, pert[:, members], mp, ms, shared_start=False)
            losses = losses.detach()
            diffs[:, members] = losses[:, :m] - losses[:, m:]
            loss_sum = torch.stack([torch.nan_to_num(losses).sum(), torch.tensor(float(losses.numel()))])
            mp, ms = tuple(detach_tree(mp)), tuple(detach_tree(ms))
        _all_reduce(diffs)
        _all_reduce(loss_sum)
        meta_loss = loss_sum[0] / loss_sum[1] if loss_sum[1] > 0 else torch.tensor(float("nan"))
        grad = torch.einsum("np,npd->d", diffs, xi) / (2 * self.sigma * n * pairs)
        new = replace(runs, member_params=mp, member_states=ms, xi=xi, step=runs.step + xs.shape[1])
        return EstimatorOut(torch.nan_to_num(grad), meta_loss, {}, new)


class FullRunES(PES):
    """Antithetic ES over whole inner runs, computed a truncation at a time (VeLO's final-loss ES).

    Each pair draws one perturbation when its run is reset and keeps it to the run's end; its members carry
    their own inner states (as in PES). The truncations' estimates sum to the antithetic ES gradient of the
    whole run's meta-loss, unbiased like PES's; but the noise the gradient is formed with stays one draw
    (``|xi| ~ sqrt(D)``) instead of growing with the truncations seen (PES: ``sqrt(k D)``), so its variance
    does not grow over runs of many truncations::

        xi_ji = eps_ji drawn at the reset;   g = 1 / (2 sigma N n) * sum_j sum_i (L_j(theta + sigma xi_ji) - L_j(theta - sigma xi_ji)) xi_ji
    """

    name = "full_es"

    def _noise(self, runs: RunGroup, eps: Tensor) -> tuple[Tensor, Tensor]:
        xi = eps if runs.xi is None else runs.xi
        return xi, xi


class TruncatedBackprop(_Base):
    """Truncated backprop through the K-step unrolls of all runs of the group (vmapped inside
    ``torch.func.grad``); the runs' states are carried across truncations (detached)::

        g = d/dtheta 1/N sum_j L_j(theta)
    """

    name = "tbptt"

    def estimate(self, theta: Tensor, runs: RunGroup, batches: tuple[Tensor, Tensor], eps: Tensor | None,
                 members: list[int]) -> EstimatorOut:
        xs, ys = batches
        f = vmap(self._unroll_fn(runs), in_dims=(None, 0, 0, 0, 0))

        def mean_loss(th: Tensor):
            losses, aux = f(th, runs.params, runs.states, xs, ys)
            return losses.mean(), aux

        g, (loss, (params, states)) = grad_and_value(mean_loss, has_aux=True)(theta)
        new = replace(runs, params=tuple(detach_tree(params)), states=tuple(detach_tree(states)),
                      step=runs.step + xs.shape[1])
        return EstimatorOut(torch.nan_to_num(g), loss.detach(), {}, new)


def make_estimator(name: str, stepper: Stepper, space: ThetaSpace, sigma: float, loss_cap_factor: float,
                   objective: str = "mean_loss") -> Estimator:
    """The estimator called ``name`` (one of :data:`ESTIMATORS`) of the meta-loss ``objective``
    (see :func:`~meta_train.unroll.unroll`)."""
    cls = {"es": AntitheticES, "pes": PES, "full_es": FullRunES, "tbptt": TruncatedBackprop}.get(name)
    if cls is None:
        raise ValueError(f"Unknown estimator {name!r}; expected one of {ESTIMATORS}")
    return cls(stepper, space, sigma, loss_cap_factor, objective)
