"""Rotary embedding of q and k plus the KV-cache write of one decode step, in one kernel.

A decode step's fused projection gives each row ``qkv [H + 2·Hkv heads, D]``. One program
takes ``BLOCK_H`` heads of one row: it reads the row's position ``p`` once, the rotary table
rows ``cos[p], sin[p]`` (float32, HF's "rotate half" layout of
:func:`seedfast.models.llama.rope_table`), rotates q and k heads in float32
(``x·cos + swap_halves(x)·sin``), and stores q heads to the output, k heads to
``k_cache[b, p]`` and v heads (unrotated) to ``v_cache[b, p]``. This replaces the gathers of
the table, the five kernels of the unfused rotation and the two ``index_put`` of the cache.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from seedfast.kernels._common import round_bf16
from seedfast.kernels._config import interpret_bf16


@triton.jit
def _rope_kv_write_kernel(
    qkv_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_cache_ptr, v_cache_ptr,
    stride_qkv_b, stride_cos, stride_sin, stride_q_b, stride_q_h,
    stride_k_b, stride_k_s, stride_k_h, stride_v_b, stride_v_s, stride_v_h,
    H, HKV,
    D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, INTERPRET_BF16: tl.constexpr,
):
    b = tl.program_id(0)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < D
    ok = (heads < H + 2 * HKV)[:, None] & dim_ok[None, :]
    # Rotate half: element d pairs with d + D/2 (mod D); the sign lives in the sin table.
    partner = tl.where(dims < D // 2, dims + D // 2, dims - D // 2)
    row = qkv_ptr + b.to(tl.int64) * stride_qkv_b + heads[:, None] * D
    x = tl.load(row + dims[None, :], mask=ok, other=0.0).to(tl.float32)
    x_swapped = tl.load(row + partner[None, :], mask=ok, other=0.0).to(tl.float32)
    p = tl.load(pos_ptr + b).to(tl.int64)
    c = tl.load(cos_ptr + p * stride_cos + dims, mask=dim_ok, other=0.0)
    s = tl.load(sin_ptr + p * stride_sin + dims, mask=dim_ok, other=0.0)
    rotated = x * c[None, :] + x_swapped * s[None, :]
    y = tl.where((heads < H + HKV)[:, None], rotated, x)
    y = round_bf16(y, INTERPRET_BF16)

    is_q = heads < H
    q_head = tl.where(is_q, heads, 0)
    tl.store(q_ptr + b.to(tl.int64) * stride_q_b + q_head[:, None] * stride_q_h + dims[None, :],
             y.to(q_ptr.dtype.element_ty), mask=ok & is_q[:, None])
    is_k = (heads >= H) & (heads < H + HKV)
    k_head = tl.where(is_k, heads - H, 0)
    k_row = k_cache_ptr + b.to(tl.int64) * stride_k_b + p * stride_k_s
    tl.store(k_row + k_head[:, None] * stride_k_h + dims[None, :], y.to(k_cache_ptr.dtype.element_ty),
             mask=ok & is_k[:, None])
    is_v = heads >= H + HKV
    v_head = tl.where(is_v, heads - H - HKV, 0)
    v_row = v_cache_ptr + b.to(tl.int64) * stride_v_b + p * stride_v_s
    tl.store(v_row + v_head[:, None] * stride_v_h + dims[None, :], y.to(v_cache_ptr.dtype.element_ty),
             mask=ok & is_v[:, None])


def launch_config(n_heads_total: int, head_dim: int) -> dict:
    """``BLOCK_H`` heads per program (about 2048 elements a tile) and the padded ``BLOCK_D``."""
    block_d = triton.next_power_of_2(head_dim)
    block_h = min(triton.next_power_of_2(n_heads_total), max(1, 2048 // block_d))
    return {"BLOCK_H": block_h, "BLOCK_D": block_d, "num_warps": 4}


def rope_kv_write_forward(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                          k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    """Launch on ``qkv [B, (H + 2·Hkv)·D]`` (unit stride in the last dim), float32 ``cos, sin [L, D]``
    (unit stride in D), ``positions [B]`` (int32/int64, contiguous) and caches ``[Bc, S, Hkv, D]``
    (unit stride in D, ``Bc >= B``), which are written in place. Returns q ``[B, H, D]``.
    """
    b = qkv.shape[0]
    hkv, d = k_cache.shape[2], k_cache.shape[3]
    h = qkv.shape[1] // d - 2 * hkv
    assert qkv.stride(1) == 1 and cos.stride(1) == 1 and sin.stride(1) == 1, "unit stride in D required"
    assert k_cache.stride(3) == 1 and v_cache.stride(3) == 1 and positions.is_contiguous()
    q = torch.empty((b, h, d), dtype=qkv.dtype, device=qkv.device)
    if b == 0:
        return q
    cfg = launch_config(h + 2 * hkv, d)
    grid = (b, triton.cdiv(h + 2 * hkv, cfg["BLOCK_H"]))
    _rope_kv_write_kernel[grid](
        qkv, cos, sin, positions, q, k_cache, v_cache,
        qkv.stride(0), cos.stride(0), sin.stride(0), q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        h, hkv,
        D=d, BLOCK_H=cfg["BLOCK_H"], BLOCK_D=cfg["BLOCK_D"], INTERPRET_BF16=interpret_bf16(qkv.dtype),
        num_warps=cfg["num_warps"],
    )
    return q
