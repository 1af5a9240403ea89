"""Checkpoints of the learned update: round trip, the accepted ``ckpt`` forms, and every failure mode."""

from __future__ import annotations

import os
import pickle
import re

import pytest
import torch

from lopt_graphs.optim import (
    CheckpointError,
    LearnedUpdate,
    LearnedUpdateConfig,
    NeuralGraphOptimizer,
    checkpoint_dict,
    load_learned_update,
    save_checkpoint,
    shipped_checkpoints,
)

from .optim_infos import assert_tree_equal, random_head_learned, tiny_mlp


def _same_weights(a: LearnedUpdate, b: LearnedUpdate) -> None:
    assert a.cfg == b.cfg
    assert_tree_equal(a.state_dict(), b.state_dict())


# --------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("cfg", [None, LearnedUpdateConfig(head_hidden=6, encoder_every=3, momenta=(0.3, 0.95))],
                         ids=["default_cfg", "custom_cfg"])
def test_save_load_round_trip(tmp_path, cfg):
    learned = random_head_learned(seed=7, cfg=cfg)
    path = tmp_path / "sub" / "lu.pt"  # the folder is created
    save_checkpoint(learned, path, meta={"steps": 12, "note": "test"})
    loaded = load_learned_update(path)
    _same_weights(learned, loaded)
    assert isinstance(loaded.cfg.momenta, tuple)
    raw = torch.load(path, weights_only=True)  # plain data: no code is unpickled
    assert raw["format"] == "lopt_graphs.learned_update" and raw["format_version"] == 1
    assert raw["meta"] == {"steps": 12, "note": "test"}
    assert raw["config"] == learned.cfg.to_dict()
    assert set(raw["state_dict"]) == set(learned.state_dict())
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    learned = random_head_learned()
    path = tmp_path / "lu.pt"
    save_checkpoint(learned, path)
    save_checkpoint(random_head_learned(seed=1), path)  # overwrite
    assert sorted(os.listdir(tmp_path)) == ["lu.pt"]
    _same_weights(load_learned_update(path), random_head_learned(seed=1))
    # a failing save leaves the old file intact and no temp file behind
    with pytest.raises((pickle.PicklingError, AttributeError)):
        save_checkpoint(learned, path, meta={"bad": lambda: None})  # lambdas do not pickle
    assert sorted(os.listdir(tmp_path)) == ["lu.pt"]
    _same_weights(load_learned_update(path), random_head_learned(seed=1))


# --------------------------------------------------------------------------- the ckpt argument
def _default_weights() -> LearnedUpdate:
    return load_learned_update(None)


@pytest.mark.parametrize("form", ["path", "str_path", "dict", "learned_update"])
def test_ckpt_forms(tmp_path, form):
    learned = random_head_learned(seed=3)
    path = tmp_path / "lu.pt"
    save_checkpoint(learned, path)
    ckpt = {"path": path, "str_path": str(path), "dict": checkpoint_dict(learned),
            "learned_update": learned}[form]
    opt = NeuralGraphOptimizer(tiny_mlp().parameters(), ckpt)
    _same_weights(opt.learned, learned)
    assert (opt.learned is learned) == (form == "learned_update")


#: The shipped checkpoint the default names (see lopt_graphs/checkpoints/README.md).
DEFAULT_SOURCE = "v2_calibrated4_es60_fanin_ortho_conv_h100"


@pytest.mark.parametrize("ckpt", [None, "default"])
def test_default_checkpoint(ckpt):
    assert "default" in shipped_checkpoints()
    opt = NeuralGraphOptimizer(tiny_mlp().parameters(), ckpt)
    _same_weights(opt.learned, _default_weights())
    # the default is recipe v2, meta-trained and calibrated: a learned per-tensor step (schedule and readouts
    # for told and untold runs) on an Adam-like direction, and a size prior above 100k parameters
    _same_weights(opt.learned, load_learned_update(DEFAULT_SOURCE))
    cfg = opt.learned.cfg
    assert cfg.tensor_lr and cfg.horizon_taus and cfg.untold_readout and (cfg.size_ref, cfg.size_power) == (100000, 0.25)
    assert (cfg.fan_in_power, cfg.fan_in_ref) == (0.5, 64.0)  # and a fan-in prior on each weight's step
    assert cfg.orthogonal and cfg.orthogonal_conv  # weight matrices and kernels step along their orthogonalized momentum
    assert cfg.untold_horizon == 100.0  # untold runs step as told runs of t + 100 steps
    assert torch.count_nonzero(opt.learned.lr_readout.weight) > 0 and torch.count_nonzero(opt.learned.lr_readout_untold.weight) > 0
    assert not torch.equal(opt.learned.lr_readout.weight, opt.learned.lr_readout_untold.weight)


