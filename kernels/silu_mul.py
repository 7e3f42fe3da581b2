"""SwiGLU's elementwise half in one kernel: ``silu(gate) · up`` from the fused ``[gate | up]`` projection.

Each program covers ``BLOCK`` columns of one row: it reads ``gate = x[:, :I]`` and
``up = x[:, I:]`` and writes ``out [M, I]`` with one rounding, computing in float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from seedfast.kernels._common import round_bf16
from seedfast.kernels._config import interpret_bf16


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, stride_x, stride_out, I, BLOCK: tl.constexpr, INTERPRET_BF16: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < I
    gate = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + I + cols, mask=ok, other=0.0).to(tl.float32)
    y = round_bf16(gate / (1.0 + tl.exp(-gate)) * up, INTERPRET_BF16)
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=ok)


def launch_config(i: int) -> dict:
    """Up to 1024 columns a program (4 warps, 8 elements a thread)."""
    return {"BLOCK": min(1024, triton.next_power_of_2(i)), "num_warps": 4}


def silu_mul_forward(x: torch.Tensor) -> torch.Tensor:
    """Launch on rows ``x [M, 2·I]`` (unit stride in the last dim). Returns ``out [M, I]``."""
    m, two_i = x.shape
    i = two_i // 2
    assert x.stride(1) == 1, "unit stride in the last dim required"
    out = torch.empty((m, i), dtype=x.dtype, device=x.device)
    if m == 0 or i == 0:
        return out
    cfg = launch_config(i)
    _silu_mul_kernel[(m, triton.cdiv(i, cfg["BLOCK"]))](
        x, out, x.stride(0), out.stride(0), i,
        BLOCK=cfg["BLOCK"], INTERPRET_BF16=interpret_bf16(x.dtype), num_warps=cfg["num_warps"],
    )
    return out
