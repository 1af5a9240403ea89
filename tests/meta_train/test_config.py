"""Tests of meta_train.config: defaults, YAML loading, overrides and error messages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

_ROOT = Path(__file__).resolve().parents[2]

from meta_train.config import (  # noqa: E402
    MetaTrainConfig,
    config_field_names,
    config_to_dict,
    load_config,
    parse_override,
    save_resolved_config,
)

CONFIG_DIR = _ROOT / "configs" / "meta_train"


def _write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_defaults_are_valid_and_documented() -> None:
    cfg = MetaTrainConfig()
    cfg.validate()
    assert cfg.estimator == "pes" and cfg.population == 8 and cfg.num_pairs == 4
    assert cfg.outer_lr == pytest.approx(1e-3) and isinstance(cfg.sigma, float)
    assert cfg.resume == "" and cfg.init_ckpt == "" and cfg.threads == 1
    doc = MetaTrainConfig.__doc__ or ""
    for name in config_field_names():
        assert f"{name}:" in doc, f"field {name} undocumented"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]


def test_none_path_and_no_overrides_give_defaults() -> None:
    assert load_config(None, []) == MetaTrainConfig()
    assert load_config("", []) == MetaTrainConfig()


def test_yaml_load_and_int_for_float(tmp_path: Path) -> None:
    p = _write(tmp_path, {"outer_steps": 7, "sigma": 1, "estimator": "es", "wandb": False, "family": "digits_mlp"})
    cfg = load_config(p, [])
    assert cfg.outer_steps == 7 and cfg.estimator == "es" and cfg.wandb is False and cfg.family == "digits_mlp"
    assert cfg.sigma == 1.0 and isinstance(cfg.sigma, float)
    assert cfg.population == 8  # untouched default


def test_yaml_exponent_without_dot_accepted_for_floats(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) loads `3e-4` as a string.
    cfg = load_config(_write(tmp_path, "outer_lr: 3e-4\n"), [])
    assert cfg.outer_lr == pytest.approx(3e-4)


def test_empty_yaml_is_defaults(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, ""), []) == MetaTrainConfig()


def test_yaml_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mapping"):
        load_config(_write(tmp_path, "- 1\n- 2\n"), [])


def test_overrides_are_typed_and_applied_in_order(tmp_path: Path) -> None:
    p = _write(tmp_path, {"outer_steps": 7})
    cfg = load_config(
        p,
        ["outer_steps=9", "outer_lr=1e-2", "wandb=false", "report=True", "family=mnist1d_cnn", "resume=", "seed=4", "seed=5"],
    )
    assert cfg.outer_steps == 9
    assert cfg.outer_lr == pytest.approx(1e-2)
    assert cfg.wandb is False and cfg.report is True
    assert cfg.family == "mnist1d_cnn"  # str fields take the raw text
    assert cfg.resume == ""
    assert cfg.seed == 5
    assert parse_override("out=runs/a=b") == ("out", "runs/a=b")
    assert parse_override(" sigma = 0.5") == ("sigma", 0.5)


def test_unknown_key_lists_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_config(_write(tmp_path, {"outer_step": 3}), [])
    msg = str(info.value)
    assert "outer_step" in msg and "did you mean 'outer_steps'" in msg
    for name in config_field_names():
        assert name in msg
    with pytest.raises(ValueError, match="valid keys: outer_steps, estimator"):
        load_config(None, ["bogus=1"])


def test_wrong_types_raise_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"'outer_steps'.*expects int.*'ten'"):
        load_config(_write(tmp_path, {"outer_steps": "ten"}), [])
    with pytest.raises(TypeError, match=r"'population'.*expects int.*8\.5"):
        load_config(None, ["population=8.5"])
    with pytest.raises(TypeError, match=r"'wandb'.*expects bool"):
        load_config(None, ["wandb=1"])
    with pytest.raises(TypeError, match=r"'sigma'.*expects float"):
        load_config(None, ["sigma=true"])
    with pytest.raises(TypeError, match=r"'family'.*expects str"):
        load_config(_write(tmp_path, {"family": 3}), [])
    with pytest.raises(TypeError, match=r"'seed'"):
        MetaTrainConfig(seed="0")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("estimator=sgd", "estimator"),
        ("family=imagenet", "family"),
        ("population=7", "population"),
        ("population=0", "population"),
        ("outer_steps=-1", "outer_steps"),
        ("truncation=300", "truncation"),
        ("truncation=0", "truncation"),
        ("horizon=0", "horizon"),
        ("sigma=0", "sigma"),
        ("outer_lr=-0.5", "outer_lr"),
        ("grad_clip=-1", "grad_clip"),
        ("groups=0", "groups"),
        ("tasks_per_group=0", "tasks_per_group"),
        ("seed=-1", "seed"),
        ("log_every=0", "log_every"),
        ("checkpoint_every=-2", "checkpoint_every"),
        ("report_steps=0", "report_steps"),
        ("loss_clip=0", "loss_clip"),
        ("threads=-1", "threads"),
        ("family=", "family"),
    ],
)
def test_bad_values_raise_value_error(override: str, key: str) -> None:
    value = override.split("=", 1)[1]
    with pytest.raises(ValueError) as info:
        load_config(None, [override])
    msg = str(info.value)
    assert f"{key}=" in msg and value in msg and "expected" in msg


def test_population_parity_only_for_antithetic_estimators() -> None:
    assert load_config(None, ["estimator=tbptt", "population=1"]).population == 1
    with pytest.raises(ValueError, match="even"):
        MetaTrainConfig(estimator="es", population=3)


def test_override_without_equals() -> None:
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["outer_steps"])


def test_shipped_yamls(tmp_path: Path) -> None:
    default_path = CONFIG_DIR / "default.yaml"
    raw = yaml.safe_load(default_path.read_text())
    assert list(raw) and set(raw) == set(config_field_names()), "default.yaml must list every key"
    assert load_config(default_path, []) == MetaTrainConfig()

    smoke = load_config(CONFIG_DIR / "smoke.yaml", [])
    assert (smoke.outer_steps, smoke.population, smoke.truncation, smoke.horizon, smoke.groups, smoke.tasks_per_group) == (3, 4, 3, 12, 1, 2)
    assert smoke.wandb is False and smoke.report is False and smoke.checkpoint_every == 1
    assert load_config(CONFIG_DIR / "smoke.yaml", ["outer_steps=5"]).outer_steps == 5


def test_save_resolved_config_round_trip(tmp_path: Path) -> None:
    cfg = load_config(None, ["outer_lr=1e-4", "loss_clip=.inf", "resume=runs/x/ckpt.pt", "family=mnist5k_cnn"])
    path = save_resolved_config(cfg, tmp_path / "sub" / "config.yaml")
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp files left
    assert load_config(path, []) == cfg
    assert config_to_dict(cfg)["family"] == "mnist5k_cnn"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_loads_and_its_init_checkpoint_exists(path: Path) -> None:
    """A committed config must not point at a file that only exists on the machine that wrote it."""
    from lopt_graphs.optim.checkpoint import read_checkpoint
    cfg = load_config(path, [])
    if cfg.init_ckpt:
        target = _ROOT / cfg.init_ckpt if ("/" in cfg.init_ckpt or cfg.init_ckpt.endswith(".pt")) else cfg.init_ckpt
        assert read_checkpoint(str(target))["config"]  # shipped name or committed file, readable
