"""Typed run configurations: frozen dataclasses loaded from YAML with ``key=value`` overrides.

Every command of the package (meta-training, benchmarks, weight-space tasks) is configured the same way::

    cfg = load_config(MyConfig, "configs/.../name.yaml", ["steps=5", "wandb=false"])

Types are checked strictly (a typo never silently becomes a string): ``bool`` fields take YAML booleans
only, ``int`` fields integers only, ``float`` fields integers or floats, ``str`` fields strings (an
override's raw text is used as-is for them), and ``tuple[int, ...]`` / ``tuple[float, ...]`` /
``tuple[str, ...]`` fields YAML lists (or a comma-separated override such as ``seeds=0,1,2``). One
deliberate leniency: PyYAML follows YAML 1.1, where ``3e-3`` (no dot) is a *string*, so ``float`` fields
also accept a string that Python's :func:`float` parses. Unknown keys are errors that list the valid keys.

A config subclasses :class:`CheckedConfig` (type-check, then its ``validate``); a command that trains for
``steps`` from ``seed`` can start from :class:`TrainKeys`. :func:`parse_command` is every command's line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .io import atomic_write_text, write_json_and_markdown

__all__ = ["CheckedConfig", "TrainKeys", "bad_value", "check_finite", "check_minimums", "check_types", "command_parser", "config_from_dict",
           "config_to_dict", "field_names", "keys_help", "load_config", "parse_command", "parse_override",
           "reject_unknown_keys", "save_resolved_config", "set_threads"]

C = TypeVar("C")
_SCALARS: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str}


def bad_value(key: str, value: Any, expected: str) -> None:
    """Raise the uniform :class:`ValueError` of a config's ``validate``."""
    raise ValueError(f"invalid config value {key}={value!r}: expected {expected}")


def check_minimums(cfg: Any, **minimums: int | float) -> None:
    """:func:`bad_value` for the first of the numeric fields ``key=minimum`` whose value is below its minimum
    (``threads`` is told that ``0`` means torch's default)."""
    for key, low in minimums.items():
        value = getattr(cfg, key)
        if not value >= low:  # NaN fails too
            kind = "an integer" if isinstance(value, int) else "a float"
            bad_value(key, value, f"{kind} >= {low}" + (" (0: torch's default)" if key == "threads" else ""))


def check_finite(cfg: Any, *keys: str, low: float = 0.0, strict: bool = True, note: str = "") -> None:
    """:func:`bad_value` for the first float field of ``keys`` that is not finite and above ``low`` (``>`` when
    ``strict``, else ``>=``); ``note`` is added to the message (what ``low`` itself means, say). A tuple-valued
    field (``lrs=1e-3,1e-2``) is checked entry by entry and named whole."""
    for key in keys:
        value = getattr(cfg, key)
        for v in value if isinstance(value, tuple) else (value,):
            if not (math.isfinite(v) and (v > low if strict else v >= low)):
                what = "finite floats" if isinstance(value, tuple) else "a finite float"
                bad_value(key, value, f"{what} {'>' if strict else '>='} {low:g}{note}")


def check_grid(cfg: Any, *keys: str) -> None:
    """:func:`bad_value` for the first tuple field of ``keys`` that is not a non-empty grid of distinct finite
    floats > 0 (learning rates, multipliers)."""
    for key in keys:
        value = getattr(cfg, key)
        if not value or any(not (math.isfinite(v) and v > 0) for v in value) or len(set(value)) != len(value):
            bad_value(key, value, "a non-empty list of distinct finite floats > 0")


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _field_type(f: dataclasses.Field) -> tuple[type, type | None]:
    """``(outer, element)``: ``(int, None)`` for ``int``, ``(tuple, float)`` for ``tuple[float, ...]``."""
    t = str(f.type).replace(" ", "")
    if t in _SCALARS:
        return _SCALARS[t], None
    for name, typ in _SCALARS.items():
        if t == f"tuple[{name},...]":
            return tuple, typ
    raise TypeError(f"config field {f.name!r} has unsupported type {f.type!r}")


def field_names(cls: type) -> list[str]:
    """Names of all config keys of ``cls``, in declaration order."""
    return list(_fields(cls))


def _scalar(expected: type, value: Any, default: Any) -> tuple[bool, Any]:
    if expected is bool:
        return isinstance(value, bool), value
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value.strip())
            except ValueError:
                return False, value
        return False, value
    if isinstance(value, str):
        return True, value
    if value is None and default == "":
        return True, ""
    return False, value


