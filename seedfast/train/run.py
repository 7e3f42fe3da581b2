"""Everything a run builds once before its loop: the model and which weights train, the
objective, the optimizer, the data, the input pipeline and the FLOP count.

Building is deterministic (seeded from ``train.seed``), so a resumed run rebuilds exactly the
frozen weights of the first and only loads the trained ones from its checkpoint.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from seedfast.train import distributed as D
from seedfast.train.config import ConfigError, RunConfig, model_config
from seedfast.train.data import GlobalSampler, RawBatch, open_source
from seedfast.train.inputs import InputBuilder
from seedfast.train.metrics import llm_step_flops, tokenizer_step_flops
from seedfast.train.precision import autocast, compute_dtype
from seedfast.train.stages import (
    LlmObjective,
    TokenizerObjective,
    build_llm,
    build_tokenizer,
    checkpoint_methods,
)
from seedfast.train.targets import ClipTarget, build_target

NO_DECAY_SUBSTRINGS = ("bias", "ln", "bn")
"""LAVIS's rule (spec §10): no weight decay for 1-d tensors and names containing these."""


@dataclass
class Run:
    """A built run.

    Attributes
    ----------
    objective : the unwrapped loss module (state dicts are taken from it)
    model : what the loop calls: ``objective`` itself, or its DDP wrapper
    trained : the model whose weights the run trains (``SeedTokenizer`` or ``Llama``)
    optimizer : AdamW over the trained parameters
    read : step → this rank's raw micro-batches
    build_inputs : raw micro-batch → :class:`~seedfast.train.inputs.MicroBatch`
    sampler, data_size : the global sample order
    micro_batch, accum : per-process micro-batch and accumulation steps
    flops_per_sample : model FLOPs of one sample (sequence) of this stage, forward + backward
    autocast : a fresh autocast context per call
    features_kind : what the data holds instead of images (``"vit"``/``"causal"``) or None
    init_left : keys of ``train.init`` left at their seeded values
    """

    cfg: RunConfig
    info: D.DistInfo
    objective: nn.Module
    model: nn.Module
    trained: nn.Module
    optimizer: torch.optim.Optimizer
    read: Callable[[int], list[RawBatch]]
    build_inputs: InputBuilder
    sampler: GlobalSampler
    data_size: int
    micro_batch: int
    accum: int
    flops_per_sample: float
    autocast: Callable[[], Any]
    features_kind: str | None
    init_left: list[str]


