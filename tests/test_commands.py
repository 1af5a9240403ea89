"""Every console script of ``setup.cfg`` and every ``python -m`` command answers ``--help`` (exit 0), and every one
that takes the one command line (all but ``lopt-step-cost``, whose rewrite is issue 15's) lists its config keys
with ``threads=1``. (The examples' are in ``tests/examples``.)"""

from __future__ import annotations

import configparser
import importlib
from pathlib import Path

import pytest

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"
OWN_FLAGS = {"lopt-step-cost"}  # argparse flags until issue 15 moves it to key=value
# the commands run as ``python -m MODULE`` (not console scripts)
MODULE_COMMANDS = ["benchmarks.ablation_ff", "benchmarks.input_layer_adam", "benchmarks.newton_schulz_cost",
                   "benchmarks.step_schedule",
                   "lopt_graphs.tasks.cnn_zoo.make_zoo",
                   "lopt_graphs.tasks.cnn_zoo.predict", "lopt_graphs.tasks.cnn_zoo.report",
                   "lopt_graphs.tasks.inr.classify", "lopt_graphs.tasks.inr.edit", "lopt_graphs.tasks.inr.make_dataset",
                   "meta_train.checkpointing"]


def declared_scripts() -> dict[str, str]:
    """``name -> "module:function"`` as ``setup.cfg`` declares them (the ``lopt_graphs.cli`` wrappers)."""
    cp = configparser.ConfigParser()
    cp.read(SETUP_CFG, encoding="utf-8")
    lines = cp["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines)


def console_scripts() -> dict[str, str]:
    """``name -> "module:main"``: the command each console script runs."""
    from lopt_graphs.cli import COMMANDS

    return {name: COMMANDS[name] for name in declared_scripts()}


def test_every_console_script_goes_through_the_cli_wrapper() -> None:
    from lopt_graphs import cli

    declared = declared_scripts()
    assert set(declared) == set(cli.COMMANDS)
    for name, entry in declared.items():
        assert entry == f"lopt_graphs.cli:{name.replace('-', '_')}", entry
        assert callable(getattr(cli, name.replace("-", "_")))


def test_console_script_exits_zero_when_its_main_returns_a_result(tmp_path) -> None:
    # the wrapper pip generates is ``sys.exit(entry())``: a returned dict would print and exit with status 1
    import subprocess
    import sys

    code = ("import sys; from lopt_graphs.cli import lopt_suite_compare as e; "
            "sys.argv = ['lopt-suite-compare', 'results=" + str(SETUP_CFG.parent / "benchmarks/results/vs_adam_"
                                                               "meta_tbptt_clip3_1875/results.json") + "']; sys.exit(e())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ahead_of_tuned_adam" in out.stdout


def test_setup_cfg_declares_the_commands() -> None:
    assert {"lopt-meta-train", "lopt-evaluate", "lopt-derive", "lopt-vs-adam", "lopt-throughput",
            "lopt-step-saturation", "lopt-graph-cost"} <= set(console_scripts())


def _help(target: str, capsys) -> str:
    module, func = target.split(":")
    main = getattr(importlib.import_module(module), func)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:")
    return out


def _assert_lists_keys(out: str) -> None:
    assert "[--config FILE]" in out and "key=value" in out
    keys = out.split("(key=default):\n", 1)[1].split()
    assert "threads=1" in keys, keys


@pytest.mark.parametrize("name", sorted(console_scripts()))
def test_console_script_help_exits_zero_and_lists_the_keys(name: str, capsys) -> None:
    out = _help(console_scripts()[name], capsys)
    if name not in OWN_FLAGS:
        _assert_lists_keys(out)


@pytest.mark.parametrize("module", MODULE_COMMANDS)
def test_module_command_help_exits_zero_and_lists_the_keys(module: str, capsys) -> None:
    _assert_lists_keys(_help(f"{module}:main", capsys))


def test_every_command_module_is_listed() -> None:
    """A module with a ``main`` is a command: it is a console script or in :data:`MODULE_COMMANDS`."""
    root = SETUP_CFG.parent
    found = {str(p.relative_to(root).with_suffix("")).replace("/", ".")
             for pkg in ("lopt_graphs", "meta_train", "benchmarks") for p in (root / pkg).rglob("*.py")
             if "\ndef main(" in p.read_text(encoding="utf-8")}
    scripts = {target.split(":")[0] for target in console_scripts().values()}
    assert found == scripts | set(MODULE_COMMANDS)


def test_importing_the_package_prints_no_third_party_future_warning() -> None:
    # torch_geometric's import calls the deprecated torch.jit.script; a user of lopt_graphs should not see that
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", "import lopt_graphs"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "jit.script" not in out.stderr
