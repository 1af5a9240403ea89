"""Every console script of ``setup.cfg`` answers ``--help`` (exit 0), and every one that takes the one command
line (all but ``lopt-step-cost``, whose rewrite is issue 15's) lists its config keys with ``threads=1``."""

from __future__ import annotations

import configparser
import importlib
from pathlib import Path

import pytest

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"
OWN_FLAGS = {"lopt-step-cost"}  # argparse flags until issue 15 moves it to key=value


def console_scripts() -> dict[str, str]:
    """``name -> "module:function"`` as ``setup.cfg`` declares them."""
    cp = configparser.ConfigParser()
    cp.read(SETUP_CFG, encoding="utf-8")
    lines = cp["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines)


def test_setup_cfg_declares_the_commands() -> None:
    assert {"lopt-meta-train", "lopt-evaluate", "lopt-derive", "lopt-vs-adam", "lopt-throughput",
            "lopt-step-saturation", "lopt-graph-cost"} <= set(console_scripts())


@pytest.mark.parametrize("name", sorted(console_scripts()))
def test_help_exits_zero_and_lists_the_keys(name: str, capsys) -> None:
    module, func = console_scripts()[name].split(":")
    main = getattr(importlib.import_module(module), func)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:")
    if name in OWN_FLAGS:
        return
    assert "[--config FILE]" in out and "key=value" in out
    keys = out.split("(key=default):\n", 1)[1].split()
    assert "threads=1" in keys, keys
