"""``seedfast budget``: what training the SEED tokenizer costs with seedfast, against the paper.

The paper (spec §10, seed ``000``): 5.7 days on 64 V100s = 364.8 V100-days for the tokenizer, on
5M image–text pairs. The repo's recipe: stage 1 for 10 epochs, stage 2 for 500 epochs.

From measured throughput (seconds per training sample on one GPU, per *mode*) the budget
projects two plans over ``pairs × epochs`` samples:

* ``online`` (the official way): the frozen ViT runs in every step of both stages;
* ``cached`` (seedfast's way): the ViT runs once per image (``vit`` features for stage 1),
  the frozen stage-1 Q-Former once per image (``causal`` features for stage 2), and the epochs
  read the features.

Modes: ``stage1-online``, ``stage1-vit``, ``stage2-online``, ``stage2-causal``. A mode that was not
measured is derived from a measured one at the same achieved FLOP rate (model FLOPs from
:mod:`seedfast.train.metrics`); the cost of a precompute pass is the difference between the
online and the cached step of its stage. GPU-days are single-GPU time (linear scaling over
GPUs assumed). They are converted to V100-days by stated peak tensor throughput (V100: 125
TFLOP/s fp16) and, when a V100 measurement is given as reference, by measured throughput.

The arithmetic takes plain :class:`Measurement` records: :func:`from_log` reads one from a
training run's log; :mod:`seedfast.benchmarks.train_step` times steps on this device and reads
its results JSON back; the command itself is in :mod:`seedfast.benchmarks.cli`.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from seedfast.models.tokenizer_config import SeedTokenizerConfig
from seedfast.train.config import PAPER_PAIRS
from seedfast.train.metrics import V100_PEAK_TFLOPS, peak_tflops, tokenizer_step_flops

PAPER_V100_DAYS = 5.7 * 64
"""SEED v1's reported tokenizer training cost: 5.7 days on 64 V100s (spec §10, §12)."""
STAGE1_EPOCHS, STAGE2_EPOCHS = 10, 500
"""Epochs of the repo's configs (spec §10)."""
TEXT_LENGTH = 32
MODES = ("stage1-online", "stage1-vit", "stage2-online", "stage2-causal")
_FEATURES = {"stage1-online": None, "stage1-vit": "vit", "stage2-online": None, "stage2-causal": "causal"}
GOAL_FRACTION = 0.25
"""Issue 8's goal: the projected budget at most a quarter of the paper's, in V100-equivalent days."""


def mode_flops(config: SeedTokenizerConfig, mode: str, text_length: int = TEXT_LENGTH) -> float:
    """Model FLOPs of one training sample in ``mode`` at ``config``'s sizes."""
    return tokenizer_step_flops(config, int(mode[5]), text_length=text_length, features=_FEATURES[mode])


@dataclass(frozen=True)
class Measurement:
    """One measured mode: seconds per sample on one GPU, and the model FLOPs of that sample.

    ``flops_per_sample`` is at the sizes that were measured (the tiny config on a CPU, say), so
    ``flops_per_sample / seconds_per_sample`` is the achieved FLOP rate.
    """

    mode: str
    seconds_per_sample: float
    flops_per_sample: float
    device: str
    source: str
    config: str = "official"

    @property
    def flop_rate(self) -> float:
        return self.flops_per_sample / self.seconds_per_sample


@dataclass
class Plan:
    """A plan's phases ``(name, samples, seconds per sample)`` and its total."""

    name: str
    phases: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(n * s for _, n, s in self.phases)

    @property
    def gpu_days(self) -> float:
        return self.seconds / 86400.0


@dataclass
class Budget:
    """Projected plans on the measured device (and on a reference device, if one was measured)."""

    device: str
    peak_tflops: float | None
    measured: list[Measurement]
    plans: list[Plan]
    reference: list[Plan] | None
    reference_device: str | None
    notes: list[str]
    pairs: int
    epochs: tuple[int, int]
    paper_flops: float

    def v100_days_by_peak(self, plan: Plan) -> float | None:
        """``GPU-days × peak(device) / 125``: V100-days at equal fraction of peak."""
        return None if not self.peak_tflops else plan.gpu_days * self.peak_tflops / V100_PEAK_TFLOPS

    @property
    def paper_implied_mfu(self) -> float:
        """MFU the paper's 364.8 V100-days imply for the online plan's model FLOPs."""
        return self.paper_flops / (PAPER_V100_DAYS * 86400.0 * V100_PEAK_TFLOPS * 1e12)


def seconds_per_sample(measured: dict[str, Measurement], mode: str, target_flops: float,
                       notes: list[str]) -> float:
    """Seconds per sample of ``mode`` at the target sizes: measured FLOP rate of the mode, or of
    the measured mode whose FLOPs are closest (noted)."""
    if mode in measured:
        return target_flops / measured[mode].flop_rate
    nearest = min(measured.values(), key=lambda m: abs(m.flops_per_sample - target_flops))
    notes.append(f"{mode}: not measured; derived from {nearest.mode} at its FLOP rate "
                 f"({nearest.flop_rate / 1e12:.3g} TFLOP/s)")
    return target_flops / nearest.flop_rate


