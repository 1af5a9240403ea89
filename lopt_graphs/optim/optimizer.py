"""``NeuralGraphOptimizer``: a ``torch.optim.Optimizer`` driven by the neural-graph encoder."""

from __future__ import annotations

import os
import warnings
from dataclasses import replace
from typing import Any, Callable, Iterable, Literal, Mapping

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..graph import GraphSpec, graph_from_module, graph_from_parameters
from ..graph.describe import GraphDescription, describe_spec
from . import fast_step
from . import functional as _functional
from . import learned as _learned
from .bn_scale import base_step
from .checkpoint import load_learned_update
from .fast_step import fast_encoder_step_, fast_group_step_, fast_step_agrees, flush_subnormals, grad_norms
from .functional import apply_update, count_nonfinite, entry_features, ngo_update, param_step
from .learned import LearnedUpdate

CkptLike = str | os.PathLike | Mapping[str, Any] | LearnedUpdate | None


class NeuralGraphOptimizer(Optimizer):
    r"""A learned optimizer that reads the model as a neural graph.

    Each :meth:`step` computes per-entry features of every parameter (gradient, momenta at three
    timescales, a second-moment estimate, the parameter value, the step count), places them on the cached
    neural graph of the parameter group (weights on edges, biases and norm parameters on nodes), runs the
    permutation-equivariant encoder (every ``encoder_every`` steps) and reads a per-entry update back. The
    update is an Adam-like direction scaled and corrected by the learned head; ``lr`` multiplies the
    learned step size, so LR schedulers work as with Adam. The maths is in
    :mod:`lopt_graphs.optim.functional`.

    Args:
        params: iterable of parameters or of dicts defining parameter groups. For the graph, each group's
            parameters must be a feed-forward chain in registration order (``model.parameters()`` of a
            Sequential-like model); use :meth:`for_module` for exact wiring of residual nets and norms.
        ckpt: learned weights: a checkpoint path, a checkpoint dict, the name of a shipped checkpoint, a
            :class:`LearnedUpdate`, or ``None`` for the default shipped checkpoint.
        lr: multiplier of the learned step size (default 1.0; ``lr=1`` is the meta-trained setting). A checkpoint
            with a size prior (``size_ref``, ``size_power`` in its config) multiplies it by :attr:`size_scale` on
            models larger than ``size_ref`` parameters.
        betas: timescales of the Adam-like momentum and the second moment.
        eps: numerical floor of the second moment.
        weight_decay: decoupled weight decay.
        encoder_every: run the encoder every this many steps (default: the checkpoint's setting).
        total_steps: the planned number of steps (as ``T_max`` for a scheduler). Updates meta-trained with
            horizon features (recipe v2) read the fraction of training done, ``t / total_steps``, and learn
            their schedule from it; ``None`` (default) tells them the horizon is unknown: a checkpoint with an
            assumed horizon (``LearnedUpdateConfig.untold_horizon`` ``T0``) then steps at step ``t`` as a told run
            of ``t + T0`` steps would (its step decays the longer it trains, towards the told schedule's end
            level), one without reads its untold readout and step-count features only, which it was also
            meta-trained on. Checkpoints without horizon features ignore it. Per parameter group, like ``lr``.
            A run may go on past it: the fraction features saturate and the step stays near the schedule's end
            level (it keeps training; it does not restart or grow).
        on_unsupported: ``"free"`` optimizes parameters that fit no graph (embeddings, odd shapes) with the
            graph-free per-entry head; ``"error"`` raises :class:`~lopt_graphs.graph.GraphBuildError`.
        compile: fuse the per-entry work (features, head, update) with ``torch.compile`` (one compilation
            per parameter shape, paid during the first steps; raises dynamo's recompile limit to 64).
            Same maths as eager. Without it (default), groups with a parameter of at least 4,096 entries take
            the fast eager step (:mod:`~lopt_graphs.optim.fast_step`), whose usual step runs as one C loop per
            float32 CPU parameter when a C compiler is present (:mod:`~lopt_graphs.optim.native`; 1.5-1.8x
            Adam's training loop on a 269K-weight MLP, ``LOPT_GRAPHS_NATIVE=0`` turns it off).
        bn_weights: ``"base"`` (default): weights whose output feeds a BatchNorm directly (known from
            :meth:`for_module`'s trace) take the base Adam-like step instead of the learned one, which keeps
            the BatchNorm running statistics valid (see :mod:`lopt_graphs.optim.bn_scale`); ``"learned"``
            applies the learned step to them too.
        orthogonal: whether 2-D weight matrices (and, with the checkpoint's
            :attr:`~lopt_graphs.optim.learned.LearnedUpdateConfig.orthogonal_conv`, convolution kernels) step
            along their orthogonalized momentum
            (:attr:`~lopt_graphs.optim.learned.LearnedUpdateConfig.orthogonal`: 5 Newton-Schulz iterations per
            matrix per step, in ``orthogonal_dtype``; weights that feed a BatchNorm keep the base step and spend none);
            ``None`` (default) keeps the checkpoint's setting. ``False`` turns both off, trading the quality it
            buys for the cost of the iterations on large matrices (``lopt-step-cost``).
        orthogonal_dtype: the dtype of those Newton-Schulz iterations. ``"auto"`` (default) picks, per matrix,
            bfloat16 where it is the faster one (CUDA; CPUs with AMX tiles, for matrices from about 128x256 up:
            3.5x faster than float32 at 256x784) and float32 elsewhere
            (:func:`~lopt_graphs.optim.functional.auto_orthogonal_dtype`); ``torch.bfloat16`` always
            runs them as ``torch.optim.Muon`` does (on a CPU without AMX that is slower than float32);
            ``torch.float32``, or ``None`` for the parameters' compute dtype, gives the same numbers on every
            machine. bfloat16 moves the direction by about 1% and scored level with float32 on the validation
            tasks (``benchmarks/results/orthogonal_bf16/``). Everything else stays in float32.

    Example::

        opt = NeuralGraphOptimizer(model.parameters())
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()

    Attributes:
        learned: the :class:`LearnedUpdate` (meta-parameters; not optimizer state, not in ``state_dict``).
        nonfinite_steps: number of steps skipped because a gradient held NaN or Inf.
        size_scale: the checkpoint's size prior on this model (read-only): every group's ``lr`` is multiplied by
            it; 1.0 on models within the prior's ``size_ref`` parameters (100,000 for the default) or without one.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], ckpt: CkptLike = None, *,
                 lr: float | Tensor = 1.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, encoder_every: int | None = None, total_steps: int | None = None,
                 on_unsupported: Literal["free", "error"] = "free", compile: bool = False,
                 bn_weights: Literal["base", "learned"] = "base", orthogonal: bool | None = None,
                 orthogonal_dtype: torch.dtype | Literal["auto"] | None = "auto",
                 _specs: list[GraphSpec] | None = None,
                 _names: list[list[str]] | None = None):
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= float(lr):
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if encoder_every is not None and (not isinstance(encoder_every, int) or isinstance(encoder_every, bool)
                                          or encoder_every < 1):
            raise ValueError(f"Invalid encoder_every: {encoder_every!r} (expected a positive int)")
        if total_steps is not None and (not isinstance(total_steps, int) or isinstance(total_steps, bool)
                                        or total_steps < 1):
            raise ValueError(f"Invalid total_steps: {total_steps!r} (expected a positive int, or None when the "
                             f"length of training is not known)")
        if on_unsupported not in ("free", "error"):
            raise ValueError(f"Invalid on_unsupported: {on_unsupported!r} (expected 'free' or 'error')")
        if bn_weights not in ("base", "learned"):
            raise ValueError(f"Invalid bn_weights: {bn_weights!r} (expected 'base' or 'learned')")
        if orthogonal is not None and not isinstance(orthogonal, bool):
            raise TypeError(f"Invalid orthogonal: {orthogonal!r} (expected True, False, or None for the checkpoint's "
                            "setting)")
        if not (orthogonal_dtype is None or orthogonal_dtype == "auto"
                or (isinstance(orthogonal_dtype, torch.dtype) and orthogonal_dtype.is_floating_point)):
            raise TypeError(f"Invalid orthogonal_dtype: {orthogonal_dtype!r} (expected a floating torch.dtype such as "
                            "torch.bfloat16, 'auto', or None for the parameters' compute dtype)")
        self.orthogonal_dtype = orthogonal_dtype
        self.bn_weights = bn_weights
        self.learned = ckpt if isinstance(ckpt, LearnedUpdate) else load_learned_update(ckpt)
        if orthogonal is not None and orthogonal != self.learned.cfg.orthogonal:
            self.learned = self.learned.with_config(
                orthogonal=orthogonal, orthogonal_conv=orthogonal and self.learned.cfg.orthogonal_conv)
        self.learned.requires_grad_(False)
        self.on_unsupported = on_unsupported
        self.nonfinite_steps = 0
        self._specs: list[GraphSpec] = []
        self.compile = bool(compile)
        #: set to True to record, at every step, what the learned step size did per updated parameter in
        #: :attr:`last_diagnostics` (learned log-magnitude ``u`` per entry, its ``mag_clip``, the v2
        #: per-tensor log step ``sigma``; eager only). Used by ``benchmarks/step_saturation.py``.
        self.record_diagnostics = False
        self.last_diagnostics: list[dict] = []
        self._fns: dict[str, Callable] = {}
        self._fast_ok: bool | None = None
        self._fast_cache: dict[int, dict] = {}  # per group: what the fast step reuses between steps (not state)
        self._given_specs = list(_specs or [])
        self._names: list[list[str]] = []
        self._given_names: list[list[str]] = list(_names or [])
        self._num_params = 0
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, encoder_every=encoder_every,
                        total_steps=total_steps)
        super().__init__(params, defaults)

    @classmethod
    def for_module(cls, module: nn.Module, ckpt: CkptLike = None, *, embeddings: Literal["free", "edge"] = "edge",
                   **kwargs) -> "NeuralGraphOptimizer":
        """Optimizer over ``module.parameters()`` with the module's exact wiring (residuals, norms).

        The graph is traced with :func:`~lopt_graphs.graph.graph_from_module` (``torch.fx``, else the Hugging
        Face tracer, else a module walk). Layers without a neural-graph rule (attention in-projections, custom
        layers) make only their own parameters graph-free; one ``UserWarning`` names them and why
        (:meth:`describe` lists every parameter). ``embeddings="edge"`` (default) puts each ``nn.Embedding``
        on the graph (one input neuron per token, :mod:`lopt_graphs.graph.embedding_rules`); ``"free"`` keeps
        them graph-free (Adam-like steps, no encoder cost for a large vocabulary).
        """
        on_unsupported = kwargs.get("on_unsupported", "free")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            spec = graph_from_module(module, on_unsupported=on_unsupported, embeddings=embeddings)
        names = [n for n, _ in module.named_parameters()]
        for w in caught:  # what the tracers and models said, unchanged (our own fallback note is folded below)
            if not (spec.free_params and str(w.message).startswith("lopt_graphs: could not trace")):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if spec.free_params:
            warnings.warn(_free_warning(spec, names, type(module).__name__), UserWarning, stacklevel=2)
        opt = cls(module.parameters(), ckpt, _specs=[spec], _names=[names], **kwargs)
        return opt

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (as :meth:`torch.optim.Optimizer.add_param_group`) and build its graph.

        The graph is built first, so a group that fits no graph (with ``on_unsupported="error"``) raises
        and leaves the optimizer unchanged.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params is {torch.typename(p)}")
        param_group = {**param_group, "params": params}
        idx = len(self.param_groups)
        spec = self._given_specs[idx] if idx < len(self._given_specs) else graph_from_parameters(
            params, on_unsupported=self.on_unsupported)
        if len(spec.params) != len(params):
            raise ValueError(f"Graph spec describes {len(spec.params)} parameters, the group has {len(params)}")
        broken = [i for i in spec.free_params if spec.params[i].reason.startswith("after parameter that broke")]
        if idx >= len(self._given_specs) and broken:
            warnings.warn(f"NeuralGraphOptimizer: parameter group {idx} is not a feed-forward chain of "
                          f"Linear/Conv layers from parameter {broken[0] - 1} on "
                          f"({spec.params[broken[0] - 1].reason}); "
                          f"{len(spec.free_params)} of {len(params)} parameters are graph-free. For residual nets, "
                          f"norms, embeddings or attention use NeuralGraphOptimizer.for_module(model), which "
                          f"traces the wiring", UserWarning, stacklevel=4)
        super().add_param_group(param_group)
        self._specs.append(spec)
        self._num_params += sum(p.numel() for p in params)
        names = self._given_names[idx] if idx < len(self._given_names) else [f"group{idx}.param{i}"
                                                                               for i in range(len(params))]
        self._names.append(names)

    @property
    def size_scale(self) -> float:
        """The checkpoint's size prior on this optimizer's model (its parameters in all groups): the factor every
        group's ``lr`` is multiplied by at each step, ``1.0`` within the prior's ``size_ref`` or without one."""
        return self.learned.cfg.size_factor(self._num_params)

    def graph_spec(self, group: int = 0) -> GraphSpec:
        """The cached graph spec of parameter group ``group``."""
        return self._specs[group]

    def describe(self) -> GraphDescription:
        """Where every parameter lives: name, shape, kind (``edge``, ``node``, ``free``), the step it takes, the
        reason when free, and totals. ``print(opt.describe())`` prints a table.

        The step: ``learned`` (the learned update on Adam's direction), ``learned, orthogonal (DTYPE)`` (on its
        orthogonalized momentum, the Newton-Schulz iterations in ``DTYPE``: see ``orthogonal_dtype``) or ``base``
        (a weight that feeds a BatchNorm: the base Adam-like step, ``bn_weights="base"``). A last line per group
        says which step schedule it runs (told ``total_steps``, an assumed horizon, or none known).
        Names come from ``module.named_parameters()`` with :meth:`for_module`, else ``group{g}.param{i}``.
        """
        desc = describe_spec(self._specs, self._names)
        steps = []
        for group, spec in zip(self.param_groups, self._specs):
            params = group["params"]
            base = set(spec.scale_invariant) if self.bn_weights == "base" else set()
            ortho = _functional.orthogonal_params(self.learned.cfg, spec, params) - base
            for i, p in enumerate(params):
                if i in base:
                    steps.append("base")
                elif i in ortho:
                    dt = _functional.resolve_orthogonal_dtype(self.orthogonal_dtype, p)
                    steps.append(f"learned, orthogonal ({str(dt).removeprefix('torch.')})")
                else:
                    steps.append("learned")
        notes = tuple(f"schedule{f' (group {g})' if len(self.param_groups) > 1 else ''}: "
                      f"{_schedule_note(self.learned.cfg, group.get('total_steps'))}"
                      for g, group in enumerate(self.param_groups))
        return replace(desc, rows=tuple(replace(r, step=st) for r, st in zip(desc.rows, steps)), notes=notes)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load optimizer state (as :meth:`torch.optim.Optimizer.load_state_dict`).

        ``torch.optim`` casts loaded state to each parameter's dtype; this optimizer keeps its state in
        float32 (or float64) whatever the parameter's dtype, so the saved dtypes are restored afterwards.
        """
        saved = state_dict["state"]
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        self._fast_cache = {}
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(ids, params):
            for k, v in saved.get(pid, {}).items():
                if isinstance(v, Tensor) and k in self.state[p]:
                    self.state[p][k] = v.to(device=p.device, copy=True)

    def _fast(self, gi: int, params: list[Tensor], grads: list[Tensor | None], spec: GraphSpec) -> Callable | None:
        """The eager fast path (:mod:`lopt_graphs.optim.fast_step`) group ``gi``'s step takes, if any: its usual
        step or its encoder step. Taken when eager, with a parameter of at least ``FAST_MIN_NUMEL`` entries (set
        it to inf to disable), without diagnostics, the reference head not wrapped, and the maths checked once
        per optimizer. With an ``orthogonal`` update only the usual step is taken (with the orthogonalized
        directions, :func:`~lopt_graphs.optim.functional.orthogonal_params`); its encoder steps are the reference's."""
        if self.compile or self.record_diagnostics or not any(p.numel() >= fast_step.FAST_MIN_NUMEL for p in params):
            return None
        if _functional.head is not _learned.head:  # the reference head is wrapped (instrumentation): keep it
            return None
        if self._fast_ok is None:  # once: the fast path must reproduce the reference maths
            self._fast_ok = fast_step_agrees(self.learned)
            if not self._fast_ok:
                warnings.warn("NeuralGraphOptimizer: the eager fast step does not reproduce the reference "
                              "update for this checkpoint; using the reference (slower) step",
                              RuntimeWarning, stacklevel=3)
        if not self._fast_ok:
            return None
        active = [i for i, g in enumerate(grads) if g is not None]
        states = [self.state[p] if p in self.state else {} for p in params]
        first = states[active[0]]
        t = int(first["step"]) + 1 if first else 1
        every = self.param_groups[gi]["encoder_every"] or self.learned.cfg.encoder_every
        if _functional.runs_encoder(spec, states, active, t, every):
            # the fast encoder step has Adam's direction only; encoder steps are rare (1, 2, 4, ..., then every
            # encoder_every): an orthogonal update takes the reference one
            return None if self.learned.cfg.orthogonal else fast_encoder_step_
        return fast_group_step_

    def _compiled(self) -> dict[str, Callable]:
        if not self.compile:
            return {}
        if not self._fns:
            import torch._dynamo

            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            # the per-entry work only: the encoder runs rarely, on a graph whose coarsened edge count follows the
            # gradients (a new shape, hence a recompile of a second or more, at almost every encoder step)
            self._fns = {name: torch.compile(fn, dynamic=False) for name, fn in (
                ("features", entry_features), ("apply", apply_update), ("step", param_step))}
        return self._fns

    def __getstate__(self) -> dict[str, Any]:
        # torch.optim keeps only defaults/state/param_groups; the learned weights and graph specs must come
        # along for deepcopy and pickle. Compiled functions are rebuilt on demand.
        state = dict(self.__dict__)
        state["_fns"], state["_fast_cache"] = {}, {}
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform a single optimization step.

        Args:
            closure: a closure that reevaluates the model and returns the loss.

        Returns:
            The loss returned by ``closure``, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        all_grads = [[p.grad for p in group["params"]] for group in self.param_groups]
        for grads in all_grads:
            if any(g is not None and g.is_sparse for g in grads):
                raise RuntimeError("NeuralGraphOptimizer does not support sparse gradients; use "
                                   "torch.optim.SparseAdam for sparse parameters in a separate optimizer")
        # one norm per gradient: finite exactly when the gradient holds no NaN/Inf (or its squares overflow: then
        # the exact count decides); the fast step reuses them
        norms = grad_norms([g for grads in all_grads for g in grads])
        present = [n.to(torch.float32) for n in norms if n is not None]
        finite = not present or bool(torch.isfinite(torch.stack(present)).all())
        bad = 0 if finite else int(count_nonfinite([g for grads in all_grads for g in grads]))
        if bad:
            self.nonfinite_steps += 1
            warnings.warn(f"NeuralGraphOptimizer: {bad} gradient(s) hold NaN or Inf; the step was skipped and "
                          f"no parameter changed (steps skipped so far: {self.nonfinite_steps})",
                          RuntimeWarning, stacklevel=2)
            return loss
        diag = None
        if self.record_diagnostics:
            self.last_diagnostics = []
        scale = self.size_scale
        offsets = [0]
        for grads in all_grads:
            offsets.append(offsets[-1] + len(grads))
        for gi, (group, grads) in enumerate(zip(self.param_groups, all_grads)):
            params: list[Tensor] = group["params"]
            diag = [] if self.record_diagnostics else None
            if all(g is None for g in grads):
                continue
            device = next(p.device for p, g in zip(params, grads) if g is not None)
            if next(self.learned.parameters()).device != device:
                self.learned.to(device)
            spec = self._specs[gi].to(device)
            base = set(spec.scale_invariant) if self.bn_weights == "base" else set()
            lr = group["lr"] * scale if scale != 1.0 else group["lr"]
            fast = self._fast(gi, params, grads, spec)
            if fast is not None:  # in place, the base step included
                states = [self.state[p] if g is not None or p in self.state else {} for p, g in zip(params, grads)]
                # the orthogonalized weights (fast is the usual step then: the encoder step is the reference's);
                # base-step weights (they feed a BatchNorm) keep Adam's direction: their learned step is discarded
                ortho = _functional.orthogonal_params(self.learned.cfg, spec, params) - base
                with flush_subnormals():
                    fast(self.learned, spec, [p.detach() for p in params], grads, states, lr=lr,
                         betas=group["betas"], eps=group["eps"], weight_decay=group["weight_decay"],
                         total_steps=group.get("total_steps"), base=base,
                         cache=self._fast_cache.setdefault(gi, {}), gnorms=norms[offsets[gi]: offsets[gi + 1]],
                         **({"orthogonal": ortho, "orthogonal_dtype": self.orthogonal_dtype} if ortho else {}))
                continue
            self._fast_cache.pop(gi, None)
            states = [dict(self.state[p]) if p in self.state else {} for p in params]
            new_params, new_states = ngo_update(
                self.learned, spec, [p.detach() for p in params], grads, states,
                lr=lr, betas=group["betas"], eps=group["eps"], weight_decay=group["weight_decay"],
                encoder_every=group["encoder_every"], total_steps=group.get("total_steps"),
                diagnostics=diag, _fns=self._compiled(), skip_orthogonal=base, orthogonal_dtype=self.orthogonal_dtype)
            if diag is not None:
                self.last_diagnostics.extend(diag)
            eta = lr * self.learned.cfg.base_lr
            for j, (p, g, n, s) in enumerate(zip(params, grads, new_params, new_states)):
                if g is not None:
                    if j in base:
                        n = base_step(p, s, group["betas"], group["eps"], eta, group["weight_decay"])
                    p.copy_(n)
                    self.state[p] = s
        return loss