def _check_type(cls: type, key: str, value: Any, source: str) -> Any:
    """Return ``value`` converted to the type of field ``key``, or raise :class:`TypeError`."""
    f = _fields(cls)[key]
    outer, elem = _field_type(f)
    if outer is tuple:
        if isinstance(value, (list, tuple)):
            out = []
            for v in value:
                ok, v = _scalar(elem, v, None)
                if not ok:
                    break
                out.append(v)
            else:
                return tuple(out)
        name = f"a list of {elem.__name__}"
    else:
        ok, v = _scalar(outer, value, f.default)
        if ok:
            return v
        name = outer.__name__ + (" (use true/false)" if outer is bool else "")
    raise TypeError(f"config key {key!r} ({source}) expects {name}, got {value!r} of type {type(value).__name__}")


def check_types(cfg: Any) -> None:
    """Type-check every field of a frozen config in place (coercing ints of float fields, lists of tuple
    fields); call it from ``__post_init__``."""
    for f in dataclasses.fields(cfg):
        object.__setattr__(cfg, f.name, _check_type(type(cfg), f.name, getattr(cfg, f.name), type(cfg).__name__))


def _unknown_key_error(cls: type, key: str, source: str) -> ValueError:
    names = field_names(cls)
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown config key {key!r} in {source}{hint}; valid keys: {', '.join(names)}")


def reject_unknown_keys(cls: type, data: Mapping[str, Any], what: str) -> None:
    """Raise ``ValueError("Unknown {what} config keys [...]; valid keys: [...]")`` when ``data`` holds a key that
    is not a field of the dataclass ``cls`` (the ``from_dict`` of the configs stored in checkpoints)."""
    known = set(field_names(cls))
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"Unknown {what} config keys {unknown}; valid keys: {sorted(known)}")