def test_meta_trained_checkpoint_is_shipped():
    assert {"adam_init", "meta_tbptt_1100"} <= set(shipped_checkpoints())
    opt = NeuralGraphOptimizer(tiny_mlp().parameters(), "meta_tbptt_1100")
    assert torch.count_nonzero(opt.learned.w2) > 0 and opt.learned.cfg == LearnedUpdateConfig()


def test_calibrated_v2_checkpoint_records_its_recipe():
    """``v2_calibrated3``: the readout bounds it was fitted with and where it comes from travel in the file."""
    assert "v2_calibrated3" in shipped_checkpoints()
    learned = load_learned_update("v2_calibrated3")
    assert learned.cfg.readout_bounds == (2.0, 1.5) and learned.cfg.horizon_taus
    import lopt_graphs.optim.checkpoint as ck
    meta = torch.load(ck.CHECKPOINT_DIR / "v2_calibrated3.pt", weights_only=True)["meta"]
    cal = meta["calibration"]
    assert meta["derived_from"] == "meta_train/resume/v4_transformers_best900.pt"
    assert (cal["readout_bound"], cal["readout_bound_up"], cal["tasks"], len(cal["rows"])) == (2.0, 1.5, 192, 4)


def test_the_new_default_records_its_recipe():
    """``v2_calibrated4``: ``v2_calibrated3`` for told runs, its untold calibration and size prior in the file."""
    told, new = load_learned_update("v2_calibrated3"), load_learned_update("v2_calibrated4")
    sd = new.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in told.state_dict().items())  # every told meta-parameter as it was
    assert set(sd) - set(told.state_dict()) == {"lr_readout_untold.weight", "lr_readout_untold.bias", "lr_untold_shift"}
    import lopt_graphs.optim.checkpoint as ck
    meta = torch.load(ck.CHECKPOINT_DIR / "v2_calibrated4.pt", weights_only=True)["meta"]
    assert meta["derived_from"] == "v2_calibrated3" and meta["size_prior"] == [100000, 0.25]
    assert meta["calibration_untold"]["horizon"] == "untold" and meta["calibration_untold"]["tasks"] == 48
    assert meta["calibration_told"]["tasks"] == 192


def test_the_es_default_records_its_recipe():
    """``v2_calibrated4_es60``: ``v2_calibrated4`` meta-trained 60 outer steps by ES with the encoder fixed."""
    base, new = load_learned_update("v2_calibrated4"), load_learned_update("v2_calibrated4_es60")
    assert new.cfg == base.cfg
    sd, sd0 = new.state_dict(), base.state_dict()
    assert set(sd) == set(sd0)
    moved = {k for k in sd if not torch.equal(sd[k], sd0[k])}
    assert not any(k.startswith("encoder.") for k in moved)  # meta_params=no_encoder
    assert {"w2", "lr_readout.weight", "lr_readout_untold.weight", "lr_sched.weight"} <= moved
    # small moves: 60 outer steps of Adam at lr 1e-3 move a meta-parameter by at most 0.06
    assert max(float((sd[k] - sd0[k]).abs().max()) for k in moved) <= 0.06 + 1e-6
    import lopt_graphs.optim.checkpoint as ck
    meta = torch.load(ck.CHECKPOINT_DIR / "v2_calibrated4_es60.pt", weights_only=True)["meta"]
    assert meta["derived_from"] == "v2_calibrated4" and meta["meta_train"]["outer_step"] == 60
    assert meta["meta_train"]["config"]["meta_params"] == "no_encoder"
    assert meta["meta_train"]["config"]["estimator"] == "full_es"