def batch_split(cfg: RunConfig, world_size: int) -> tuple[int, int]:
    """``(micro_batch, accumulation steps)``.

    Raises
    ------
    ConfigError
        ``global_batch`` is not ``micro_batch · world_size · accum`` for a whole ``accum``.
    """
    g = cfg.train.global_batch
    micro = cfg.train.micro_batch or g // world_size
    if micro < 1 or g % (micro * world_size):
        raise ConfigError(f"train.global_batch ({g}) must be a multiple of train.micro_batch ({micro}) × "
                          f"world size ({world_size})")
    return micro, g // (micro * world_size)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trained parameters in two AdamW groups: with and without weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            skip = p.ndim < 2 or any(s in name for s in NO_DECAY_SUBSTRINGS)
            (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _frozen_to(module: nn.Module, dtype: torch.dtype) -> None:
    # Frozen weights in the compute dtype: autocast re-casts non-trainable weights on every call.
    for p in module.parameters():
        if not p.requires_grad:
            p.data = p.data.to(dtype)


def _source(cfg: RunConfig) -> tuple[Any, str | None]:
    if cfg.data.features:
        from seedfast.train.features import FeatureStore

        store = FeatureStore(cfg.data.features)
        return store, store.kind
    return open_source(cfg.data), None


def _check_features(cfg: RunConfig, store: Any, model: nn.Module) -> None:
    from seedfast.train.features import encoder_fingerprint

    where = cfg.data.features
    if store.kind == "vit" and cfg.stage == 3:
        raise ConfigError(f"{where} holds ViT features; stage 3 makes codes from causal (Q-Former) features "
                          "(precompute with --stage 2)")
    if store.kind == "causal" and cfg.stage == 1:
        raise ConfigError(f"{where} holds causal (Q-Former) features; stage 1 trains the Q-Former and needs "
                          "vit features (precompute with --stage 1)")
    if store.kind == "causal" and cfg.train.frozen_dropout:
        raise ConfigError("train.frozen_dropout needs the Q-Former to run; causal features were computed without "
                          "dropout")
    if cfg.stage == 2 and not store.has_target:
        raise ConfigError(f"{where} holds no stage-2 targets; precompute with --stage 2")
    if cfg.stage == 2 and store.meta.get("target") != cfg.data.target:
        raise ConfigError(f"{where} holds targets of {store.meta.get('target')!r}, the config asks for "
                          f"data.target = {cfg.data.target!r}")
    if store.meta["tokenizer"] != model.config.to_dict():
        raise ConfigError(f"{where} was computed with another tokenizer config")
    if store.meta["fingerprint"] != encoder_fingerprint(model, store.kind):
        raise ConfigError(f"{where} was computed by other frozen weights than this run's (fingerprint differs); "
                          "precompute again from this run's train.init")


def build_run(cfg: RunConfig, info: D.DistInfo, source: Any = None, features_kind: str | None = None) -> Run:
    """Build a run on this process's device.

    Parameters
    ----------
    source : optional
        Replaces the configured data (anything with ``__len__`` and ``read(indices)``; the budget
        measurement feeds synthetic batches this way).
    features_kind : {None, "vit", "causal"}
        What ``source`` yields instead of images.

    Raises
    ------
    ConfigError
        Inconsistent settings (batch split, features that do not fit the run, FSDP outside stage 3).
    """
    dev, stage = info.device, cfg.stage
    micro, accum = batch_split(cfg, info.world_size)
    dtype = compute_dtype(cfg, dev)
    if cfg.train.parallel == "fsdp" and stage != 3:
        raise ConfigError("train.parallel = 'fsdp' shards the LLM (stage 3); stages 1–2 use 'ddp'")
    stored = source is None and bool(cfg.data.features)
    if source is None:
        source, features_kind = _source(cfg)
    if stage in (1, 2):
        parts = _tokenizer_parts(cfg, info, dtype, features_kind, source if stored else None)
    else:
        parts = _llm_parts(cfg, dev, dtype, source if stored else None)
    trained, objective, builder, flops, shard, left = parts
    if cfg.train.compile:
        objective.compile()
    wrapped = D.wrap(objective, info, parallel=cfg.train.parallel, shard=shard)
    o = cfg.optim
    fused = o.fused == "on" or (o.fused == "auto" and dev.type == "cuda")
    optimizer = torch.optim.AdamW(param_groups(objective, o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2),
                                  eps=o.eps, fused=fused or None)
    sampler = GlobalSampler(len(source), cfg.train.global_batch, cfg.data.seed, cfg.data.shuffle)

    def read(step: int) -> list[RawBatch]:
        return [source.read(idx) for idx in sampler.micro_batches(step, info.rank, info.world_size, micro)]

    return Run(cfg=cfg, info=info, objective=objective, model=wrapped, trained=trained, optimizer=optimizer,
               read=read, build_inputs=builder, sampler=sampler, data_size=len(source), micro_batch=micro,
               accum=accum, flops_per_sample=flops, autocast=functools.partial(autocast, dev, dtype),
               features_kind=features_kind, init_left=left)


_Parts = tuple[nn.Module, nn.Module, InputBuilder, float, "list[nn.Module] | None", list[str]]
"""(trained model, objective, input builder, FLOPs per sample, modules to shard, init keys left)"""


def _tokenizer_parts(cfg: RunConfig, info: D.DistInfo, dtype: torch.dtype, features_kind: str | None,
                     store: Any) -> _Parts:
    from seedfast.train.text import load_text_tokenizer

    stage = cfg.stage
    model, left = build_tokenizer(cfg, stage)
    if store is not None:
        _check_features(cfg, store, model)
    tc = model.config
    model.train()
    if stage == 2 and not cfg.train.frozen_dropout:
        model.Qformer.eval()
    _frozen_to(model, dtype)
    model.to(info.device)
    if cfg.train.activation_checkpointing:
        if stage == 1:
            checkpoint_methods(list(model.Qformer.layers), ("forward_queries", "forward_text"))
        else:
            checkpoint_methods([*model.blocks, *model.blocks_image])
    gather = None
    if info.distributed and stage == 1:
        gather = D.gather_with_grad if cfg.train.gather_with_grad else D.gather_no_grad
    objective = TokenizerObjective(model, stage, gather=gather, gather_with_grad=cfg.train.gather_with_grad,
                                   rank=info.rank, features_kind=features_kind)
    target = None
    if stage == 2 and features_kind is None:
        target = build_target(cfg.data.target, tc.generation_embed_dim).to(info.device)
        if isinstance(target, ClipTarget):
            target.to(dtype)
    builder = InputBuilder(stage, info.device, image_size=tc.image_size, image_dtype=dtype,
                           vit_tokens=tc.num_patches + 1,
                           text=load_text_tokenizer(cfg.data.text_tokenizer) if stage == 1 else None,
                           text_length=cfg.data.text_length, max_words=cfg.data.max_words, target=target)
    flops = tokenizer_step_flops(tc, stage, text_length=cfg.data.text_length, features=features_kind)
    return model, objective, builder, flops, None, left


def _llm_parts(cfg: RunConfig, dev: torch.device, dtype: torch.dtype, store: Any) -> _Parts:
    model = build_llm(cfg)
    _frozen_to(model, dtype)
    model.to(dev)
    if cfg.train.activation_checkpointing:
        checkpoint_methods(list(model.layers))
    coder, vocab, text = _stage3_coding(cfg, dev, dtype, store)
    builder = InputBuilder(3, dev, image_size=coder.config.image_size, image_dtype=dtype,
                           vit_tokens=coder.config.num_patches + 1, text=text, max_words=cfg.data.max_words,
                           coder=coder, vocab=vocab, seq_len=cfg.data.seq_len,
                           caption_first_p=cfg.data.caption_first_p,
                           caption_order=cfg.data.caption_order, seed=cfg.data.seed)
    flops = llm_step_flops(model_config("llm", cfg.llm), cfg.data.seq_len, lora=cfg.lora.enabled,
                           lora_r=cfg.lora.r)
    return model, LlmObjective(model), builder, flops, list(model.layers), []


def _stage3_coding(cfg: RunConfig, dev: torch.device, dtype: torch.dtype, store: Any = None) -> tuple[Any, Any, Any]:
    """The frozen SEED tokenizer that makes codes, the vocabulary layout, the text tokenizer.

    With a feature ``store`` its causal features must come from this tokenizer's frozen encoder.
    """
    from seedfast.models.seed_llama import tiny_visual_vocab
    from seedfast.models.seed_llama_tokenizer import visual_vocab_from_tokenizer
    from seedfast.models.seed_tokenizer import SeedTokenizer
    from seedfast.train.text import HFTextTokenizer, load_text_tokenizer

    if cfg.data.tokenizer:
        coder = SeedTokenizer.load(cfg.data.tokenizer)
    else:
        torch.manual_seed(cfg.train.seed)
        coder = SeedTokenizer(model_config("tokenizer", cfg.tokenizer))
    if store is not None:  # before the cast, which would change the fingerprinted bytes
        _check_features(cfg, store, coder)
    coder = coder.eval().requires_grad_(False).to(dev, dtype)
    text = load_text_tokenizer(cfg.data.text_tokenizer)
    if isinstance(text, HFTextTokenizer):
        vocab = visual_vocab_from_tokenizer(text.tokenizer, num_codes=coder.config.codebook_size)
    else:
        vocab = tiny_visual_vocab()
    llm_vocab = model_config("llm", cfg.llm).vocab_size
    if vocab.num_codes != coder.config.codebook_size or vocab.min_vocab_size > llm_vocab:
        hint = ("; data.text_tokenizer = 'words' is the tiny layout, give the SEED-LLaMA tokenizer folder"
                if cfg.data.text_tokenizer == "words" else "")
        raise ConfigError(f"stage 3: the vocabulary layout ({vocab.num_codes} codes, {vocab.min_vocab_size} ids) does "
                          f"not fit the code tokenizer ({coder.config.codebook_size} codes) and the LLM "
                          f"({llm_vocab} ids){hint}")
    if text.vocab_size > vocab.text_vocab_size and not isinstance(text, HFTextTokenizer):
        raise ConfigError(f"stage 3: the text tokenizer has {text.vocab_size} ids, the LLM's text range is "
                          f"{vocab.text_vocab_size}")
    return coder, vocab, text
