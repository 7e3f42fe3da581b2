"""Benchmark of a decode step's fused rotary embedding + KV-cache write (:func:`seedfast.ops.rope_kv_write`).

Implementations, all run in the same process on the same inputs:

* ``seedfast`` (ours): the public op with ``backend="auto"``, the Triton kernel on CUDA (the
  torch reference on CPU, where numbers claim nothing).
* ``torch``: :func:`~seedfast.ops.rope_kv_write.rope_kv_write_reference`, what a model runs
  without the op: gather the table rows, rotate q and k in float32, ``index_put`` k and v.
* ``torch-compile``: the same reference under ``torch.compile`` (CUDA only: on CPU the compile
  costs far more than the numbers could tell), the caches mutated in place as in the eager code.

Mode ``decode``: one token per row at SEED-LLaMA 8B's and 14B's head layouts (32 and 40 heads
of 128, no grouped kv heads), each row at its own position in a cache of ``S`` positions.
``Case.bytes`` is what the op must move: the fused projection read, q written, k and v written
into their slots, and each row's float32 ``cos``/``sin`` rows and position read; the rest of
the cache is never touched, so ``S`` changes nothing but the memory held.
"""
from __future__ import annotations

import torch

from seedfast.benchmarks.decode_ops import DTYPES, MODELS, compiled, decode_cases, eager, element_size
from seedfast.benchmarks.harness import Case, Impl
from seedfast.models.llama import rope_table
from seedfast.ops.rope_kv_write import rope_kv_write, rope_kv_write_reference

NAME = "rope_kv_write"
# Cache positions per row: rows are written at positions spread over it.
CACHE_LEN = 512


def case_for(b: int, model: str, dt: str) -> Case:
    """The case of ``b`` rows with ``model``'s heads (``"8b"``: 32 × 128, ``"14b"``: 40 × 128) in ``dt``."""
    c = MODELS[model]
    h, hkv, d = c.n_heads, c.n_kv_heads, c.head_dim
    elt = element_size(dt)
    # qkv read, then q, k and v written: (H + 2·Hkv)·D elements each way; cos, sin rows and the position.
    moved = 2 * b * (h + 2 * hkv) * d * elt + b * (2 * d * 4 + 4)
    return Case(NAME, "decode", {"B": b, "model": model, "H": h, "Hkv": hkv, "D": d, "S": CACHE_LEN, "dtype": dt},
                bytes=float(moved), size=b)


def cases(*, quick: bool, device: torch.device) -> list[Case]:
    """On CUDA, SEED-LLaMA 8B and 14B decode steps, B ∈ BATCHES, in bf16 (quick: B ∈ {1, 256});
    on CPU, fp32 regressions at the same head layouts (quick: 8B, B ∈ {1, 64})."""
    return decode_cases(case_for, quick=quick, device=device)


def make_inputs(case: Case, device: torch.device) -> dict[str, torch.Tensor]:
    """The op's arguments: ``qkv``, the model's rotary table ``cos``, ``sin`` over ``S`` positions,
    ``positions`` (int32, as :class:`~seedfast.models.kv_cache.KVCache` keeps them; random, each
    row in its own cache row) and zeroed caches ``k_cache``, ``v_cache``."""
    p = case.params
    g = torch.Generator(device="cpu").manual_seed(0)
    dtype = DTYPES[p["dtype"]]
    b, h, hkv, d, s = p["B"], p["H"], p["Hkv"], p["D"], p["S"]
    cos, sin = rope_table(MODELS[p["model"]], s, device)
    positions = torch.randint(0, s, (b,), generator=g).to(device=device, dtype=torch.int32)
    return {
        "qkv": torch.randn(b, (h + 2 * hkv) * d, generator=g).to(device=device, dtype=dtype),
        "cos": cos,
        "sin": sin,
        "positions": positions,
        "k_cache": torch.zeros(b, s, hkv, d, device=device, dtype=dtype),
        "v_cache": torch.zeros(b, s, hkv, d, device=device, dtype=dtype),
    }


impls = [
    Impl("seedfast", eager(rope_kv_write, make_inputs), ours=True),
    Impl("torch", eager(rope_kv_write_reference, make_inputs)),
    Impl("torch-compile", compiled(rope_kv_write_reference, make_inputs)),
]
