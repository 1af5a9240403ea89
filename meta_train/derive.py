"""Derive a learned-update checkpoint from another: a new step-multiplier bound, or a re-centred log step.

``lopt-derive src=SRC dst=DST mag_clip=3`` (or ``python -m meta_train.derive ...``) loads ``SRC`` (a path or
shipped name), sets its ``LearnedUpdateConfig.mag_clip`` and writes ``DST`` with the same weights; ``meta``
records the source.

``mag_affine=SCALE,SHIFT`` also maps the head's (scaled) log step multiplier ``u`` to ``SCALE * u + SHIFT``
(:meth:`LearnedUpdate.affine_log_step_`: it rescales the magnitude row of the head's output layer). A head
whose ``u`` sits far beyond ``mag_clip`` is clipped everywhere, so its step is the bound itself and
meta-gradients through the magnitude vanish; a ``SCALE < 1`` and a negative ``SHIFT`` bring ``u`` back inside
the bound, where meta-training can move it.

``size_prior=REF,POWER`` gives the checkpoint a size prior (``LearnedUpdateConfig.size_ref``/``size_power``): on a
model of ``N > REF`` parameters the optimizer multiplies its ``lr`` by ``(N / REF) ** -POWER``. ``mag_clip=0``
keeps the source's bound (then a size prior or a fan-in prior is needed: something to derive). Example::

    lopt-derive src=v2_calibrated3 dst=runs/c3_size.pt size_prior=100000,0.25

``fan_in_prior=POWER,REF`` gives it a fan-in prior (``LearnedUpdateConfig.fan_in_power``/``fan_in_ref``): a weight
with ``fan_in`` inputs per neuron adds ``-POWER * log(fan_in / REF)`` to its per-tensor log step; ``POWER=0``
removes the source's prior::

    lopt-derive src=default dst=runs/fanin/p05.pt fan_in_prior=0.5,64

``orthogonal=true`` makes each 2-D weight matrix step along its orthogonalized Adam momentum
(``LearnedUpdateConfig.orthogonal``; ``false`` turns it off)::

    lopt-derive src=default dst=runs/ortho/ortho.pt orthogonal=true

``orthogonal_conv=true`` orthogonalizes convolution kernels too (``LearnedUpdateConfig.orthogonal_conv``; it turns
``orthogonal`` on; ``orthogonal=false`` turns both off)::

    lopt-derive src=default dst=runs/ortho/conv.pt orthogonal_conv=true

``untold_shift=D`` adds ``D`` to the untold readout's shift (``LearnedUpdate.lr_untold_shift``): runs not told
``total_steps`` take steps ``e^D`` times as large, told runs are unchanged (needs an update with an untold readout)::

    lopt-derive src=default dst=runs/untold/m05.pt untold_shift=-0.5

``untold_horizon=T0`` gives runs not told ``total_steps`` an assumed horizon (``LearnedUpdateConfig.untold_horizon``):
at step ``t`` they step as a told run of ``t + T0`` steps (its schedule and readout); ``0`` removes it::

    lopt-derive src=default dst=runs/untold/h300.pt untold_horizon=300

``untold_growth=G`` makes an untold run that has taken ``t`` steps assume at least ``G t`` more
(``LearnedUpdateConfig.untold_growth``): it steps as a told run of ``t + max(T0, G t)`` steps; ``0`` removes it::

    lopt-derive src=default dst=runs/untold/g03.pt untold_growth=0.3
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lopt_graphs import config as _cfg
from lopt_graphs.optim import save_checkpoint
from lopt_graphs.optim.checkpoint import read_checkpoint

from .trainer import initial_learned_update


def derive(src: str, dst: str | Path, mag_clip: float, mag_affine: tuple[float, float] | None = None,
           size_prior: tuple[int, float] | None = None, fan_in_prior: tuple[float, float] | None = None,
           orthogonal: bool | None = None, orthogonal_conv: bool | None = None, untold_shift: float = 0.0,
           untold_horizon: float | None = None, untold_growth: float | None = None) -> None:
    """Write ``dst``: ``src`` with ``mag_clip`` (``0`` keeps the source's when something else changes), its log
    step mapped by ``mag_affine``, a size prior ``(size_ref, size_power)``, a fan-in prior ``(fan_in_power,
    fan_in_ref)``, the ``orthogonal`` direction and its ``orthogonal_conv`` extension on or off (``None``: keep;
    ``orthogonal_conv=True`` implies ``orthogonal``, ``orthogonal=False`` turns both off), the untold readout's shift
    moved by ``untold_shift``, an assumed ``untold_horizon`` and its ``untold_growth`` (``None``: keep; ``0``:
    none); ``meta`` records what changed."""
    if orthogonal is False and orthogonal_conv:
        raise ValueError("orthogonal=false with orthogonal_conv=true: convolutions are orthogonalized only on top of "
                         "the linear layers (drop one of them)")
    if orthogonal_conv and orthogonal is None:
        orthogonal = True
    if not math.isfinite(untold_shift):
        raise ValueError(f"Invalid untold_shift: {untold_shift} (expected a finite log step shift)")
    if untold_horizon is not None and not (math.isfinite(untold_horizon) and untold_horizon >= 0):
        raise ValueError(f"Invalid untold_horizon: {untold_horizon} (expected a number of steps >= 0; 0 removes the "
                         "source's assumed horizon)")
    if untold_growth is not None and not (math.isfinite(untold_growth) and untold_growth >= 0):
        raise ValueError(f"Invalid untold_growth: {untold_growth} (expected a float >= 0, the least remaining "
                         "steps per step taken; 0 removes the source's)")
    changes = (size_prior is not None or fan_in_prior is not None or orthogonal is not None
               or orthogonal_conv is not None or untold_shift != 0 or untold_horizon is not None
               or untold_growth is not None)
    if not (mag_clip > 0 or (mag_clip == 0 and changes)):
        raise ValueError(f"Invalid mag_clip: {mag_clip} (expected > 0, or 0 to keep the source's with a size_prior, "
                         "a fan_in_prior, orthogonal, orthogonal_conv, untold_shift, untold_horizon or "
                         "untold_growth)")
    if fan_in_prior is not None:
        power, fref = (float(v) for v in fan_in_prior)
        if not (math.isfinite(power) and power >= 0 and math.isfinite(fref) and fref > 0):
            raise ValueError(f"Invalid fan_in_prior: ({power}, {fref}) (expected POWER,REF: an exponent >= 0 and a "
                             "fan-in > 0)")
    if size_prior is not None:
        ref, power = size_prior
        if not (float(ref).is_integer() and ref > 0 and math.isfinite(power) and power > 0):
            raise ValueError(f"Invalid size_prior: ({ref}, {power}) (expected REF,POWER: a number of parameters > 0 "
                             "and an exponent > 0)")
    if mag_affine is not None:
        scale, shift = (float(v) for v in mag_affine)
        if not (scale > 0 and math.isfinite(scale) and math.isfinite(shift)):  # before reading the source
            raise ValueError(f"Invalid mag_affine: ({scale}, {shift}) (expected a finite SCALE > 0 and a "
                             "finite SHIFT)")
    obj = read_checkpoint(src)
    learned = initial_learned_update(obj, mag_clip)
    meta = {**(obj.get("meta") or {}), "derived_from": str(src)}
    if mag_clip > 0:  # 0 keeps the source's bound, and whatever its meta says about it
        meta["mag_clip"] = float(mag_clip)
    if mag_affine is not None:
        learned.affine_log_step_(scale, shift)
        meta["mag_affine"] = [scale, shift]
    if size_prior is not None:
        learned = learned.with_config(size_ref=int(ref), size_power=float(power))
        meta["size_prior"] = [int(ref), float(power)]
    if fan_in_prior is not None:
        learned = learned.with_config(fan_in_power=power, fan_in_ref=fref)  # checks tensor_lr
        meta["fan_in_prior"] = [power, fref]
    if orthogonal is not None or orthogonal_conv is not None:
        on = learned.cfg.orthogonal if orthogonal is None else bool(orthogonal)
        conv = on and (learned.cfg.orthogonal_conv if orthogonal_conv is None else bool(orthogonal_conv))
        learned = learned.with_config(orthogonal=on, orthogonal_conv=conv)  # checks conv needs orthogonal
        meta["orthogonal"], meta["orthogonal_conv"] = on, conv
    if untold_shift:
        if not learned.cfg.untold_readout:
            raise ValueError(f"untold_shift={untold_shift:g}: {src} has no untold readout (runs not told total_steps "
                             "read the told one); fit one first with lopt-calibrate horizon=untold")
        with torch.no_grad():
            learned.lr_untold_shift.add_(float(untold_shift))
        meta["untold_shift"] = float(meta.get("untold_shift", 0.0)) + float(untold_shift)
    if untold_horizon is not None or untold_growth is not None:
        t0 = learned.cfg.untold_horizon if untold_horizon is None else float(untold_horizon)
        growth = learned.cfg.untold_growth if untold_growth is None else float(untold_growth)
        if t0 == 0 and untold_horizon is not None and untold_growth is None:
            growth = 0.0  # removing the horizon removes its growth
        learned = learned.with_config(untold_horizon=t0, untold_growth=growth)  # checks tensor_lr, horizon_taus, T0
        meta["untold_horizon"], meta["untold_growth"] = t0, growth
    if untold_shift and learned.cfg.untold_horizon:
        raise ValueError(f"untold_shift={untold_shift:g} with an assumed untold horizon (untold_horizon="
                         f"{learned.cfg.untold_horizon:g}): untold runs read the told readout, so the shift would do "
                         "nothing; scale their steps with lr, or remove the horizon (untold_horizon=0)")
    save_checkpoint(learned, dst, meta=meta)


@dataclass(frozen=True)
class DeriveConfig:
    """Keys of ``lopt-derive``.

    Attributes:
        src: checkpoint path or shipped name.
        dst: output path.
        mag_clip: bound of the learned log step multiplier (> 0; 0 keeps the source's, with a ``size_prior``).
        mag_affine: ``SCALE,SHIFT``: map the log step multiplier ``u`` to ``SCALE * u + SHIFT`` (empty: keep).
        size_prior: ``REF,POWER``: ``lr`` times ``(N / REF) ** -POWER`` on models of ``N > REF`` parameters
            (empty: keep the source's).
        fan_in_prior: ``POWER,REF``: ``-POWER * log(fan_in / REF)`` on every weight's per-tensor log step (empty:
            keep the source's; ``POWER=0`` removes it).
        orthogonal: ``true``/``false``: the orthogonalized direction on 2-D weights on or off (empty: keep;
            ``false`` turns ``orthogonal_conv`` off too).
        orthogonal_conv: ``true``/``false``: convolution kernels orthogonalized too, or not (empty: keep;
            ``true`` turns ``orthogonal`` on).
        untold_shift: added to the untold readout's log step (runs not told ``total_steps`` step ``e^D`` times as
            far; 0: keep).
        untold_horizon: an assumed horizon offset ``T0`` for runs not told ``total_steps`` (they step as a told run
            of ``t + T0`` steps; ``0`` removes the source's and its growth; ``-1``, the default: keep).
        untold_growth: ``G``: an untold run assumes at least ``G t`` steps to go (``t + max(T0, G t)``; ``0``
            removes the source's; ``-1``, the default: keep). Needs an untold horizon.
        threads: torch intra-op threads (1, as every command; ``0`` keeps torch's default).
    """

    src: str = ""
    dst: str = ""
    mag_clip: float = 0.0
    mag_affine: tuple[float, ...] = ()
    size_prior: tuple[float, ...] = ()
    fan_in_prior: tuple[float, ...] = ()
    orthogonal: str = ""
    orthogonal_conv: str = ""
    untold_shift: float = 0.0
    untold_horizon: float = -1.0
    untold_growth: float = -1.0
    threads: int = 1

    def __post_init__(self) -> None:
        _cfg.check_types(self)
        if len(self.mag_affine) not in (0, 2):
            _cfg.bad_value("mag_affine", self.mag_affine, "SCALE,SHIFT (two floats) or empty")
        if len(self.size_prior) not in (0, 2):
            _cfg.bad_value("size_prior", self.size_prior, "REF,POWER (two numbers) or empty")
        if len(self.fan_in_prior) not in (0, 2):
            _cfg.bad_value("fan_in_prior", self.fan_in_prior, "POWER,REF (two numbers) or empty")
        if self.orthogonal not in ("", "true", "false"):
            _cfg.bad_value("orthogonal", self.orthogonal, "true, false or empty (keep the source's)")
        if self.orthogonal_conv not in ("", "true", "false"):
            _cfg.bad_value("orthogonal_conv", self.orthogonal_conv, "true, false or empty (keep the source's)")
        if not (self.untold_horizon == -1 or (math.isfinite(self.untold_horizon) and self.untold_horizon >= 0)):
            _cfg.bad_value("untold_horizon", self.untold_horizon, "a number of steps >= 0 (0 removes the source's), "
                           "or -1 to keep it")
        if not (self.untold_growth == -1 or (math.isfinite(self.untold_growth) and self.untold_growth >= 0)):
            _cfg.bad_value("untold_growth", self.untold_growth, "a float >= 0, the least remaining steps per step "
                           "taken (0 removes the source's), or -1 to keep it")
        if self.threads < 0:
            _cfg.bad_value("threads", self.threads, "an integer >= 0 (0 keeps torch's default)")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: ``[--config FILE] src=SRC dst=DST [mag_clip=X] [mag_affine=SCALE,SHIFT]
    [size_prior=REF,POWER] [fan_in_prior=POWER,REF] [orthogonal=true|false] [orthogonal_conv=true|false]
    [untold_shift=D] [untold_horizon=T0] [untold_growth=G] [threads=1]``."""
    c = _cfg.parse_command(DeriveConfig, argv, "Copy a learned-update checkpoint with a new mag_clip (and "
                                               "optionally a re-centred log step multiplier).")
    if not (c.src and c.dst):
        raise ValueError("lopt-derive needs src=CHECKPOINT and dst=PATH")
    _cfg.set_threads(c.threads)
    affine = (c.mag_affine[0], c.mag_affine[1]) if c.mag_affine else None
    size = (c.size_prior[0], c.size_prior[1]) if c.size_prior else None
    fan = (c.fan_in_prior[0], c.fan_in_prior[1]) if c.fan_in_prior else None
    flag = {"": None, "true": True, "false": False}
    ortho, conv = flag[c.orthogonal], flag[c.orthogonal_conv]
    horizon = None if c.untold_horizon == -1 else c.untold_horizon
    growth = None if c.untold_growth == -1 else c.untold_growth
    derive(c.src, c.dst, c.mag_clip, affine, size, fan, ortho, conv, c.untold_shift, horizon, growth)
    extra = f", log step u -> {affine[0]:g} u + {affine[1]:g}" if affine else ""
    extra += f", lr x (N / {size[0]:g}) ** -{size[1]:g} above {size[0]:g} parameters" if size else ""
    extra += f", log step - {fan[0]:g} log(fan_in / {fan[1]:g})" if fan else ""
    if conv:
        extra += ", orthogonalized direction on 2-D weights and convolutions"
    else:
        extra += {None: "", True: ", orthogonalized direction on 2-D weights", False: ", Adam's direction"}[ortho]
        extra += ", convolutions in Adam's direction" if conv is False and ortho is not False else ""
    extra += f", untold log step + {c.untold_shift:g}" if c.untold_shift else ""
    if horizon is not None:
        extra += f", untold runs assume t + {horizon:g} steps" if horizon else ", no assumed untold horizon"
    if growth is not None:
        extra += f", untold runs assume at least {growth:g} t steps to go" if growth else ", no untold growth"
    clip = f"mag_clip={c.mag_clip}" if c.mag_clip else "its mag_clip"
    print(f"wrote {c.dst} ({c.src} with {clip}{extra})")


if __name__ == "__main__":
    main()
