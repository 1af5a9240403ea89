"""Registration with ``higher``: ``higher.innerloop_ctx(model, NeuralGraphOptimizer(...))`` unrolls
differentiable steps, so a loss after K steps back-propagates to the learned weights (``opt.learned``).

For meta-gradients, give the optimizer a :class:`LearnedUpdate` whose parameters require grad
(``opt.learned.requires_grad_(True)``); the step itself uses the same pure update as the optimizer.
"""

from __future__ import annotations

import higher.optim

from .functional import ngo_update
from .optimizer import NeuralGraphOptimizer


class DifferentiableNeuralGraphOptimizer(higher.optim.DifferentiableOptimizer):
    """The differentiable twin of :class:`NeuralGraphOptimizer` used by ``higher``."""

    def __init__(self, other: NeuralGraphOptimizer, reference_params, *args, **kwargs):
        self.learned = other.learned
        self.specs = [other.graph_spec(gi) for gi in range(len(other.param_groups))]  # public accessor
        super().__init__(other, reference_params, *args, **kwargs)

    def _update(self, grouped_grads, **kwargs) -> None:
        for gi, (group, grads) in enumerate(zip(self.param_groups, grouped_grads)):
            params = group["params"]
            states = [dict(self.state[gi][pi]) if pi in self.state[gi] else {} for pi in range(len(params))]
            new_params, new_states = ngo_update(
                self.learned, self.specs[gi].to(params[0].device), params, list(grads), states,
                lr=group["lr"], betas=group["betas"], eps=group["eps"], weight_decay=group["weight_decay"],
                encoder_every=group["encoder_every"], total_steps=group.get("total_steps"))
            for pi, (g, n, s) in enumerate(zip(grads, new_params, new_states)):
                if g is not None:
                    group["params"][pi] = n
                    self.state[gi][pi] = s


higher.register_optim(NeuralGraphOptimizer, DifferentiableNeuralGraphOptimizer)
