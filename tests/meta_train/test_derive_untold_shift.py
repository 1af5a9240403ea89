"""``lopt-derive untold_shift=D``: runs not told ``total_steps`` step ``e^D`` times as far; told runs do not move."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lopt_graphs.optim import NeuralGraphOptimizer, load_learned_update
from meta_train.derive import main


def _step(ckpt: str, total_steps: int | None) -> tuple[list[torch.Tensor], dict]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 12, generator=g), torch.randint(0, 3, (32,), generator=g)
    opt = NeuralGraphOptimizer(net.parameters(), ckpt, total_steps=total_steps)
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    return [p.detach().clone() for p in net.parameters()], copy.deepcopy(opt.state[net[0].weight])


SRC = "v2_calibrated4_es60_fanin_ortho_conv"  # an update with an untold readout and no untold_shift in its meta


def test_untold_shift_moves_untold_runs_only(tmp_path):
    dst = tmp_path / "shifted.pt"
    main([f"src={SRC}", f"dst={dst}", "untold_shift=-0.5"])
    old, new = load_learned_update(SRC), load_learned_update(str(dst))
    assert float(new.lr_untold_shift) == pytest.approx(float(old.lr_untold_shift) - 0.5)
    moved = {k for k, v in new.state_dict().items() if not torch.equal(v, old.state_dict()[k])}
    assert moved == {"lr_untold_shift"} and new.cfg == old.cfg
    told_a, _ = _step(SRC, 20)
    told_b, _ = _step(str(dst), 20)
    assert all(torch.equal(a, b) for a, b in zip(told_a, told_b))
    _, st_a = _step(SRC, None)
    params_b, st_b = _step(str(dst), None)
    assert float(st_b["ctx_lr_untold"]) == pytest.approx(float(st_a["ctx_lr_untold"]) - 0.5, abs=1e-5)
    assert all(torch.isfinite(p).all() for p in params_b)
    main([f"src={dst}", f"dst={tmp_path / 'twice.pt'}", "untold_shift=-0.25"])  # meta accumulates
    meta = torch.load(tmp_path / "twice.pt", weights_only=False)["meta"]
    assert meta["untold_shift"] == pytest.approx(-0.75)


def test_untold_shift_refuses_an_update_without_an_untold_readout_and_bad_values(tmp_path):
    with pytest.raises(ValueError, match="no untold readout"):
        main(["src=v2_calibrated3", f"dst={tmp_path / 'a.pt'}", "untold_shift=-0.5"])
    assert not (tmp_path / "a.pt").exists()
    with pytest.raises(ValueError, match="untold_shift"):
        main(["src=default", f"dst={tmp_path / 'b.pt'}", f"untold_shift={math.nan}"])
