"""Tests of meta_train.checkpointing: atomic save, strict load, RNG round trip."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

_ROOT = Path(__file__).resolve().parents[2]

from meta_train.checkpointing import (  # noqa: E402
    CHECKPOINT_FORMAT,
    CheckpointCorruptError,
    latest_checkpoint,
    load_checkpoint,
    main,
    make_checkpoint,
    rng_state,
    save_checkpoint_atomic,
    set_rng_state,
)
from meta_train.config import MetaTrainConfig, config_to_dict  # noqa: E402


def _ckpt(step: int = 3) -> dict:
    return make_checkpoint(
        step,
        config_to_dict(MetaTrainConfig()),
        meta_params={"w": torch.randn(3, 2), "b": torch.zeros(2)},
        outer_opt={"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
        history=[1.0, 2.5],
        rng=rng_state(),
    )


def test_round_trip_and_no_temp_files(tmp_path: Path) -> None:
    obj = _ckpt()
    path = tmp_path / "run" / "ckpt.pt"
    assert latest_checkpoint(tmp_path / "run") is None
    assert save_checkpoint_atomic(obj, path) == str(path)
    save_checkpoint_atomic(_ckpt(step=4), path)  # overwrite
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]
    assert latest_checkpoint(tmp_path / "run") == str(path)
    back = load_checkpoint(path)
    assert back["format"] == CHECKPOINT_FORMAT and back["step"] == 4
    assert back["config"] == config_to_dict(MetaTrainConfig())
    assert back["meta_params"]["w"].shape == (3, 2)
    assert back["history"] == [1.0, 2.5]


def test_failed_save_keeps_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint_atomic(_ckpt(step=1), path)
    bad = _ckpt(step=2)
    bad["numpy"] = np.zeros(3)  # not weights_only-loadable
    with pytest.raises(ValueError, match="weights_only"):
        save_checkpoint_atomic(bad, path)
    with pytest.raises(ValueError, match="missing required keys"):
        save_checkpoint_atomic({"step": 1}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
    assert load_checkpoint(path)["step"] == 1


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointCorruptError, match="nope.pt"):
        load_checkpoint(path)


def test_truncated_and_garbage_files(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint_atomic(_ckpt(), good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint\x00\x01" * 10)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for p in (truncated, garbage, empty):
        with pytest.raises(CheckpointCorruptError, match=p.name) as info:
            load_checkpoint(p)
        assert isinstance(info.value, RuntimeError)


def test_unsafe_pickle_rejected(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pt"
    obj = _ckpt()
    obj["array"] = np.ones(2)
    torch.save(obj, path)
    with pytest.raises(CheckpointCorruptError, match="unsafe.pt"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.pop("config"), "missing required keys"),
        (lambda d: d.pop("format"), "missing required keys"),
        (lambda d: d.update(format="something.else"), "format is"),
        (lambda d: d.update(format_version=1), "format_version is 1"),
        (lambda d: d.update(step="3"), "step must be"),
    ],
)
def test_wrong_structure_or_version(tmp_path: Path, mutate, match: str) -> None:
    path = tmp_path / "old.pt"
    obj = _ckpt()
    mutate(obj)
    torch.save(obj, path)  # bypass the save-time check
    with pytest.raises(CheckpointCorruptError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    not_a_dict = tmp_path / "list.pt"
    torch.save([1, 2], not_a_dict)
    with pytest.raises(CheckpointCorruptError, match="expected a dict"):
        load_checkpoint(not_a_dict)


def _draw() -> tuple:
    return (
        torch.rand(4).tolist(),
        torch.randn(2).tolist(),
        [random.random() for _ in range(3)],
        random.gauss(0.0, 1.0),
        np.random.rand(3).tolist(),
        float(np.random.standard_normal()),
    )


def test_rng_round_trip_through_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    random.gauss(0.0, 1.0)  # leaves a cached gaussian in python's state
    np.random.standard_normal()  # and in numpy's
    state = rng_state()
    path = save_checkpoint_atomic(make_checkpoint(0, {}, rng=state), tmp_path / "ckpt.pt")
    expected = _draw()
    _draw()  # advance further
    set_rng_state(load_checkpoint(path)["rng"])
    assert _draw() == expected


def test_set_rng_state_requires_entries() -> None:
    with pytest.raises(ValueError, match="torch"):
        set_rng_state({"python": {}})


def test_resume_point_command_drops_the_inner_runs(tmp_path: Path, capsys) -> None:
    src = save_checkpoint_atomic(dict(_ckpt(), runs=[{"params": torch.randn(100)}]), tmp_path / "ckpt.pt")
    out = main([f"src={src}", f"dst={tmp_path / 'point.pt'}"])
    assert out == tmp_path / "point.pt" and "wrote" in capsys.readouterr().out
    point = load_checkpoint(out)
    assert point["runs"] is None and point["step"] == 3
    assert torch.equal(point["meta_params"]["w"], load_checkpoint(src)["meta_params"]["w"])
    with pytest.raises(ValueError, match="src=CHECKPOINT and dst=PATH"):
        main([f"src={src}"])
    with pytest.raises(ValueError, match="unknown config key 'source'"):
        main([f"source={src}"])