def _free_warning(spec: GraphSpec, names: list[str], model: str, limit: int = 6) -> str:
    """One message naming the graph-free parameters grouped by reason (at most ``limit`` reasons)."""
    by_reason: dict[str, list[str]] = {}
    for i in spec.free_params:
        by_reason.setdefault(spec.params[i].reason, []).append(names[i])
    parts = []
    for reason, ns in list(by_reason.items())[:limit]:
        shown = ", ".join(ns[:3]) + (f" and {len(ns) - 3} more" if len(ns) > 3 else "")
        parts.append(f"{shown}: {reason}")
    more = f"; and {len(by_reason) - limit} more reasons" if len(by_reason) > limit else ""
    free = sum(spec.params[i].numel for i in spec.free_params)
    total = sum(p.numel for p in spec.params) or 1
    return (f"NeuralGraphOptimizer.for_module({model}): {len(spec.free_params)} of {len(spec.params)} parameters "
            f"({100 * free / total:.1f}% of the entries) are graph-free (built by {spec.built_by or 'tracing'}) - "
            + "; ".join(parts) + more + ". print(opt.describe()) lists every parameter.")


def _schedule_note(cfg: _learned.LearnedUpdateConfig, total: int | None) -> str:
    """What a group's learned step schedule reads (:meth:`NeuralGraphOptimizer.describe`)."""
    if not cfg.horizon_taus:
        return "step-count features only (this checkpoint has no horizon features; total_steps is ignored)"
    if total is not None:
        return f"told total_steps={total} (the learned schedule reads t / {total})"
    if cfg.untold_horizon:
        assumed = _functional.assumed_horizon_text(cfg.untold_horizon, cfg.untold_growth)
        return (f"total_steps not given: steps as a told run of {assumed} steps (the checkpoint's untold_horizon; "
                "pass total_steps when you know the run's length)")
    return ("total_steps not given: no fraction of training known (the untold readout and step-count features; "
            "pass total_steps when you know the run's length)")
