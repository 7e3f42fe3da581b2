"""The training configuration: frozen dataclasses, filled from per-stage defaults, a TOML file
(``tomllib``) and ``--set section.key=value`` overrides, in that order.

A TOML file holds sections ``[tokenizer]``, ``[llm]``, ``[data]``, ``[optim]``, ``[train]``,
``[lora]``; a table ``[stageN.<section>]`` applies only when stage N runs, so one file can
describe all three stages::

    [tokenizer]
    preset = "tiny"            # SeedTokenizerConfig.tiny(); any of its fields may follow
    qformer_dropout = 0.0

    [stage2.optim]
    lr = 1e-4

The defaults of each stage are the official recipe (spec §10 for stages 1–2, §11.5 for stage 3).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from seedfast._checks import is_int

STAGES = (1, 2, 3)
PAPER_PAIRS = 5_000_000
"""Image–text pairs SEED's tokenizer was trained on (spec §10, seed ``000``)."""


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and what is wrong."""


@dataclass(frozen=True)
class ModelSpec:
    """A model: a preset constructor by name plus field overrides.

    Attributes
    ----------
    preset : str
        ``"tiny"`` or ``"official"`` for the tokenizer; ``"tiny"``, ``"seed-llama-8b"`` or
        ``"seed-llama-14b"`` for the LLM.
    overrides : dict
        Fields of :class:`~seedfast.models.tokenizer_config.SeedTokenizerConfig` or
        :class:`~seedfast.models.llama.LlamaConfig` to replace.
    """

    preset: str = "tiny"
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    """What the loop reads.

    Attributes
    ----------
    source : str
        ``"procedural"`` (the embedded dataset) or a folder / ``.jsonl`` of image–caption pairs
        (:func:`seedfast.data.open_image_captions`). Streams (``.tar``) go through
        ``--precompute-features`` first.
    features : str
        A folder written by ``--precompute-features``: stages 1–2 read the frozen encoder's
        output from it instead of running the ViT (``""``: run it).
    image_size : int
        Side the source's images are rendered or decoded at (then resized to the tokenizer's).
    train_size : int
        Samples in the procedural training split.
    max_objects : int
        Procedural scenes hold 1 to ``max_objects`` objects (1 or 2).
    seed : int
        Procedural dataset seed and shuffling seed.
    shuffle : bool
        A fresh permutation per epoch (else the source order).
    text_tokenizer : str
        ``"words"`` (:class:`seedfast.train.text.WordTokenizer`, the procedural grammar) or a
        Hugging Face tokenizer folder (``bert-base-uncased`` + ``[DEC]`` for stage 1, the
        SEED-LLaMA tokenizer for stage 3).
    text_length : int
        Stage 1: at most this many text tokens, ``[CLS]`` included (``max_txt_len`` 32).
    max_words : int
        Captions are cut to this many words after cleaning (spec §2: 50).
    seq_len : int
        Stage 3: sequence length (the caption pipe's 200).
    caption_first_p : float
        Stage 3: probability that the caption comes before the image (spec §11.5: 0.5).
    target : str
        Stage 2's target embedding: ``"stand-in"`` or ``"stand-in:G"`` (a fixed random
        projection of pixels pooled to ``G × G``, default 8,
        :class:`seedfast.train.targets.StandInTarget`) or ``"clip:DIR"`` (a Hugging Face
        ``CLIPVisionModelWithProjection``, e.g. OpenCLIP ViT-H/14). With ``features`` the
        targets come precomputed from there, and must have been made by this same target.
    tokenizer : str
        Stage 3: a SEED tokenizer folder (``SeedTokenizer.save``, or a stage-2 run's
        ``final/``) that turns images into codes; ``""`` builds a seeded fresh one (tests only).
    """

    source: str = "procedural"
    features: str = ""
    image_size: int = 64
    train_size: int = 1_000_000
    max_objects: int = 2
    seed: int = 0
    shuffle: bool = True
    text_tokenizer: str = "words"
    text_length: int = 32
    max_words: int = 50
    seq_len: int = 200
    caption_first_p: float = 0.5
    target: str = "stand-in"
    tokenizer: str = ""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and the learning-rate schedule (linear warm-up from ``warmup_lr`` to ``lr`` over
    ``warmup_steps``, then cosine to ``min_lr`` at ``total_steps``; constant ``min_lr`` after).

    ``total_steps`` fixes the schedule, independent of how far a run goes (``--steps``).
    ``fused``: ``"auto"`` (fused AdamW on CUDA), ``"on"`` or ``"off"``.
    """

    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_steps: int = 2000
    total_steps: int = 100_000
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 0.0
    fused: str = "auto"


