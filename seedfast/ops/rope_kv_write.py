"""Rotary embedding of q and k plus the KV-cache write of a decode step, as one op.

A decode step projects each row's token to ``qkv [B, (H + 2·Hkv)·D]`` (q heads, then k heads,
then v heads). This op rotates q and k by each row's position ``positions[b]`` with a rotary
table in HF's "rotate half" layout (``cos = [cos θ, cos θ]``, ``sin = [-sin θ, sin θ]``, as
:func:`seedfast.models.llama.rope_table` builds it), writes the rotated k and the plain v into
``k_cache[b, positions[b]]`` and ``v_cache[b, positions[b]]`` in place, and returns the rotated
q ``[B, H, D]``. The rotation runs in float32 and is rounded once to the model dtype.

An inference op: the Triton kernel has no backward. ``backend="auto"`` runs it on CUDA tensors
when no gradient is recorded, the reference otherwise (:mod:`seedfast.ops._inference`).
Positions are not range-checked (that would synchronise with the host): each must lie below
the table's length and the cache's ``S``.
"""
from __future__ import annotations

import torch

from seedfast.ops._common import FLOATING, check_same_device, check_tensor
from seedfast.ops._inference import resolve_inference_backend

# float64 runs on the reference only (the kernels take the three below).
DTYPES = (*FLOATING, torch.float64)


def rope_rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [..., H, D]`` by per-token ``cos, sin [..., D]`` (rotate-half layout), in float32.

    ``[x1, x2] → [x1 cos - x2 sin, x2 cos + x1 sin]``, rounded once to ``x.dtype``.
    """
    x32 = x.float()
    c, s = cos[..., None, :], sin[..., None, :]
    return torch.addcmul(x32 * c, x32.roll(x.shape[-1] // 2, -1), s).to(x.dtype)


def rope_kv_write_reference(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                            k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    """Plain torch: gather the table rows, rotate q and k together, ``index_put`` k and v into the caches.

    Parameters and result as :func:`rope_kv_write`.
    """
    b = qkv.shape[0]
    hkv, d = k_cache.shape[2], k_cache.shape[3]
    h = qkv.shape[1] // d - 2 * hkv
    pos = positions.long()
    qk, v = qkv.view(b, h + 2 * hkv, d).split([h + hkv, hkv], dim=1)
    # q and k sit side by side in the fused projection: one rotation covers both.
    qk = rope_rotate(qk, cos[pos], sin[pos])
    rows = torch.arange(b, device=qkv.device)
    k_cache[rows, pos] = qk[:, h:]
    v_cache[rows, pos] = v
    return qk[:, :h]


@torch.library.custom_op("seedfast::rope_kv_write", mutates_args=("k_cache", "v_cache"))
def _rope_kv_write_op(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                      k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    from seedfast.kernels import rope_kv_write as kernel

    return kernel.rope_kv_write_forward(qkv, cos, sin, positions, k_cache, v_cache)


@_rope_kv_write_op.register_fake
def _(qkv, cos, sin, positions, k_cache, v_cache):
    hkv, d = k_cache.shape[2], k_cache.shape[3]
    return qkv.new_empty((qkv.shape[0], qkv.shape[1] // d - 2 * hkv, d))


def rope_kv_write(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                  k_cache: torch.Tensor, v_cache: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Rotate q and k of one decode step and write k, v into the cache at each row's position.

    Parameters
    ----------
    qkv : Tensor ``[B, (H + 2·Hkv)·D]``, float32/float16/bfloat16 (float64: reference only)
        The fused projection of one token per row: H q heads, Hkv k heads, Hkv v heads.
    cos, sin : Tensor ``[L, D]``, float32
        The rotary table (rotate-half layout, :func:`seedfast.models.llama.rope_table`).
    positions : Tensor ``[B]``, int32 or int64
        Row ``b``'s position: its table row and its cache slot (below ``L`` and ``S``; not checked).
    k_cache, v_cache : Tensor ``[Bc, S, Hkv, D]``, the dtype of ``qkv``, ``Bc >= B``
        Written in place at ``[b, positions[b]]`` for ``b < B``; nothing else changes.
    backend : {"auto", "triton", "torch"}

    Returns
    -------
    Tensor ``[B, H, D]``, the dtype of ``qkv``: the rotated queries.

    Raises
    ------
    TypeError
        Non-tensors, dtypes outside the lists above, or caches of another dtype than ``qkv``.
    ValueError
        Shapes that do not fit together, an odd ``D``, devices, or an unusable backend.
    """
    op = "rope_kv_write"
    qkv = check_tensor(op, "qkv", qkv, ndim=2, dtypes=DTYPES)
    cos = check_tensor(op, "cos", cos, ndim=2, dtypes=(torch.float32,))
    sin = check_tensor(op, "sin", sin, ndim=2, dtypes=(torch.float32,))
    positions = check_tensor(op, "positions", positions, ndim=1, dtypes=(torch.int32, torch.int64))
    k_cache = check_tensor(op, "k_cache", k_cache, ndim=4)
    v_cache = check_tensor(op, "v_cache", v_cache, ndim=4)
    device = check_same_device(op, qkv=qkv, cos=cos, sin=sin, positions=positions, k_cache=k_cache, v_cache=v_cache)
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if cache.dtype != qkv.dtype:
            raise TypeError(f"{op}: {name} must have the dtype of qkv ({qkv.dtype}), got {cache.dtype}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"{op}: v_cache must have k_cache's shape {tuple(k_cache.shape)}, got {tuple(v_cache.shape)}")
    b, width = qkv.shape
    bc, _, hkv, d = k_cache.shape
    if d % 2:
        raise ValueError(f"{op}: the head dim D (k_cache.shape[3]) must be even for the rotate-half rotation, got {d}")
    if width % d or width // d - 2 * hkv < 1:
        raise ValueError(f"{op}: qkv must have (H + 2·Hkv)·D columns with H >= 1, Hkv = {hkv}, D = {d}; "
                         f"got {width}")
    if cos.shape != sin.shape or cos.shape[1] != d:
        raise ValueError(f"{op}: cos and sin must both be [L, D = {d}], got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if positions.shape[0] != b:
        raise ValueError(f"{op}: positions must have shape [B] = [{b}], got {tuple(positions.shape)}")
    if bc < b:
        raise ValueError(f"{op}: the caches hold {bc} rows, fewer than the B = {b} rows of qkv")
    fits = qkv.dtype in FLOATING and qkv.stride(1) == 1 and k_cache.stride(3) == 1 and v_cache.stride(3) == 1
    chosen = resolve_inference_backend(op, backend, device, qkv, kernel_fits=fits,
                                       why_not="needs float32/float16/bfloat16 and unit stride in the last dim "
                                               "of qkv and the caches")
    if chosen == "torch":
        return rope_kv_write_reference(qkv, cos, sin, positions, k_cache, v_cache)
    return _rope_kv_write_op(qkv, cos if cos.stride(1) == 1 else cos.contiguous(),
                             sin if sin.stride(1) == 1 else sin.contiguous(), positions.contiguous(), k_cache, v_cache)
