"""Launch-time helpers shared by the Triton kernels."""
from __future__ import annotations

import os

import torch
import triton


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def autotune_configs(gpu_configs: list[triton.Config], interpreter_config: triton.Config) -> list[triton.Config]:
    """The configs to autotune over: several on a GPU, exactly one under the interpreter.

    Triton's autotuner benchmarks with CUDA events, which the interpreter does not have, so
    interpreted runs get a single config (with large tiles, which numpy runs fastest).
    """
    return [interpreter_config] if interpreting() else gpu_configs


def interpret_bf16(dtype: torch.dtype) -> bool:
    """Whether a kernel must work around the interpreter's bf16 bugs for this dtype: its bf16
    ``tl.dot`` is wrong and its fp32 → bf16 conversion truncates. Kernels then cast dot
    operands to fp32 and round with :func:`kernels._common.round_bf16` before storing."""
    return interpreting() and dtype == torch.bfloat16


def fp32_dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` for ``tl.dot``: fp32 operands use 3xTF32, which keeps near-fp32
    accuracy on tensor cores (plain TF32 would flip near-tie nearest codes); other dtypes ignore it."""
    return "tf32x3" if dtype == torch.float32 else "ieee"