def test_the_fan_in_default_is_the_es_checkpoint_with_a_fan_in_prior():
    """``v2_calibrated4_es60_fanin``: the weights of ``v2_calibrated4_es60``, its config plus the prior (0.5, 64)."""
    import dataclasses

    base, new = load_learned_update("v2_calibrated4_es60"), load_learned_update("v2_calibrated4_es60_fanin")
    assert dataclasses.replace(new.cfg, fan_in_power=0.0) == base.cfg and new.cfg.fan_in_power == 0.5
    sd = base.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in new.state_dict().items()) and set(sd) == set(new.state_dict())
    import lopt_graphs.optim.checkpoint as ck
    meta = torch.load(ck.CHECKPOINT_DIR / "v2_calibrated4_es60_fanin.pt", weights_only=True)["meta"]
    assert meta["derived_from"] == "v2_calibrated4_es60" and meta["fan_in_prior"] == [0.5, 64.0]


@pytest.mark.parametrize("derived, source, flag", [
    ("v2_calibrated4_es60_fanin_ortho", "v2_calibrated4_es60_fanin", "orthogonal"),
    ("v2_calibrated4_es60_fanin_ortho_conv", "v2_calibrated4_es60_fanin_ortho", "orthogonal_conv")])
def test_an_orthogonal_checkpoint_is_its_source_with_one_flag_on(derived, source, flag):
    """``v2_calibrated4_es60_fanin_ortho`` (``v2_calibrated4_es60_fanin`` plus ``orthogonal``) and
    ``v2_calibrated4_es60_fanin_ortho_conv`` (that plus ``orthogonal_conv``): the source's weights and config, one
    flag on."""
    import dataclasses

    base, new = load_learned_update(source), load_learned_update(derived)
    assert dataclasses.replace(new.cfg, **{flag: False}) == base.cfg and getattr(new.cfg, flag)
    sd = base.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in new.state_dict().items()) and set(sd) == set(new.state_dict())
    import lopt_graphs.optim.checkpoint as ck
    meta = torch.load(ck.CHECKPOINT_DIR / f"{derived}.pt", weights_only=True)["meta"]
    assert meta["derived_from"] == source and meta[flag] is True


def test_the_untold_checkpoint_is_its_source_with_a_lower_untold_step():
    """``v2_calibrated4_es60_fanin_ortho_conv_untold``: ``v2_calibrated4_es60_fanin_ortho_conv`` with its untold
    readout's shift lowered by 0.5 (``lopt-derive untold_shift=-0.5``): told runs are the source's."""
    base = load_learned_update("v2_calibrated4_es60_fanin_ortho_conv")
    new = load_learned_update("v2_calibrated4_es60_fanin_ortho_conv_untold")
    assert new.cfg == base.cfg
    sd = base.state_dict()
    moved = {k for k, v in new.state_dict().items() if not torch.equal(v, sd[k])}
    assert moved == {"lr_untold_shift"} and float(new.lr_untold_shift - base.lr_untold_shift) == pytest.approx(-0.5)
    import lopt_graphs.optim.checkpoint as ck
    meta = torch.load(ck.CHECKPOINT_DIR / "v2_calibrated4_es60_fanin_ortho_conv_untold.pt", weights_only=True)["meta"]
    assert meta["derived_from"] == "v2_calibrated4_es60_fanin_ortho_conv" and meta["untold_shift"] == -0.5


def test_the_h100_checkpoint_is_its_source_with_an_assumed_untold_horizon():
    """``v2_calibrated4_es60_fanin_ortho_conv_h100``: ``v2_calibrated4_es60_fanin_ortho_conv_untold`` with
    ``untold_horizon=100`` (``lopt-derive untold_horizon=100``): the same weights; told runs are the source's."""
    import dataclasses

    base = load_learned_update("v2_calibrated4_es60_fanin_ortho_conv_untold")
    new = load_learned_update("v2_calibrated4_es60_fanin_ortho_conv_h100")
    assert dataclasses.replace(new.cfg, untold_horizon=0.0) == base.cfg and new.cfg.untold_horizon == 100.0
    sd = base.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in new.state_dict().items()) and set(sd) == set(new.state_dict())
    import lopt_graphs.optim.checkpoint as ck
    meta = torch.load(ck.CHECKPOINT_DIR / "v2_calibrated4_es60_fanin_ortho_conv_h100.pt", weights_only=True)["meta"]
    assert meta["derived_from"] == "v2_calibrated4_es60_fanin_ortho_conv_untold" and meta["untold_horizon"] == 100.0


