"""Residual add + RMSNorm as one op: ``s = residual + x``, ``y = s / rms(s) · weight``.

Returns both ``y`` (the next sublayer's input) and ``s`` (the new residual stream). ``s`` is
rounded to the input dtype first and ``y`` is computed from that rounded sum in float32 and
rounded once, exactly as ``residual + x`` followed by ``F.rms_norm`` computes it, so the fused
and unfused paths differ only in the order of the sum of squares.

An inference op: the Triton kernel has no backward. ``backend="auto"`` runs it on CUDA tensors
when no gradient is recorded and the inputs share one dtype, the reference otherwise
(:mod:`seedfast.ops._inference`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from seedfast.ops._common import FLOATING, as_rows, check_same_device, check_tensor
from seedfast.ops._inference import resolve_inference_backend

# float64 runs on the reference only (the kernels take the three below).
DTYPES = (*FLOATING, torch.float64)

# The kernel holds a whole row in registers: wider rows take the reference.
MAX_N = 65536


def add_rms_norm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch: ``residual + x``, then ``F.rms_norm``. Parameters and results as :func:`add_rms_norm`."""
    summed = residual + x
    return F.rms_norm(summed, (summed.shape[-1],), weight, eps), summed


@torch.library.custom_op("seedfast::add_rms_norm", mutates_args=())
def _add_rms_norm_op(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    from seedfast.kernels import add_rms_norm as kernel

    return kernel.add_rms_norm_forward(x, residual, weight, eps)


@_add_rms_norm_op.register_fake
def _(x, residual, weight, eps):
    return torch.empty_like(x), torch.empty_like(x)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, *,
                 backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Add a sublayer's output to the residual stream and RMS-normalise the sum.

    Parameters
    ----------
    x, residual : Tensor ``[..., N]``, floating, one shape
        The sublayer output and the residual stream. The Triton backend needs one dtype for
        both and ``weight``, among float32/float16/bfloat16; the reference promotes as
        ``residual + x`` does (``"auto"`` takes it for mixed dtypes and float64).
    weight : Tensor ``[N]``, floating
    eps : float, > 0
    backend : {"auto", "triton", "torch"}

    Returns
    -------
    normed : Tensor ``[..., N]``
        ``rms_norm(residual + x) · weight`` (the input dtype on the Triton backend).
    summed : Tensor ``[..., N]``
        ``residual + x``.

    Raises
    ------
    TypeError
        Non-tensors or non-floating dtypes; ``backend="triton"`` with mixed dtypes.
    ValueError
        Mismatched shapes or devices, a bad ``eps``, rows wider than the kernel's limit, or an
        unusable backend.
    """
    op = "add_rms_norm"
    x = check_tensor(op, "x", x, min_ndim=1, dtypes=DTYPES)
    residual = check_tensor(op, "residual", residual, min_ndim=1, dtypes=DTYPES)
    weight = check_tensor(op, "weight", weight, ndim=1, dtypes=DTYPES)
    device = check_same_device(op, x=x, residual=residual, weight=weight)
    if residual.shape != x.shape:
        raise ValueError(f"{op}: residual must have the shape of x {tuple(x.shape)}, got {tuple(residual.shape)}")
    n = x.shape[-1]
    if weight.shape[0] != n:
        raise ValueError(f"{op}: weight must have shape [N] = [{n}], got {tuple(weight.shape)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{op}: eps must be a number > 0, got {eps!r}")
    same_dtype = residual.dtype == x.dtype == weight.dtype
    if backend == "triton" and not (same_dtype and x.dtype in FLOATING):
        raise TypeError(f"{op}: backend='triton' needs x, residual and weight of one dtype among float32, "
                        f"float16, bfloat16; got {x.dtype}, {residual.dtype} and {weight.dtype}")
    chosen = resolve_inference_backend(op, backend, device, x, residual, weight,
                                       kernel_fits=same_dtype and x.dtype in FLOATING and n <= MAX_N,
                                       why_not=f"takes rows of at most {MAX_N} elements, got N = {n}")
    if chosen == "torch":
        return add_rms_norm_reference(x, residual, weight, float(eps))
    normed, summed = _add_rms_norm_op(as_rows(x), as_rows(residual), weight.contiguous(), float(eps))
    return normed.view(x.shape), summed.view(x.shape)
