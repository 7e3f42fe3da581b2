"""Backend choice for the fused decode ops (``rope_kv_write``, ``add_rms_norm``, ``silu_mul``).

They are inference ops: their Triton kernels have no backward. ``"auto"`` therefore takes the
kernel only on CUDA tensors and only when no gradient is recorded, so training through the
same model code keeps using the differentiable reference; an explicit ``"triton"`` with a
gradient to record is an error rather than a silent detach.
"""
from __future__ import annotations

import torch

from seedfast.ops._common import resolve_backend

INFERENCE_BACKENDS = ("auto", "triton", "torch")


def check_inference_backend(owner: str, backend: object) -> None:
    """Raise ValueError naming ``owner`` unless ``backend`` is one of :data:`INFERENCE_BACKENDS`."""
    if backend not in INFERENCE_BACKENDS:
        raise ValueError(f"{owner}: backend must be one of {INFERENCE_BACKENDS}, got {backend!r}")


def check_module_input(owner: str, x: object, dim: int, backend: object) -> None:
    """A decode module's per-call checks: an optional ``backend`` override, and ``x`` a tensor ``[..., dim]``.

    Raises
    ------
    TypeError
        ``x`` is not a tensor.
    ValueError
        ``x``'s last dim is not ``dim``, or an unknown ``backend``.
    """
    if backend is not None:
        check_inference_backend(owner, backend)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != dim:
        raise ValueError(f"{owner}: x must have shape [..., {dim}], got {tuple(x.shape)}")


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd would record an op on these tensors."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def resolve_inference_backend(op: str, backend: str, device: torch.device, *tensors: torch.Tensor,
                              kernel_fits: bool = True, why_not: str = "") -> str:
    """``"triton"`` or ``"torch"`` for an inference-only op.

    Parameters
    ----------
    op : str
        The op's name, for messages.
    backend : {"auto", "triton", "torch"}
    device : torch.device
    *tensors : Tensor
        The differentiable inputs.
    kernel_fits : bool
        Whether the kernel supports these inputs (dtypes, layouts); ``"auto"`` falls back when not.
    why_not : str
        What the kernel cannot take, for the error of an explicit ``"triton"``.

    Raises
    ------
    ValueError
        Unknown backend, ``"triton"`` where it cannot run, with inputs it does not support, or
        with a gradient to record.
    """
    if backend not in INFERENCE_BACKENDS:
        raise ValueError(f"{op}: backend must be one of {INFERENCE_BACKENDS}, got {backend!r}")
    grad = needs_grad(*tensors)
    if backend == "auto":
        return "torch" if grad or not kernel_fits else resolve_backend(op, backend, device)
    chosen = resolve_backend(op, backend, device)
    if chosen == "triton":
        if grad:
            raise ValueError(f"{op}: backend='triton' has no backward (an inference op); run it under "
                             f"torch.no_grad() or use backend='torch' to differentiate")
        if not kernel_fits:
            raise ValueError(f"{op}: backend='triton' {why_not} (use backend='torch')")
    return chosen