def plans(measured: dict[str, Measurement], config: SeedTokenizerConfig, pairs: int, epochs: tuple[int, int],
          notes: list[str]) -> list[Plan]:
    """The ``online`` and ``cached`` plans from per-mode measurements (see the module docstring)."""
    t = {m: seconds_per_sample(measured, m, mode_flops(config, m), notes) for m in MODES}
    e1, e2 = epochs
    online = Plan("online", [("stage 1, ViT every step", pairs * e1, t["stage1-online"]),
                             ("stage 2, ViT + Q-Former every step", pairs * e2, t["stage2-online"])])
    cached = Plan("cached", [
        ("ViT features, once", pairs, max(t["stage1-online"] - t["stage1-vit"], 0.0)),
        ("stage 1 from ViT features", pairs * e1, t["stage1-vit"]),
        ("causal features + targets, once", pairs, max(t["stage2-online"] - t["stage2-causal"], 0.0)),
        ("stage 2 from causal features", pairs * e2, t["stage2-causal"]),
    ])
    return [online, cached]


def _positive_finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def check_inputs(pairs: int, epochs: tuple[int, int], peak: float | None) -> None:
    """Refuse a budget's data size, epochs or peak that would project nonsense (negative days).

    Parameters
    ----------
    pairs : int
        Image-text pairs, at least 1.
    epochs : (int, int)
        Stage-1 and stage-2 epochs, each at least 0, not both 0.
    peak : float or None
        The device's peak TFLOP/s, positive and finite; None looks it up by name.

    Raises
    ------
    ValueError
        Naming the argument, what was expected and what was given.
    """
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise ValueError(f"pairs must be a positive integer, got {pairs!r}")
    if (not isinstance(epochs, (tuple, list)) or len(epochs) != 2
            or any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in epochs) or not any(epochs)):
        raise ValueError(f"epochs must be two non-negative integers (stage 1, stage 2), not both 0, got {epochs!r}")
    if peak is not None and not _positive_finite(peak):
        raise ValueError(f"peak must be a positive finite TFLOP/s, got {peak!r}")


def compute_budget(measured: list[Measurement], *, config: SeedTokenizerConfig | None = None,
                   pairs: int = PAPER_PAIRS, epochs: tuple[int, int] = (STAGE1_EPOCHS, STAGE2_EPOCHS),
                   reference: list[Measurement] | None = None, peak: float | None = None) -> Budget:
    """Project the tokenizer's training cost.

    Parameters
    ----------
    measured : measurements on the device to budget (one device)
    config : sizes to budget for (default the official tokenizer)
    pairs, epochs : data size and (stage 1, stage 2) epochs
    reference : optional measurements on a V100 (the paper's GPU)
    peak : the device's peak TFLOP/s (default from its name)

    Raises
    ------
    ValueError
        No measurement, measurements from several devices, a measurement whose seconds or FLOPs
        per sample are not positive and finite, ``pairs`` below 1, ``epochs`` not two
        non-negative integers with at least one positive, or ``peak`` not positive and finite.
    """
    check_inputs(pairs, epochs, peak)
    if not measured:
        raise ValueError("no throughput measurement to budget from")
    for m in [*measured, *(reference or [])]:
        if not (_positive_finite(m.seconds_per_sample) and _positive_finite(m.flops_per_sample)):
            raise ValueError(f"{m.source}: {m.mode} measured {m.seconds_per_sample!r} s and {m.flops_per_sample!r} "
                             "FLOPs per sample; expected positive finite numbers")
    devices = {m.device for m in measured}
    if len(devices) != 1:
        raise ValueError(f"measurements come from several devices {sorted(devices)}; budget one at a time")
    config = config or SeedTokenizerConfig.official(training_heads=True)
    notes: list[str] = []
    device = devices.pop()
    for m in [*measured, *(reference or [])]:
        if m.config != "official":
            notes.append(f"{m.mode} on {m.device} was measured at the {m.config} config's sizes: the official "
                         "sizes' times are extrapolated at that FLOP rate (a smoke test, not a claim)")
    own = plans({m.mode: m for m in measured}, config, pairs, epochs, notes)
    ref_plans, ref_device = None, None
    if reference:
        ref_device = reference[0].device
        ref_plans = plans({m.mode: m for m in reference}, config, pairs, epochs, notes)
    paper_flops = pairs * (epochs[0] * mode_flops(config, "stage1-online")
                           + epochs[1] * mode_flops(config, "stage2-online"))
    return Budget(device=device, peak_tflops=peak if peak is not None else peak_tflops(device),
                  measured=list(measured), plans=own,
                  reference=ref_plans, reference_device=ref_device, notes=notes, pairs=pairs, epochs=epochs,
                  paper_flops=paper_flops)


