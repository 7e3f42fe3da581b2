"""``RopeKVWrite``: a decode step's rotary embedding and KV-cache write over :func:`seedfast.ops.rope_kv_write`.

The op has no weights; what a module adds is the rotary table, so the call site passes only
what changes every step. The table stays the caller's: the module holds the very tensors it is
given (no copy, not in the state dict, not moved or cast by ``.to()``), so a CUDA graph captured
through it reads the caller's buffers, and ``model.half()`` cannot turn it into the float16
table the op refuses. Build the table with :func:`seedfast.models.llama.rope_table` (HF's
"rotate half" layout: ``cos = [cos θ, cos θ]``, ``sin = [-sin θ, sin θ]``). Making one is cheap
(about 10 µs of Python, no tensor work): :meth:`seedfast.models.llama.Llama.decode` makes one per
call around the table its caller passes.
"""
from __future__ import annotations

import torch
from torch import nn

from seedfast.ops._inference import check_inference_backend
from seedfast.ops.rope_kv_write import rope_kv_write


class RopeKVWrite(nn.Module):
    """Rotate q and k of one token per row and write k, v into the cache at each row's position.

    Parameters
    ----------
    cos, sin : Tensor ``[L, D]``, float32, one device
        The rotary table for positions ``0 .. L-1`` and head dim ``D`` (even), held as it is.
    backend : {"auto", "triton", "torch"}
        Passed to :func:`seedfast.ops.rope_kv_write`; may be changed by assigning
        ``module.backend`` or overridden per call. ``"auto"``: the Triton kernel on CUDA tensors
        when no gradient is recorded, the differentiable torch reference otherwise.

    Attributes
    ----------
    cos, sin : Tensor ``[L, D]``
        The table (plain attributes: no buffers, no parameters).

    Raises
    ------
    TypeError
        ``cos`` or ``sin`` is not a float32 tensor.
    ValueError
        ``cos`` or ``sin`` is not 2-D, their shapes or devices differ, ``D`` is odd or ``L``
        is 0, or an unknown ``backend``.
    """

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor, *, backend: str = "auto") -> None:
        super().__init__()
        name = type(self).__name__
        for arg, value in (("cos", cos), ("sin", sin)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(value).__name__}")
            if value.dtype != torch.float32:
                raise TypeError(f"{name}: {arg} must be float32 (the rotation runs in float32), got {value.dtype}")
            if value.dim() != 2 or 0 in value.shape:
                raise ValueError(f"{name}: {arg} must be a non-empty [L, D] table, got shape {tuple(value.shape)}")
        if sin.shape != cos.shape:
            raise ValueError(f"{name}: sin must have cos's shape {tuple(cos.shape)}, got {tuple(sin.shape)}")
        if sin.device != cos.device:
            raise ValueError(f"{name}: cos and sin must be on one device, got {cos.device} and {sin.device}")
        if cos.shape[1] % 2:
            raise ValueError(f"{name}: the head dim D (cos.shape[1]) must be even for the rotate-half "
                             f"rotation, got {cos.shape[1]}")
        check_inference_backend(name, backend)
        self.cos, self.sin = cos, sin
        self.backend = backend

    @property
    def max_positions(self) -> int:
        """``L``: positions ``0 .. L-1`` are in the table."""
        return self.cos.shape[0]

    @property
    def head_dim(self) -> int:
        """``D``, the head dim the table rotates."""
        return self.cos.shape[1]

    def forward(self, qkv: torch.Tensor, positions: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *,
                backend: str | None = None) -> torch.Tensor:
        """Rotate, write the caches in place, and return the rotated queries.

        Parameters
        ----------
        qkv : Tensor ``[B, (H + 2·Hkv)·D]``, float32/float16/bfloat16 (float64: torch backend)
            One token per row: H q heads, then Hkv k heads, then Hkv v heads.
        positions : Tensor ``[B]``, int32 or int64
            Row ``b``'s position: its table row and its cache slot (below ``L`` and ``S``; not
            checked, which would synchronise with the host).
        k_cache, v_cache : Tensor ``[Bc, S, Hkv, D]``, the dtype of ``qkv``, ``Bc >= B``
            Written at ``[b, positions[b]]`` for ``b < B``; nothing else changes.
        backend : {"auto", "triton", "torch"}, optional
            Overrides ``self.backend`` for this call.

        Returns
        -------
        Tensor ``[B, H, D]``, the dtype of ``qkv``

        Raises
        ------
        TypeError
            Non-tensors, dtypes the op does not take, or caches of another dtype than ``qkv``.
        ValueError
            Shapes that do not fit together or the table, devices that differ from the table's,
            or an unknown ``backend``.
        """
        if backend is not None:
            check_inference_backend(type(self).__name__, backend)
        return rope_kv_write(qkv, self.cos, self.sin, positions, k_cache, v_cache, backend=backend or self.backend)

    def extra_repr(self) -> str:
        parts = [f"max_positions={self.max_positions}", f"head_dim={self.head_dim}"]
        if self.backend != "auto":
            parts.append(f"backend={self.backend!r}")
        return ", ".join(parts)