@dataclass(frozen=True)
class TrainConfig:
    """How the loop runs.

    Attributes
    ----------
    global_batch : int
        Samples (sequences in stage 3) per optimizer step, over all processes.
    micro_batch : int
        Samples per process per forward; ``0``: ``global_batch / world_size`` (no accumulation).
        Accumulation steps = ``global_batch / (micro_batch · world_size)``.
    seed : int
        Model initialisation and every random stream (dropout) of the run.
    precision : str
        ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"bf16"`` or ``"fp32"``.
    activation_checkpointing : bool
        Recompute each transformer layer's activations in the backward pass.
    compile : bool
        ``torch.compile`` the model.
    parallel : str
        ``"ddp"`` or ``"fsdp"`` (FSDP2 ``fully_shard`` per LLM layer; stage 3 only) under torchrun.
    ckpt_every : int
        Steps between checkpoints (a checkpoint is also written at the end and on SIGTERM/SIGINT).
    keep_last : int
        Checkpoints kept.
    init : str
        Weights to start from: a SEED tokenizer folder (stages 1–2), a Hugging Face LLaMA folder
        (stage 3; a LoRA run's ``final/`` is one); ``""`` for a seeded random initialisation.
    gather_with_grad : bool
        Stage 1 under several processes: all-gather features with their gradient, so the
        result equals one process holding the whole batch; ``false`` is the official no-grad
        gather (spec §5), which drops the cross-process terms of the gradient.
    frozen_dropout : bool
        Stage 2: keep dropout on in the frozen Q-Former as the official code (its targets
        become noisy); ``false`` runs it in eval mode (the same as cached features).
    peak_tflops : float
        Peak dense throughput for MFU; ``0``: from the GPU's name.
    """

    global_batch: int = 256
    micro_batch: int = 0
    seed: int = 0
    precision: str = "auto"
    activation_checkpointing: bool = False
    compile: bool = False
    parallel: str = "ddp"
    ckpt_every: int = 1000
    keep_last: int = 3
    init: str = ""
    gather_with_grad: bool = True
    frozen_dropout: bool = False
    peak_tflops: float = 0.0


@dataclass(frozen=True)
class LoraConfig:
    """Stage 3's LoRA (spec §11.5: r 16, α 32, dropout 0.05 on q, k, v, o, gate, up, down;
    embeddings, LM head and norms fully trained). ``enabled = false`` is full fine-tuning.

    seedfast's LLaMA fuses q/k/v into ``wqkv`` and gate/up into ``w13``; their adapters get rank
    ``3r`` and ``2r`` (α scaled alike), whose update space contains the official separate
    rank-``r`` adapters.
    """

    enabled: bool = True
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("wqkv", "wo", "w13", "w2")
    trained: tuple[str, ...] = ("tok_embeddings", "output", "attention_norm", "ffn_norm", "norm")


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; see the module docstring for the file format."""

    stage: int
    tokenizer: ModelSpec = field(default_factory=ModelSpec)
    llm: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every setting (JSON-ready)."""
        out: dict[str, Any] = {"stage": self.stage}
        for name in SECTIONS:
            section = getattr(self, name)
            if isinstance(section, ModelSpec):
                out[f"{name}.preset"] = section.preset
                out.update({f"{name}.{k}": _jsonable(v) for k, v in sorted(section.overrides.items())})
            else:
                out.update({f"{name}.{f.name}": _jsonable(getattr(section, f.name))
                            for f in dataclasses.fields(section)})
        return out

    def to_json(self) -> str:
        return json.dumps(self.flat(), indent=1, sort_keys=True)


SECTIONS = ("tokenizer", "llm", "data", "optim", "train", "lora")
_SECTION_TYPES = {"data": DataConfig, "optim": OptimConfig, "train": TrainConfig, "lora": LoraConfig}
_CHOICES = {
    "optim.fused": ("auto", "on", "off"),
    "train.precision": ("auto", "bf16", "fp32"),
    "train.parallel": ("ddp", "fsdp"),
}
RESUMABLE_CHANGES = frozenset({
    "train.micro_batch", "train.compile", "train.activation_checkpointing", "train.ckpt_every",
    "train.keep_last", "train.peak_tflops", "data.features",
})
"""Settings a resumed run may change: they do not change what is trained, only how."""

# Official recipes (spec §10, §11.5); presets and files override them.
STAGE_DEFAULTS: dict[int, dict[str, dict[str, Any]]] = {
    1: {"optim": dict(lr=3e-5, min_lr=3e-6, warmup_lr=3e-7, warmup_steps=2000,
                      total_steps=10 * PAPER_PAIRS // 4096, beta1=0.9, beta2=0.999),
        "train": dict(global_batch=4096)},
    2: {"optim": dict(lr=1e-4, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=2000,
                      total_steps=500 * PAPER_PAIRS // 16384, beta1=0.9, beta2=0.999),
        "train": dict(global_batch=16384)},
    3: {"optim": dict(lr=1.5e-4, min_lr=7.5e-6, warmup_lr=0.0, warmup_steps=900, total_steps=30_000,
                      beta1=0.9, beta2=0.95, eps=1e-5, grad_clip=1.0),
        "train": dict(global_batch=512)},
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
        **{name: _section(name, cls, merged[name]) for name, cls in _SECTION_TYPES.items()},
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


def model_config(name: str, spec: ModelSpec) -> Any:
    """The :class:`SeedTokenizerConfig` (``name="tokenizer"``, training heads on) or
    :class:`LlamaConfig` (``name="llm"``) that ``spec`` describes."""
    if name == "tokenizer":
        from seedfast.models.tokenizer_config import SeedTokenizerConfig

        presets = {"tiny": SeedTokenizerConfig.tiny, "official": SeedTokenizerConfig.official}
        if spec.preset not in presets:
            raise ValueError(f"preset must be one of {sorted(presets)}, got {spec.preset!r}")
        return presets[spec.preset](**{"training_heads": True, **spec.overrides})
    from seedfast.models.llama import LlamaConfig

    base = LlamaConfig.from_name(spec.preset)
    return dataclasses.replace(base, **spec.overrides) if spec.overrides else base


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


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def differing_fields(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Settings that differ between two :meth:`RunConfig.flat` dicts, except :data:`RESUMABLE_CHANGES`,
    each as ``"key: saved → current"``."""
    out = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE_CHANGES:
            continue
        a, b = saved.get(key, "<unset>"), current.get(key, "<unset>")
        if a != b:
            out.append(f"{key}: {a!r} → {b!r}")
    return out
