"""The training configuration: one frozen dataclass per section of a run's settings, the
official per-stage defaults (spec §10 for stages 1–2, §11.5 for stage 3), the model configs a
:class:`RunConfig` describes, and which settings a resumed run may change.

Filling a :class:`RunConfig` from those defaults, presets, TOML files and ``--set`` overrides is
:mod:`seedfast.train.config_sources`.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
        output from it instead of running the ViT (``""``: run it); stage 3 reads causal
        (stage-2) features of its ``tokenizer``'s own frozen encoder and only quantises them.
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
    caption_order : str
        Stage 3, rows with the image first (captioning): ``"given"`` keeps each caption as the
        source gives it (spec §11.5); ``"reading"`` restates a caption of the procedural grammar
        in reading order, top or left object first
        (:func:`seedfast.data.reading_order_caption`), so that a two-object image has one right
        caption instead of two. Rows with the caption first (text→image) keep it as given, so
        either order still prompts an image; text outside the grammar is always kept as given.
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
    caption_order: str = "given"
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
    """Everything one training run needs (the file format: :mod:`seedfast.train.config_sources`)."""

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


CAPTION_ORDERS = ("given", "reading")
"""Values of ``data.caption_order``."""
SECTIONS = ("tokenizer", "llm", "data", "optim", "train", "lora")
SECTION_CLASSES = {"data": DataConfig, "optim": OptimConfig, "train": TrainConfig, "lora": LoraConfig}
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


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def differing_fields(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Settings that differ between two :meth:`RunConfig.flat` dicts, except :data:`RESUMABLE_CHANGES`,
    each as ``"key: saved → current"``.

    A ``data``/``optim``/``train``/``lora`` key that ``saved`` lacks counts as its field's
    default: the setting was added after that checkpoint was written, and its default is what
    the code did before it existed.
    """
    added = {f"{name}.{f.name}": _jsonable(f.default) for name, section in SECTION_CLASSES.items()
             for f in dataclasses.fields(section) if f.default is not dataclasses.MISSING}
    out = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE_CHANGES:
            continue
        a, b = saved.get(key, added.get(key, "<unset>")), current.get(key, "<unset>")
        if a != b:
            out.append(f"{key}: {a!r} → {b!r}")
    return out
