"""lopt_graphs.config: the typed YAML + key=value loader every command uses."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lopt_graphs.config import (
    TrainKeys,
    check_finite,
    check_grid,
    check_minimums,
    check_types,
    config_to_dict,
    field_names,
    keys_help,
    load_config,
    reject_unknown_keys,
    save_resolved_config,
)


@dataclass(frozen=True)
class _Cfg:
    steps: int = 3
    lr: float = 0.1
    name: str = "x"
    fast: bool = False
    seeds: tuple[int, ...] = (0, 1)
    lrs: tuple[float, ...] = (1e-3,)

    def __post_init__(self) -> None:
        check_types(self)


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: 5\nlr: 3e-3\nseeds: [4, 5, 6]\n")
    cfg = load_config(_Cfg, p, ["fast=true", "lrs=0.1,0.01", "name=abc"])
    assert cfg == _Cfg(steps=5, lr=3e-3, name="abc", fast=True, seeds=(4, 5, 6), lrs=(0.1, 0.01))
    save_resolved_config(cfg, tmp_path / "out.yaml")
    assert load_config(_Cfg, tmp_path / "out.yaml") == cfg
    assert config_to_dict(cfg)["seeds"] == [4, 5, 6]


@pytest.mark.parametrize("override, error, match", [
    ("stepz=3", ValueError, "did you mean 'steps'"),
    ("steps=2.5", TypeError, "steps"),
    ("fast=yes please", TypeError, "true/false"),
    ("seeds=a,b", TypeError, "list of int"),
    ("steps", ValueError, "key=value"),
])
def test_bad_overrides(override, error, match):
    with pytest.raises(error, match=match):
        load_config(_Cfg, None, [override])


def test_bad_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(_Cfg, p)
    with pytest.raises(TypeError, match="lr"):
        _Cfg(lr="fast")


@dataclass(frozen=True)
class _Train(TrainKeys):
    steps: int = 7
    out: str = "runs/x"


def test_train_keys_subclass_keeps_the_order_takes_new_defaults_and_checks():
    assert field_names(_Train) == ["steps", "seed", "threads", "out"]
    assert keys_help(_Train).splitlines()[1:] == ["  steps=7", "  seed=0", "  threads=1", "  out=runs/x"]
    assert load_config(_Train, None, ["seed=3"]) == _Train(steps=7, seed=3, threads=1, out="runs/x")
    with pytest.raises(ValueError, match="steps=0"):
        load_config(_Train, None, ["steps=0"])
    with pytest.raises(ValueError, match="threads=-2"):
        _Train(threads=-2)
    with pytest.raises(TypeError, match="seed"):
        _Train(seed="0")


def test_reject_unknown_keys_names_them_and_the_valid_ones():
    reject_unknown_keys(_Cfg, {"steps": 1, "lr": 2}, "test")
    with pytest.raises(ValueError, match=r"Unknown test config keys \['stpes'\]; valid keys: \['fast', 'lr', "):
        reject_unknown_keys(_Cfg, {"stpes": 1}, "test")


@dataclass(frozen=True)
class _Bounded:
    steps: int = 10
    scale: float = 1.0
    threads: int = 1

    def __post_init__(self) -> None:
        check_types(self)
        check_minimums(self, steps=10, scale=1, threads=0)


@pytest.mark.parametrize("kw, match", [
    ({"steps": 9}, r"invalid config value steps=9: expected an integer >= 10$"),
    ({"scale": 0.5}, r"scale=0.5: expected a float >= 1$"),
    ({"scale": float("nan")}, r"scale=nan: expected a float >= 1$"),
    ({"threads": -1}, r"threads=-1: expected an integer >= 0 \(0: torch's default\)"),
])
def test_check_minimums_names_the_key_the_value_and_the_bound(kw, match):
    with pytest.raises(ValueError, match=match):
        _Bounded(**kw)
    assert _Bounded(steps=10, scale=1, threads=0).scale == 1.0  # the bounds themselves are allowed


@dataclass(frozen=True)
class _Finite:
    lr: float = 0.1
    clip: float = 0.0
    lrs: tuple[float, ...] = (1e-3, 1e-2)

    def __post_init__(self) -> None:
        check_finite(self, "lr", "lrs")
        check_finite(self, "clip", strict=False, note=" (0 disables)")


@pytest.mark.parametrize("kw, match", [
    ({"lr": 0.0}, r"invalid config value lr=0.0: expected a finite float > 0$"),
    ({"lr": float("inf")}, r"lr=inf: expected a finite float > 0$"),
    ({"lr": float("nan")}, r"lr=nan: expected a finite float > 0$"),
    ({"clip": -1.0}, r"clip=-1.0: expected a finite float >= 0 \(0 disables\)$"),
    ({"clip": float("inf")}, r"clip=inf: expected a finite float >= 0 \(0 disables\)$"),
    ({"lrs": (1e-3, float("nan"))}, r"lrs=\(0.001, nan\): expected finite floats > 0$"),
    ({"lrs": (-1.0,)}, r"lrs=\(-1.0,\): expected finite floats > 0$"),
])
def test_check_finite_names_the_key_the_value_and_the_bound(kw, match):
    with pytest.raises(ValueError, match=match):
        _Finite(**kw)
    assert _Finite(lr=1e-9, clip=0.0).clip == 0.0  # a non-strict bound itself is allowed


@dataclass(frozen=True)
class _Grid:
    lrs: tuple[float, ...] = (1e-3, 1e-2)

    def __post_init__(self) -> None:
        check_grid(self, "lrs")


@pytest.mark.parametrize("lrs", [(), (1e-3, 1e-3), (0.0, 1e-3), (1e-3, float("nan")), (float("inf"),)])
def test_check_grid_wants_distinct_finite_positive_values(lrs):
    with pytest.raises(ValueError, match=r"invalid config value lrs=.*: expected a non-empty list of distinct finite"):
        _Grid(lrs)
    assert _Grid((0.5, 1e-3)).lrs == (0.5, 1e-3)  # any order
