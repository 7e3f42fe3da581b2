"""Residual add + RMSNorm in one kernel: ``s = residual + x`` and ``rms_norm(s) · weight``.

One program per row holds the whole row (``BLOCK_N >= N``) in registers: it reads ``x`` and
``residual`` once, stores the sum rounded to the input dtype (the new residual stream) and
normalises that rounded sum in float32, as ``F.rms_norm`` does on the unfused path, so the two
paths differ only in the order of the sum of squares.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from seedfast.kernels._common import round_bf16
from seedfast.kernels._config import interpret_bf16



@triton.jit
def _add_rms_norm_kernel(
    x_ptr, r_ptr, w_ptr, out_ptr, sum_ptr,
    stride_x, stride_r, stride_out, stride_sum, N, eps,
    BLOCK_N: tl.constexpr, INTERPRET_BF16: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    ok = cols < N
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + row * stride_r + cols, mask=ok, other=0.0).to(tl.float32)
    s = round_bf16(r + x, INTERPRET_BF16).to(sum_ptr.dtype.element_ty)
    tl.store(sum_ptr + row * stride_sum + cols, s, mask=ok)
    s = s.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(s * s, axis=0) / N + eps)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    y = round_bf16(s * inv_rms * w, INTERPRET_BF16)
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=ok)


def launch_config(n: int) -> dict:
    """The whole row in one tile; more warps for wider rows (about 8 elements a thread)."""
    block_n = triton.next_power_of_2(n)
    return {"BLOCK_N": block_n, "num_warps": min(16, max(1, block_n // 256))}


def add_rms_norm_forward(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                         eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch on rows ``x, residual [M, N]`` (unit stride in N, one dtype) and ``weight [N]``
    (contiguous). Returns ``(normed [M, N], summed [M, N])`` in the input dtype.
    """
    m, n = x.shape
    assert x.stride(1) == 1 and residual.stride(1) == 1 and weight.is_contiguous()
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    summed = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out, summed
    cfg = launch_config(n)
    _add_rms_norm_kernel[(m,)](
        x, residual, weight, out, summed,
        x.stride(0), residual.stride(0), out.stride(0), summed.stride(0), n, eps,
        BLOCK_N=cfg["BLOCK_N"], INTERPRET_BF16=interpret_bf16(x.dtype), num_warps=cfg["num_warps"],
    )
    return out, summed
