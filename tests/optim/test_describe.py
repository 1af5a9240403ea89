"""``opt.describe()`` and the one warning of ``for_module`` about graph-free parameters."""

from __future__ import annotations

import warnings

import pytest
from torch import Tensor, nn

from lopt_graphs import NeuralGraphOptimizer


class _LM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.rnn = nn.GRU(4, 6, batch_first=True)
        self.out = nn.Linear(6, 10)

    def forward(self, t: Tensor) -> Tensor:
        return self.out(self.rnn(self.emb(t))[0])


def test_for_module_warns_once_naming_free_parameters() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = NeuralGraphOptimizer.for_module(_LM(), embeddings="free")
    msgs = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1
    assert "emb.weight" in msgs[0] and "Embedding" in msgs[0] and "describe()" in msgs[0]
    desc = opt.describe()  # the GRU is on the graph (tied gate groups); the embedding is free when asked
    assert [r.kind for r in desc.rows] == ["free", "edge", "edge", "node", "node", "edge", "node"]
    assert desc.totals() == {"edge": (3, 240), "node": (3, 46), "free": (1, 40)}
    text = str(desc)
    assert "out.weight" in text and "graph-free under embeddings='free'" in text and "1 of 7 parameters" in text


def test_for_module_puts_embeddings_on_the_graph_by_default() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is free: no warning
        opt = NeuralGraphOptimizer.for_module(_LM())
    desc = opt.describe()
    assert [r.kind for r in desc.rows] == ["edge", "edge", "edge", "node", "node", "edge", "node"]
    assert desc.totals()["free"] == (0, 0) and desc.totals()["edge"] == (4, 280)
    with pytest.raises(ValueError, match="embeddings"):
        NeuralGraphOptimizer.for_module(_LM(), embeddings="sparse")


def test_describe_without_free_parameters_and_no_warning() -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = NeuralGraphOptimizer.for_module(model)
        plain = NeuralGraphOptimizer(model.parameters())
    assert [r.name for r in opt.describe().rows] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [r.name for r in plain.describe().rows] == [f"group0.param{i}" for i in range(4)]
    assert opt.describe().totals()["free"] == (0, 0)
    assert "graph: 10 nodes, 25 edges, built by torch.fx" in str(opt.describe())
    # a second parameter group shows up too
    extra = nn.Linear(2, 2)
    opt.add_param_group({"params": list(extra.parameters())})
    assert len(opt.describe().rows) == 6 and opt.describe().rows[-1].name == "group1.param1"


def test_describe_names_the_step_each_parameter_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)  # "auto" as on an AMX CPU
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 256),
                          nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 3))
    steps = {r.name: r.step for r in NeuralGraphOptimizer.for_module(model).describe().rows}
    assert steps["0.weight"] == "base"  # it feeds the BatchNorm
    assert steps["4.weight"] == steps["6.weight"] == "learned, orthogonal (bfloat16)"  # 256x144, 256x256: large
    assert steps["8.weight"] == "learned, orthogonal (float32)"  # 3x256: too small for bfloat16 to pay
    assert steps["4.bias"] == steps["1.weight"] == "learned"
    forced = NeuralGraphOptimizer.for_module(model, orthogonal_dtype=torch.float32).describe()
    assert {r.step for r in forced.rows if "orthogonal" in r.step} == {"learned, orthogonal (float32)"}
    plain = NeuralGraphOptimizer.for_module(model, orthogonal=False).describe()
    assert [r.step for r in plain.rows].count("learned") == len(plain.rows) - 1
    text = str(NeuralGraphOptimizer.for_module(model).describe())
    assert "step" in text.splitlines()[0] and "learned, orthogonal (bfloat16)" in text


def test_describe_says_which_schedule_each_group_runs():
    from lopt_graphs.optim import load_learned_update

    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    told = NeuralGraphOptimizer(net.parameters(), total_steps=500).describe()
    assert told.notes == ("schedule: told total_steps=500 (the learned schedule reads t / 500)",)
    assert str(told).endswith(told.notes[0])
    untold = NeuralGraphOptimizer(net.parameters(), "v2_calibrated4_es60_fanin_ortho_conv_untold").describe().notes[0]
    assert "total_steps not given" in untold and "untold readout" in untold
    assumed = load_learned_update("default").with_config(untold_horizon=100.0)
    groups = [{"params": [net[0].weight, net[0].bias]}, {"params": [net[2].weight, net[2].bias], "total_steps": 9}]
    notes = NeuralGraphOptimizer(groups, assumed).describe().notes
    assert notes[0].startswith("schedule (group 0): total_steps not given: steps as a told run of t + 100 steps")
    assert notes[1] == "schedule (group 1): told total_steps=9 (the learned schedule reads t / 9)"
    grown = assumed.with_config(untold_growth=0.5)
    assert "a told run of t + max(100, 0.5 t) steps" in NeuralGraphOptimizer(net.parameters(), grown).describe().notes[0]
    assert "ignored" in NeuralGraphOptimizer(net.parameters(), "meta_tbptt_clip3_1875").describe().notes[0]
