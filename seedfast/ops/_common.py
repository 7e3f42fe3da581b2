"""What every op shares: backend resolution and input validation with clear messages."""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable

import torch

BACKENDS = ("auto", "triton", "cuda", "torch")
FLOATING = (torch.float32, torch.float16, torch.bfloat16)


def triton_interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1``: Triton kernels then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Looked up once, without importing triton: a constant that torch.compile traces for free.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """Whether the triton package is installed (it is a Linux-only dependency)."""
    return _TRITON_INSTALLED


def resolve_backend(op: str, backend: str, device: torch.device, *, has_cuda: bool = False) -> str:
    """Pick the implementation an op runs.

    ``"auto"``: Triton on CUDA tensors, the torch reference elsewhere. ``"triton"``: CUDA
    tensors, or CPU tensors under ``TRITON_INTERPRET=1``. ``"cuda"``: the csrc extension, for
    ops that have one, on CUDA tensors. ``"torch"``: the reference, anywhere.

    Raises
    ------
    ValueError
        Unknown backend, or one that cannot run on ``device``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise ValueError(f"{op}: backend='triton' needs the triton package, which is not installed")
        if device.type == "cuda" or (device.type == "cpu" and triton_interpreting()):
            return "triton"
        raise ValueError(
            f"{op}: backend='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1); got {device}"
        )
    if backend == "cuda":
        if not has_cuda:
            raise ValueError(f"{op}: has no CUDA C++ implementation; use backend='triton' or 'torch'")
        if device.type != "cuda":
            raise ValueError(f"{op}: backend='cuda' needs CUDA tensors; got {device}")
    return backend


def check_tensor(
    op: str,
    name: str,
    value: object,
    *,
    ndim: int | None = None,
    min_ndim: int | None = None,
    dtypes: Iterable[torch.dtype] | None = None,
) -> torch.Tensor:
    """Check that ``value`` is a tensor with the given rank and dtype; return it.

    Raises
    ------
    TypeError
        Not a tensor, or a dtype outside ``dtypes``.
    ValueError
        Wrong number of dimensions.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if min_ndim is not None and value.dim() < min_ndim:
        raise ValueError(f"{op}: {name} must have at least {min_ndim} dimension(s), got shape {tuple(value.shape)}")
    if dtypes is not None:
        allowed = tuple(dtypes)
        if value.dtype not in allowed:
            names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
            raise TypeError(f"{op}: {name} must have dtype in ({names}), got {str(value.dtype).removeprefix('torch.')}")
    return value


def check_same_device(op: str, **tensors: torch.Tensor) -> torch.device:
    """Check that all named tensors live on one device; return it."""
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"{op}: tensors must be on one device, got {listed}")
    return first


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """``[..., D]`` as a 2-D ``[N, D]`` view with unit stride in D (a copy only when needed)."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()