def test_shipped_file_loads_with_weights_only():
    import lopt_graphs.optim.checkpoint as ck
    assert ck.DEFAULT_CHECKPOINT == DEFAULT_SOURCE and not (ck.CHECKPOINT_DIR / "default.pt").exists()  # a name, no copy
    raw = torch.load(ck.CHECKPOINT_DIR / f"{ck.DEFAULT_CHECKPOINT}.pt", weights_only=True)
    assert raw["format_version"] == 1 and raw["meta"]["trained"] is True
    raw = torch.load(ck.CHECKPOINT_DIR / "adam_init.pt", weights_only=True)
    assert raw["format_version"] == 1 and raw["meta"]["trained"] is False


def test_default_checkpoint_not_shadowed_by_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()  # e.g. a run folder called "default"
    NeuralGraphOptimizer(tiny_mlp().parameters())


# --------------------------------------------------------------------------- failures
def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope" / "missing.pt"
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_learned_update(path)
    with pytest.raises(CheckpointError, match="not found"):
        NeuralGraphOptimizer(tiny_mlp().parameters(), str(path))
    with pytest.raises(CheckpointError, match=r"shipped checkpoints \[.*'default'"):
        load_learned_update("no_such_shipped_name")


@pytest.mark.parametrize("content", [b"\x00\x01garbage\xff" * 10, b"", b"PK\x03\x04truncated-zip"],
                         ids=["garbage", "empty", "truncated_zip"])
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt") as info:
        load_learned_update(path)
    assert str(path) in str(info.value)


def test_not_a_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_learned_update(path)


def _ckpt(**changes):
    d = checkpoint_dict(LearnedUpdate())
    d.update(changes)
    return d


INVALID = [
    ("wrong_version", dict(format_version=2), r"format_version 2 is not supported"),
    ("no_version", dict(format_version=None), r"format_version None"),
    ("wrong_format", dict(format="something.else"), r"Not a learned-update checkpoint"),
    ("config_mismatch", dict(state_dict=LearnedUpdate(LearnedUpdateConfig(head_hidden=6)).state_dict()),
     r"do not match"),
    ("missing_weight", dict(state_dict={k: v for k, v in LearnedUpdate().state_dict().items() if k != "w2"}),
     r"(?s)do not match.*Missing key.*w2"),
    ("unknown_config_key", dict(config={**LearnedUpdateConfig().to_dict(), "bogus_key": 1}),
     r"config is invalid.*bogus_key"),
    ("unknown_encoder_key", dict(config={**LearnedUpdateConfig().to_dict(),
                                         "encoder": {**LearnedUpdateConfig().encoder.to_dict(), "bogus": 1}}),
     r"config is invalid.*bogus"),
    ("invalid_config_value", dict(config={**LearnedUpdateConfig().to_dict(), "head_hidden": 0}),
     r"config is invalid.*head_hidden"),
    ("no_config", dict(config=None), r"config is invalid"),
]


@pytest.mark.parametrize("via", ["dict", "file"])
@pytest.mark.parametrize("case, changes, regex", [pytest.param(*c, id=c[0]) for c in INVALID])
def test_invalid_checkpoint(tmp_path, via, case, changes, regex):
    d = _ckpt(**changes)
    if via == "file":
        path = tmp_path / f"{case}.pt"
        torch.save(d, path)
        d = path
    with pytest.raises(CheckpointError, match=regex):
        load_learned_update(d)
    with pytest.raises(CheckpointError, match=regex):
        NeuralGraphOptimizer(tiny_mlp().parameters(), d)
