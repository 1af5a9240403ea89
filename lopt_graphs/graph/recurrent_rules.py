"""Neural-graph rules for ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN``.

The one symmetry of a recurrent layer: permuting its hidden units by one permutation ``pi`` applied to the
rows of every gate block (in ``weight_ih``, ``weight_hh`` and both biases), to the columns of ``weight_hh``
(the recurrent input), and to whatever reads the layer's output, leaves the network's function unchanged
(with a zero initial state, the default). Permuting the gate blocks independently does not.

On the graph, per layer and direction:

* a *gate* set of ``G * H`` neurons (``G`` = 4 for an LSTM: ``i, f, g, o``; 3 for a GRU: ``r, z, n``; 1 for
  an RNN), laid out gate-major like the rows of ``weight_ih``: ``weight_ih`` is a weight from the layer's
  input to it, ``weight_hh`` a weight from the hidden state to it, ``bias_ih``/``bias_hh`` are two bias slots
  on it (a GRU's ``bias_hh`` of ``n`` is multiplied by ``r``; it still sits on its gate neuron);
* the hidden state is the layer's output set (``H`` neurons; ``2 H`` with ``bidirectional=True``, the forward
  units first, as the output tensor has them; each direction's ``weight_hh`` reads its half);
* a tie (:attr:`GraphSpec.tied`) makes the ``G`` gate blocks and the hidden state one permutation group.
  The cell state and the gates' elementwise products carry no weights and are not on the graph: the encoder
  does not see which gate neuron belongs to which hidden unit (it is equivariant to the larger group of
  independent permutations, which is sound, only less informed).
* with ``proj_size = P > 0`` (LSTM), the tie holds the gates and an ``H``-neuron cell-output set;
  ``weight_hr`` is a weight from it to the ``P`` projected units (the output set, permutable by themselves).

Not on the graph: an initial state passed in (it is read by position); the final states ``(h_n, c_n)`` when
something reads them (they stack the layers' states: the layers' hidden units are pinned then).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .builder import GraphBuilder, GraphBuildError

Take = Callable[[nn.Parameter], int]
#: Activations of the gate blocks, in the order of the rows of ``weight_ih``.
GATES: dict[str, tuple[str, ...]] = {
    "LSTM": ("sigmoid", "sigmoid", "tanh", "sigmoid"), "GRU": ("sigmoid", "sigmoid", "tanh"),
    "RNN_TANH": ("tanh",), "RNN_RELU": ("relu",),
}


def recurrent_rule(b: GraphBuilder, rnn: nn.RNNBase, src: int, take: Take, what: str,
                   pin_states: bool = False) -> int:
    """Wire an ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` reading neuron set ``src``; returns its output set.

    Args:
        pin_states: pin every layer's hidden (and cell-output) neurons, for when the final states are read
            by something outside the graph.

    Raises:
        GraphBuildError: for a mode without a rule, or sizes that do not fit ``src``.
    """
    if rnn.mode not in GATES:
        raise GraphBuildError(f"{what}: recurrent mode {rnn.mode} has no neural-graph rule")
    gates_act = GATES[rnn.mode]
    g, h = len(gates_act), rnn.hidden_size
    p = getattr(rnn, "proj_size", 0)
    h_out = p or h
    dirs = 2 if rnn.bidirectional else 1
    if b.size(src) not in (None, rnn.input_size):  # checked first: a failed rule must leave no neuron sets
        raise GraphBuildError(f"{what}: input_size {rnn.input_size} does not fit the {b.size(src)} neurons it reads")
    x = src
    for layer in range(rnn.num_layers):
        out = b.new_set(dirs * h_out)
        b.set_activation(out, "other")
        if pin_states:
            b.pin(out)
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            name = f"{what} layer {layer}" + (" reverse" if d else "")
            gates = b.new_set(g * h)
            b.set_block_activations(gates, list(gates_act), h)
            w_ih, w_hh = getattr(rnn, "weight_ih" + sfx), getattr(rnn, "weight_hh" + sfx)
            b.add_weight(take(w_ih), tuple(w_ih.shape), x, gates, f"{name} weight_ih")
            b.add_block(take(w_hh), tuple(w_hh.shape), out, d * h_out, gates, 0, f"{name} weight_hh")
            if rnn.bias:
                for kind in ("bias_ih", "bias_hh"):
                    bias = getattr(rnn, kind + sfx)
                    b.add_node_param(take(bias), tuple(bias.shape), gates, "bias", f"{name} {kind}")
            if p:
                cell = b.new_set(h)
                b.set_activation(cell, "other")
                if pin_states:
                    b.pin(cell)
                w_hr = getattr(rnn, "weight_hr" + sfx)
                b.add_block(take(w_hr), tuple(w_hr.shape), cell, 0, out, d * p, f"{name} weight_hr")
                b.tie(h, [(gates, 0, g), (cell, 0, 1)])
                b.tie(p, [(out, d * p, 1)])  # the projected units: permutable, but each direction apart
            else:
                b.tie(h, [(gates, 0, g), (out, d * h, 1)])
        x = out
    return x
