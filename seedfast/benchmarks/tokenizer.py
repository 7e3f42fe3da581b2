"""Benchmark of the SEED tokenizer's ``encode`` (images → 32 codes) and of its Q-Former alone.

Implementations, the same model and weights, differing only in the Q-Former's attention (one
flag, :attr:`seedfast.models.qformer.CausalQFormer.attend`):

* ``seedfast``: :func:`seedfast.ops.qformer_attention` (the fused Triton kernel on CUDA);
* ``sdpa-mask``: SDPA with an explicit boolean mask (``qformer_attention="sdpa"``): SDPA everywhere;
* ``eager``: HF-BERT-style unfused attention, ``softmax(QKᵀ/√d + M)·V`` with the official
  ``-10000`` additive mask built as a tensor on every call, softmax in the activation dtype.

The ViT (SDPA) and the heads are shared by all three. Modes: ``encode`` (preprocessed images →
codes) and ``qformer`` (``ln_vision`` features ``[B, 257, 1408]`` → causal embeddings
``[B, 32, 768]``). Images per second = ``batch / median``. On a GPU: the official config in
bfloat16; on a CPU: the tiny config in float32, quick, for regressions only.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from seedfast.benchmarks.harness import Case, Impl
from seedfast.models.qformer import AttentionFn
from seedfast.models.seed_tokenizer import SeedTokenizer
from seedfast.models.tokenizer_config import NUM_QUERY_TOKENS, SeedTokenizerConfig

NAME = "tokenizer"
MASKED = -10000.0
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_CONFIGS = {"official": SeedTokenizerConfig.official, "tiny": SeedTokenizerConfig.tiny}


def qformer_flops(cfg: SeedTokenizerConfig) -> float:
    """Multiply-add FLOPs of the Q-Former for one image (queries only)."""
    lq, h, lv, cv = NUM_QUERY_TOKENS, cfg.qformer_hidden, cfg.num_patches + 1, cfg.vit_width
    per_layer = 2 * lq * h * h * 4 + 4 * lq * lq * h + 4 * lq * h * cfg.qformer_intermediate
    per_cross = 4 * lq * h * h + 4 * lv * cv * h + 4 * lq * lv * h
    n_cross = len(range(0, cfg.qformer_layers, cfg.cross_attention_freq))
    return float(cfg.qformer_layers * per_layer + n_cross * per_cross)


def encode_flops(cfg: SeedTokenizerConfig) -> float:
    """FLOPs of ``encode`` for one image: ViT, Q-Former, ``encode_task_layer``, code search."""
    n, c, m = cfg.num_patches + 1, cfg.vit_width, cfg.vit_mlp_dim
    patch = 2 * cfg.num_patches * 3 * cfg.patch_size ** 2 * c
    block = 2 * n * c * 3 * c + 4 * n * n * c + 2 * n * c * c + 4 * n * c * m
    lq, h = NUM_QUERY_TOKENS, cfg.qformer_hidden
    heads = 2 * lq * (h * h + h * cfg.code_dim) + 2 * lq * cfg.codebook_size * cfg.code_dim
    return float(patch + cfg.vit_depth * block + qformer_flops(cfg) + heads)


def eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, kv_lens: torch.Tensor | None = None
) -> torch.Tensor:
    """The official BERT attention: materialised scores, additive ``-10000`` mask, softmax, ``@ v``."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    lq, lk = q.shape[-2], k.shape[-2]
    if causal or kv_lens is not None:
        keep = torch.ones(q.shape[0], 1, lq, lk, device=q.device, dtype=q.dtype)
        if causal:
            keep = keep * torch.ones(lq, lk, device=q.device, dtype=q.dtype).tril()
        if kv_lens is not None:
            key_ok = torch.arange(lk, device=q.device)[None, :] < kv_lens[:, None]
            keep = keep * key_ok[:, None, None, :].to(q.dtype)
        scores = scores + (1.0 - keep) * MASKED
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def cases(*, quick: bool, device: torch.device) -> list[Case]:
    """Official config, bf16, batch 256 (and 64) on CUDA; tiny config, fp32, batch 4 (and 16) on CPU."""
    if device.type == "cuda":
        config, dtype, batches = "official", "bf16", [256] if quick else [64, 256]
    else:
        config, dtype, batches = "tiny", "fp32", [4] if quick else [4, 16]
    cfg = _CONFIGS[config]()
    out = []
    for mode, flops in (("encode", encode_flops(cfg)), ("qformer", qformer_flops(cfg))):
        for b in batches:
            out.append(Case(NAME, mode, {"batch": b, "config": config, "dtype": dtype}, flops=flops * b, size=b))
    return out


def build_model(config: str, dtype: torch.dtype, device: torch.device, attention: str) -> SeedTokenizer:
    """Random-weight tokenizer (seed 0, so every implementation has the same weights), eval mode."""
    cfg = _CONFIGS[config](qformer_attention=attention)
    with torch.device("meta"):
        model = SeedTokenizer(cfg)
    model.to_empty(device=device)
    torch.manual_seed(0)
    model.reset_parameters()
    return model.to(dtype).eval()


def _builder(attention: str, attend: AttentionFn | None = None) -> Callable[[Case, torch.device], Callable[[], object]]:
    def build(case: Case, device: torch.device) -> Callable[[], object]:
        p = case.params
        dtype = _DTYPES[p["dtype"]]
        model = build_model(p["config"], dtype, device, attention)
        if attend is not None:
            model.Qformer.attend = attend
        cfg = model.config
        g = torch.Generator(device="cpu").manual_seed(1)
        if case.mode == "encode":
            images = torch.randn(p["batch"], 3, cfg.image_size, cfg.image_size, generator=g).to(device, dtype)

            def run():
                with torch.inference_mode():
                    return model.encode(images)
        else:
            feats = torch.randn(p["batch"], cfg.num_patches + 1, cfg.vit_width, generator=g).to(device, dtype)

            def run():
                with torch.inference_mode():
                    return model.Qformer(model.query_tokens, feats)
        return run
    return build


impls = [
    Impl("seedfast", _builder("fused"), ours=True),
    Impl("sdpa-mask", _builder("sdpa")),
    Impl("eager", _builder("fused", eager_attention)),
]