def config_from_dict(cls: type[C], data: Mapping[str, Any], base: C | None = None,
                     source: str = "config dict") -> C:
    """Build a ``cls`` config from a flat mapping, on top of ``base`` (default: all defaults).

    Raises:
        ValueError: for unknown keys (listing the valid ones) or invalid values.
        TypeError: for values of the wrong type.
    """
    fields = _fields(cls)
    values = config_to_dict(base) if base is not None else {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in fields:
            raise _unknown_key_error(cls, str(key), source)
        values[key] = _check_type(cls, key, value, source)
    return cls(**values)


def parse_override(cls: type, item: str) -> tuple[str, Any]:
    """Parse one ``key=value`` override into ``(key, typed value)``.

    The value is parsed with :func:`yaml.safe_load` and type-checked like a YAML value, except for ``str``
    fields, which take the raw text after the first ``=``; a tuple field also takes ``a,b,c``.

    Raises:
        ValueError: if ``item`` has no ``=``, or the key is unknown.
        TypeError: if the value has the wrong type for the key.
    """
    fields = _fields(cls)
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form key=value; valid keys: {', '.join(fields)}")
    key, raw = item.split("=", 1)
    key = key.strip()
    source = f"override {item!r}"
    if key not in fields:
        raise _unknown_key_error(cls, key, source)
    outer, elem = _field_type(fields[key])
    if outer is str:
        return key, raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
        if outer is tuple and not isinstance(value, list):
            value = [yaml.safe_load(v) if elem is not str else v for v in raw.split(",") if v.strip()]
    except yaml.YAMLError as exc:
        raise ValueError(f"cannot parse the value of {source}: {exc}") from exc
    return key, _check_type(cls, key, value, source)


def load_config(cls: type[C], path: str | os.PathLike[str] | None, overrides: Iterable[str] = ()) -> C:
    """Load a ``cls`` config from an optional YAML file, then apply ``key=value`` overrides in order.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for a file that is not a YAML mapping, unknown keys, malformed overrides or invalid values.
        TypeError: for values of the wrong type.
    """
    cfg = cls()
    if path:
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"cannot parse YAML config {str(path)!r}: {exc}") from exc
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ValueError(f"YAML config {str(path)!r} must contain a mapping of config keys, got "
                             f"{type(data).__name__}")
        cfg = config_from_dict(cls, data, source=f"YAML config {str(path)!r}")
    if isinstance(overrides, str):  # a lone string would otherwise be iterated character by character
        overrides = [overrides]
    parsed = dict(parse_override(cls, item) for item in overrides)
    if parsed:
        cfg = dataclasses.replace(cfg, **parsed)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain ``{key: value}`` dict of a config (tuples as lists, so it dumps to YAML/JSON), in field order."""
    return {f.name: list(v) if isinstance(v := getattr(cfg, f.name), tuple) else v for f in dataclasses.fields(cfg)}


def save_resolved_config(cfg: Any, path: str | os.PathLike[str], header: str = "Resolved config") -> Path:
    """Write ``cfg`` as YAML to ``path`` atomically (temp file in the same directory + ``os.replace``).

    The file loads back with :func:`load_config` to an equal config. Parent directories are created.
    """
    path = Path(path)
    text = f"# {header} (written by lopt_graphs.config.save_resolved_config).\n"
    text += yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    atomic_write_text(path, text)
    return path


def keys_help(cls: type) -> str:
    """One line per config key of ``cls``: ``key=default`` (the epilog of every command's ``--help``)."""
    rows = []
    for f in dataclasses.fields(cls):
        d = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        d = ",".join(str(v) for v in d) if isinstance(d, tuple) else d
        d = str(d).lower() if isinstance(d, bool) else d  # as YAML and key=value write it
        rows.append(f"  {f.name}={d}")
    return f"config keys of {cls.__name__} (key=default):\n" + "\n".join(rows)


def command_parser(cls: type, description: str, **kwargs: Any) -> argparse.ArgumentParser:
    """The parser of every command: ``[--config FILE] [key=value ...]``, its ``--help`` listing the keys of
    ``cls`` with their defaults. Commands may add their own flags to it (rarely: prefer a config key)."""
    ap = argparse.ArgumentParser(description=description, epilog=keys_help(cls),
                                 formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    ap.add_argument("--config", default=None, metavar="FILE",
                    help=f"YAML file of {cls.__name__} keys (default: the built-in defaults)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="override a config key (after the file)")
    return ap


def parse_command(cls: type[C], argv: Sequence[str] | None, description: str) -> C:
    """Parse ``[--config FILE] [key=value ...]`` into a ``cls`` config (unknown keys are errors)."""
    args = command_parser(cls, description).parse_args(argv)
    return load_config(cls, args.config, args.overrides)


def set_threads(threads: int) -> None:
    """Apply a config's ``threads`` key (every command defaults to 1; 0 leaves torch's default)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def document_command(cls: type[C], argv: Sequence[str] | None, description: str,
                     run: Callable[[C], dict[str, Any]], markdown: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """A result-document command's ``main``: parse ``argv`` into a ``cls`` config (which has ``threads`` and
    ``out``), apply its threads, ``doc = run(cfg)``, print ``markdown(doc)``, write both (``cfg.out`` and its
    ``.md``, :func:`~lopt_graphs.io.write_json_and_markdown`), say where; returns ``doc``."""
    cfg = parse_command(cls, argv, description)
    set_threads(cfg.threads)
    doc = run(cfg)
    md = markdown(doc)
    print(md)
    out = write_json_and_markdown(cfg.out, doc, md)
    print(f"wrote {out}, {out.with_suffix('.md')}")
    return doc


class CheckedConfig:
    """Base of the frozen config dataclasses: ``__post_init__`` type-checks every key (:func:`check_types`,
    coercing ints of float fields and lists of tuple fields), then calls :meth:`validate`."""

    def __post_init__(self) -> None:
        check_types(self)
        self.validate()

    def validate(self) -> None:
        """Check value constraints (a config overrides it).

        Raises:
            ValueError: naming the first offending key, its value and what is expected (:func:`bad_value`).
        """


@dataclasses.dataclass(frozen=True)
class TrainKeys(CheckedConfig):
    """The keys of a command that trains for ``steps`` from ``seed`` (the examples): subclass it as a frozen
    dataclass, re-declare a key to change its default, add the command's own keys after these.

    Attributes:
        steps: training steps (>= 1).
        seed: the run's seed.
        threads: torch intra-op threads (1, as every command; ``0`` keeps torch's default).
    """

    steps: int = 100
    seed: int = 0
    threads: int = 1

    def validate(self) -> None:
        """``steps >= 1`` and ``threads >= 0``."""
        if self.steps < 1:
            bad_value("steps", self.steps, "an integer >= 1")
        if self.threads < 0:
            bad_value("threads", self.threads, "an integer >= 0 (0 keeps torch's default)")
