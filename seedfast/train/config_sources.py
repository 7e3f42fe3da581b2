"""Where a run's settings come from: the stage's official defaults, then TOML tables (a shipped
preset, a file), then ``--set section.key=value`` overrides, merged in that order and checked
(type, range, choices; unknown keys get the closest name) into a :class:`RunConfig`.

A TOML file holds sections ``[tokenizer]``, ``[llm]``, ``[data]``, ``[optim]``, ``[train]``,
``[lora]``; a table ``[stageN.<section>]`` applies only when stage N runs, so one file can
describe all three stages::

    [tokenizer]
    preset = "tiny"            # SeedTokenizerConfig.tiny(); any of its fields may follow
    qformer_dropout = 0.0

    [stage2.optim]
    lr = 1e-4
"""
from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from seedfast._checks import is_int
from seedfast.train.config import (
    CAPTION_ORDERS,
    SECTION_CLASSES,
    SECTIONS,
    STAGE_DEFAULTS,
    STAGES,
    ConfigError,
    ModelSpec,
    RunConfig,
    model_config,
)

_CHOICES = {
    "data.caption_order": CAPTION_ORDERS,
    "optim.fused": ("auto", "on", "off"),
    "train.precision": ("auto", "bf16", "fp32"),
    "train.parallel": ("ddp", "fsdp"),
}


def preset_names() -> list[str]:
    """Names of the TOML presets shipped in ``seedfast/train/presets``."""
    return sorted(p.name.removesuffix(".toml") for p in _presets_dir().iterdir() if p.name.endswith(".toml"))


def _presets_dir() -> Any:
    # Package data of seedfast.train (pyproject: package-data "seedfast.train" = ["presets/*.toml"]).
    return resources.files("seedfast.train") / "presets"


def read_preset(name: str) -> dict[str, Any]:
    """The parsed TOML of preset ``name``.

    Raises
    ------
    ConfigError
        No such preset (the known ones are listed).
    """
    path = _presets_dir() / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(preset_names())}")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML config file.

    Raises
    ------
    ConfigError
        Missing file or invalid TOML (with the parser's position).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: invalid TOML: {err}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=1e-4"`` → ``("optim.lr", 1e-4)``; the value is read as TOML, else as a bare string.

    Raises
    ------
    ConfigError
        No ``=`` or no dotted key.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or "." not in key:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def build_config(
    stage: int,
    tables: Sequence[Mapping[str, Any]] = (),
    overrides: Iterable[str] = (),
) -> RunConfig:
    """Stage defaults, then each TOML table in order (with its ``[stageN.*]`` part), then ``--set``s.

    Parameters
    ----------
    stage : {1, 2, 3}
    tables : parsed TOML documents (a preset, a file)
    overrides : ``"section.key=value"`` strings

    Raises
    ------
    ConfigError
        Unknown section or key (closest names suggested), a value of the wrong type or out of range.
    """
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {STAGES}, got {stage!r}")
    merged: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for name, values in STAGE_DEFAULTS[stage].items():
        merged[name].update(values)
    for table in tables:
        _merge_table(merged, table, stage, where="config")
    for text in overrides:
        key, value = parse_override(text)
        section, _, name = key.partition(".")
        _merge_table(merged, {section: {name: value}}, stage, where="--set")
    return _build(stage, merged)


def _merge_table(merged: dict[str, dict[str, Any]], table: Mapping[str, Any], stage: int, where: str) -> None:
    for key, value in table.items():
        if key in {f"stage{s}" for s in STAGES}:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: [{key}] must be a table of sections")
            if key == f"stage{stage}":
                _merge_table(merged, value, stage, where=f"{where} [{key}]")
            continue
        if key not in SECTIONS:
            known = [*SECTIONS, *(f"stage{s}" for s in STAGES)]
            raise ConfigError(f"{where}: unknown section {key!r}{_suggest(key, known)}")
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: {key} must be a table, got {value!r}")
        merged[key].update(value)


def _build(stage: int, merged: dict[str, dict[str, Any]]) -> RunConfig:
    return RunConfig(
        stage=stage,
        tokenizer=_model_spec("tokenizer", merged["tokenizer"]),
        llm=_model_spec("llm", merged["llm"]),
        **{name: _section(name, cls, merged[name]) for name, cls in SECTION_CLASSES.items()},
    )


def _model_spec(name: str, values: dict[str, Any]) -> ModelSpec:
    values = dict(values)
    preset = values.pop("preset", "tiny")
    fields = _model_fields(name)
    for key in values:
        if key not in fields:
            raise ConfigError(f"unknown config key '{name}.{key}'{_suggest(key, fields)}")
    spec = ModelSpec(preset=preset, overrides=values)
    try:
        model_config(name, spec)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"[{name}]: {err}") from None
    return spec


def _model_fields(name: str) -> list[str]:
    if name == "tokenizer":
        from seedfast.models.tokenizer_config import SeedTokenizerConfig

        return [f.name for f in dataclasses.fields(SeedTokenizerConfig)]
    from seedfast.models.llama import LlamaConfig

    return [f.name for f in dataclasses.fields(LlamaConfig)]


def _section(name: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown config key '{name}.{key}'{_suggest(key, known)}")
        kwargs[key] = _coerce(f"{name}.{key}", hints[key], value)
    section = cls(**kwargs)
    _check_ranges(name, section)
    return section


def _coerce(key: str, hint: Any, value: Any) -> Any:
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = is_int(value)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    else:  # tuple[str, ...]
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    if not ok:
        expected = getattr(hint, "__name__", "list of strings")
        raise ConfigError(f"config key '{key}' must be {expected}, got {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"config key '{key}' must be one of {_CHOICES[key]}, got {value!r}")
    return value


def _check_ranges(name: str, section: Any) -> None:
    positive = {"data": ("image_size", "max_objects", "text_length", "max_words", "seq_len"),
                "optim": ("total_steps",),
                "train": ("global_batch", "ckpt_every", "keep_last"),
                "lora": ("r",)}.get(name, ())
    non_negative = {"data": ("train_size", "seed"),
                    "optim": ("lr", "min_lr", "warmup_lr", "warmup_steps", "weight_decay", "eps", "grad_clip"),
                    "train": ("micro_batch", "seed", "peak_tflops"),
                    "lora": ("alpha", "dropout")}.get(name, ())
    for key in positive:
        if getattr(section, key) <= 0:
            raise ConfigError(f"config key '{name}.{key}' must be positive, got {getattr(section, key)!r}")
    for key in non_negative:
        if getattr(section, key) < 0:
            raise ConfigError(f"config key '{name}.{key}' must be non-negative, got {getattr(section, key)!r}")
    if name == "optim" and not (0 <= section.beta1 < 1 and 0 <= section.beta2 < 1):
        raise ConfigError(f"optim.beta1 and optim.beta2 must be in [0, 1), got {section.beta1}, {section.beta2}")
    if name == "data" and not 0 <= section.caption_first_p <= 1:
        raise ConfigError(f"config key 'data.caption_first_p' must be in [0, 1], got {section.caption_first_p}")


def _suggest(key: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(choices)}"