def format_budget(b: Budget) -> str:
    """The report ``seedfast budget`` prints: assumptions first, then each plan against the paper."""
    lines = ["assumptions:",
             f"  data: {b.pairs:,} image-text pairs; stage 1 {b.epochs[0]} epochs, stage 2 {b.epochs[1]} epochs "
             "(spec §10 configs)",
             f"  paper: 5.7 days x 64 V100 = {PAPER_V100_DAYS:.1f} V100-days (SEED v1, seed 000)",
             f"  model FLOPs of the online plan: {b.paper_flops:.3e} (forward + backward where weights or inputs "
             "need gradients; frozen ViT forward only)",
             f"  the paper's V100-days imply {100 * b.paper_implied_mfu:.1f}% MFU on V100 (125 TFLOP/s fp16) "
             "for those FLOPs",
             "  GPU-days = single-GPU seconds / 86400 (linear scaling over GPUs assumed)",
             f"  peak of {b.device}: " + (f"{b.peak_tflops:g} TFLOP/s (dense bf16)" if b.peak_tflops
                                          else "unknown: no conversion by peak"),
             "  V100-equivalent by peak = GPU-days x peak / 125",
             "  cached plan: features fix each image's pixels (the official random crop/flip is not "
             "re-drawn per epoch)"]
    lines += [f"  {n}" for n in b.notes]
    lines.append(f"measured on {b.device}:")
    for m in b.measured:
        util = f", MFU {100 * m.flop_rate / (b.peak_tflops * 1e12):.1f}%" if b.peak_tflops else ""
        lines.append(f"  {m.mode:<14} ({m.config}) {1e3 * m.seconds_per_sample:.4f} ms/sample, "
                     f"{m.flop_rate / 1e12:.2f} TFLOP/s{util}")
    lines.append("")
    for i, plan in enumerate(b.plans):
        lines.append(f"plan {plan.name} on {b.device}:")
        for name, n, s in plan.phases:
            lines.append(f"  {name:<36} {n:>14,.0f} samples x {1e3 * s:9.4f} ms = {n * s / 86400:10.2f} GPU-days")
        lines.append(f"  total {plan.gpu_days:.2f} GPU-days")
        v100 = b.v100_days_by_peak(plan)
        if v100 is not None:
            frac = v100 / PAPER_V100_DAYS
            verdict = "meets" if frac <= GOAL_FRACTION else "misses"
            lines.append(f"  V100-equivalent by peak: {v100:.1f} V100-days = {frac:.3f} x paper "
                         f"({PAPER_V100_DAYS / v100:.1f}x less; {verdict} the <= {GOAL_FRACTION} goal)")
        if b.reference is not None:
            ref = b.reference[i]
            lines.append(f"  V100-equivalent by measured throughput on {b.reference_device}: {ref.gpu_days:.1f} "
                         f"V100-days = {ref.gpu_days / PAPER_V100_DAYS:.3f} x paper")
    return "\n".join(lines)


def from_log(path: str | Path, skip: int = 3) -> list[Measurement]:
    """The median step of a training run's ``log.jsonl`` (the first ``skip`` steps left out: warm-up).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a stage 1–2 run log (not UTF-8 text, a line that is not a JSON object, a start
        record without its fields), or too few steps; the message names the file.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (expected a run's log.jsonl)") from None
    start, times = None, []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {number} is not JSON ({err})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: line {number} is not a JSON object")
        if rec.get("event") == "start":
            start, times = rec, []
        elif "step_time_s" in rec:
            times.append(rec["step_time_s"])
    if start is None or start.get("stage") not in (1, 2):
        raise ValueError(f"{path}: not the log of a stage-1 or stage-2 run")
    if len(times) <= skip:
        raise ValueError(f"{path}: {len(times)} steps logged; need more than {skip} (the first are warm-up)")
    try:
        return _log_measurement(path, start, times, skip)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: the start record lacks a usable field ({err!r})") from None


def _log_measurement(path: str | Path, start: dict, times: list[float], skip: int) -> list[Measurement]:
    """The measurement of a log's ``start`` record and step times (raises ``KeyError`` for a missing field)."""
    c = start["config"]
    mode = f"stage{start['stage']}-{start.get('features') or 'online'}"
    cfg = tokenizer_config(c["tokenizer.preset"], {k.split(".", 1)[1]: v for k, v in c.items()
                                                   if k.startswith("tokenizer.") and k != "tokenizer.preset"})
    per_sample = statistics.median(times[skip:]) * start["world_size"] / c["train.global_batch"]
    return [Measurement(mode, per_sample, mode_flops(cfg, mode, c["data.text_length"]), start["device"], str(path),
                        c["tokenizer.preset"])]


def tokenizer_config(preset: str, overrides: dict | None = None) -> SeedTokenizerConfig:
    """The sizes a measurement was taken at: tokenizer ``preset`` (training heads on) with ``overrides``.

    Raises
    ------
    ValueError
        An unknown preset.
    """
    presets = {"official": SeedTokenizerConfig.official, "tiny": SeedTokenizerConfig.tiny}
    if preset not in presets:
        raise ValueError(f"unknown tokenizer config {preset!r}; expected one of {sorted(presets)}")
    over = {k: tuple(v) if isinstance(v, list) else v for k, v in (overrides or {}).items()}
    return presets[preset](**{"training_heads": True, **over})
