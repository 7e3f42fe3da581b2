"""SwiGLU's elementwise half as one op: ``silu(gate) · up`` from the fused ``[gate | up]`` projection.

The input is ``x [..., 2·I]`` with ``gate = x[..., :I]`` and ``up = x[..., I:]`` (LLaMA's
``w13`` output, as ``chunk(2)`` splits it). The Triton kernel computes in float32 and rounds
once; the reference, ``F.silu(gate) * up``, rounds after the SiLU too, so in float16/bfloat16
the kernel is the closer of the two to the exact value.

An inference op: the Triton kernel has no backward. ``backend="auto"`` runs it on CUDA tensors
when no gradient is recorded, the reference otherwise (:mod:`seedfast.ops._inference`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from seedfast.ops._common import FLOATING, as_rows, check_tensor
from seedfast.ops._inference import resolve_inference_backend

# float64 runs on the reference only (the kernels take the three below).
DTYPES = (*FLOATING, torch.float64)


def silu_mul_reference(x: torch.Tensor) -> torch.Tensor:
    """Plain torch: ``F.silu(gate) * up``. Parameters and result as :func:`silu_mul`."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


@torch.library.custom_op("seedfast::silu_mul", mutates_args=())
def _silu_mul_op(x: torch.Tensor) -> torch.Tensor:
    from seedfast.kernels import silu_mul as kernel

    return kernel.silu_mul_forward(x)


@_silu_mul_op.register_fake
def _(x):
    return x.new_empty((x.shape[0], x.shape[1] // 2))


def silu_mul(x: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """``silu(x[..., :I]) · x[..., I:]``.

    Parameters
    ----------
    x : Tensor ``[..., 2·I]``, float32/float16/bfloat16 (float64: reference only)
    backend : {"auto", "triton", "torch"}

    Returns
    -------
    Tensor ``[..., I]`` in the dtype of ``x``

    Raises
    ------
    TypeError
        Not a tensor, or a dtype outside the list.
    ValueError
        An odd or zero last dimension, or an unusable backend.
    """
    op = "silu_mul"
    x = check_tensor(op, "x", x, min_ndim=1, dtypes=DTYPES)
    width = x.shape[-1]
    if width == 0 or width % 2:
        raise ValueError(f"{op}: x's last dim must be 2·I with I >= 1 (gate and up side by side), got {width}")
    chosen = resolve_inference_backend(op, backend, x.device, x, kernel_fits=x.dtype in FLOATING,
                                       why_not=f"takes float32/float16/bfloat16, got {x.dtype}")
    if chosen == "torch":
        return silu_mul_reference(x)
    return _silu_mul_op(as_rows(x)).view(*x.shape[:-1], width // 2)
