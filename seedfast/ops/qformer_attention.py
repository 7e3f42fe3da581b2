"""Masked multi-head attention for the Causal Q-Former (and any BLIP-2-style model).

One rule covers every mask SEED needs, computed from indices, never materialised:

* ``causal=True``: query ``i`` sees keys ``j <= i`` (top-left aligned, as SDPA's ``is_causal``).
  This is the Q-Former's causal self-attention among its 32 queries, and a joint
  [32 queries + text] sequence where text sees all queries and earlier text.
* ``kv_lens`` (``[B]`` integers): keys at index ``>= kv_lens[b]`` are masked (padded text or
  image keys). Values are clamped to ``[0, Lk]`` (no host synchronisation to check them).
* Cross-attention is the same op with ``causal=False`` and ``Lq != Lk``.

A query row that sees no key (``kv_lens[b] == 0``, say) outputs zeros and passes zero gradient,
where a softmax over nothing would give NaN.

NaN in, NaN out, on every backend, masked or not: a query row holding a NaN gives a NaN
output row, and so does every row that sees a key whose ``k`` or ``v`` holds a NaN (other rows
of that batch and head may come back NaN too, depending on the backend: propagation is
promised, containment is not). A row that sees no key is zero whatever its inputs. ``±inf``
inputs follow IEEE arithmetic (``inf − inf`` in the softmax gives NaN).

The official code adds ``-10000`` to masked scores instead of ``-inf``; the difference is
``exp(-10000)``, which is zero in every dtype, except for rows that see no key at all (the
official code then averages all keys; we return zeros, as documented above).

The Triton path (``seedfast.kernels.qformer_attention``) is a flash-attention kernel family
(forward with log-sum-exp, FlashAttention-2 backward, no atomics: bitwise reproducible) that
computes the mask from indices and reads ``kv_lens`` on the device, so nothing here waits on
the host. It runs float32/float16/bfloat16 with ``head_dim <= 128`` and any strides (a copy
is made only when the last dimension is not contiguous); the output takes ``q``'s layout
when ``q`` is dense, so a ``[B, L, H, D]`` projection viewed as ``[B, H, L, D]`` gets an
output that views back to ``[B, L, H·D]`` for free.
"""
from __future__ import annotations

import math

import torch

from seedfast.ops._common import FLOATING, check_same_device, check_tensor, resolve_backend

TRITON_MAX_HEAD_DIM = 128


def attention_mask(
    lq: int, lk: int, *, causal: bool, kv_lens: torch.Tensor | None, device: torch.device
) -> torch.Tensor | None:
    """The boolean keep-mask ``[B or 1, 1, Lq, Lk]`` of the rule above (None when nothing is masked)."""
    keep = None
    if causal:
        i = torch.arange(lq, device=device)[:, None]
        j = torch.arange(lk, device=device)[None, :]
        keep = (j <= i)[None, None]
    if kv_lens is not None:
        lens = kv_lens.to(device=device, dtype=torch.int64).clamp(0, lk)
        key_ok = torch.arange(lk, device=device)[None, :] < lens[:, None]
        key_ok = key_ok[:, None, None, :]
        keep = key_ok if keep is None else keep & key_ok
    return keep


def qformer_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    kv_lens: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Plain-torch :func:`qformer_attention`: SDPA with an explicit mask, in the input dtype.

    The oracle of the tests (run in float64) and the CPU path. Same arguments and result as
    :func:`qformer_attention` (without ``backend``).
    """
    lq, lk = q.shape[-2], k.shape[-2]
    keep = attention_mask(lq, lk, causal=causal, kv_lens=kv_lens, device=q.device)
    if keep is None:
        # CPU SDPA's fused no-mask kernel returns a zero row for a NaN query; with any mask it
        # propagates NaN like every other path. One broadcast True changes nothing else: same
        # outputs and gradients bit for bit (checked on CPU, torch 2.13, fp32/fp16/bf16).
        everything = torch.ones((1, 1, 1, 1), dtype=torch.bool, device=q.device)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=everything, scale=scale)
    sees_a_key = keep.any(-1, keepdim=True)
    # Rows that see nothing attend to everything (finite softmax), then are set to zero
    # whatever their inputs (a NaN query too, as the kernel): zero gradient to them.
    safe = keep | ~sees_a_key
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=safe, scale=scale)
    return torch.where(sees_a_key, out, torch.zeros((), dtype=out.dtype, device=out.device))


# ---------------------------------------------------------------------------------------------
# The Triton path as opaque custom ops, so torch.compile and CUDA graphs see single nodes.


@torch.library.custom_op("seedfast::qformer_attention_fwd", mutates_args=())
def _attention_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lens: torch.Tensor | None, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)``: ``lse`` fp32 ``[B, H, Lq]``, natural log, ``+inf`` for rows that see no key."""
    from seedfast.kernels import qformer_attention as kqa

    return kqa.qformer_attention_forward(q, k, v, kv_lens, causal=causal, scale=scale)


@_attention_fwd_op.register_fake
def _(q, k, v, kv_lens, causal, scale):
    b, h, lq, _ = q.shape
    return torch.empty_like(q), q.new_empty((b, h, lq), dtype=torch.float32)


@torch.library.custom_op("seedfast::qformer_attention_bwd", mutates_args=())
def _attention_bwd_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    kv_lens: torch.Tensor | None,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` from the forward's inputs, ``out`` and ``lse``."""
    from seedfast.kernels import qformer_attention as kqa

    return kqa.qformer_attention_backward(_unit_stride_d(grad_out), q, k, v, out, lse, kv_lens, causal=causal, scale=scale)


@_attention_bwd_op.register_fake
def _(grad_out, q, k, v, out, lse, kv_lens, causal, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _attention_setup_context(ctx, inputs, output):
    q, k, v, kv_lens, causal, scale = inputs
    out, lse = output
    # lse exists for the backward only; it has no gradient of its own.
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, kv_lens)
    ctx.causal = causal
    ctx.scale = scale


def _attention_backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse, kv_lens = ctx.saved_tensors
    dq, dk, dv = _attention_bwd_op(grad_out, q, k, v, out, lse, kv_lens, ctx.causal, ctx.scale)
    needs = ctx.needs_input_grad
    return (dq if needs[0] else None), (dk if needs[1] else None), (dv if needs[2] else None), None, None, None


_attention_fwd_op.register_autograd(_attention_backward, setup_context=_attention_setup_context)


def _unit_stride_d(x: torch.Tensor) -> torch.Tensor:
    # The kernels take any batch/head/row strides but need contiguous head dims (a stride-0
    # gradient of a .sum(), or a transposed head dim, is copied).
    return x if x.stride(-1) == 1 or x.shape[-1] <= 1 else x.contiguous()


# ---------------------------------------------------------------------------------------------
# Public API


def _validate(q, k, v, causal, kv_lens, scale, backend):
    op = "qformer_attention"
    allowed = (*FLOATING, torch.float64)
    q = check_tensor(op, "q", q, ndim=4, dtypes=allowed)
    k = check_tensor(op, "k", k, ndim=4, dtypes=allowed)
    v = check_tensor(op, "v", v, ndim=4, dtypes=allowed)
    tensors = {"q": q, "k": k, "v": v}
    if kv_lens is not None:
        kv_lens = check_tensor(op, "kv_lens", kv_lens, ndim=1,
                               dtypes=(torch.int32, torch.int64, torch.int16, torch.uint8))
        tensors["kv_lens"] = kv_lens
    device = check_same_device(op, **tensors)
    if not isinstance(causal, bool):
        raise TypeError(f"{op}: causal must be a bool, got {type(causal).__name__}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{op}: q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    b, h, _, d = q.shape
    if k.shape[:2] != (b, h) or v.shape[:2] != (b, h):
        raise ValueError(
            f"{op}: q, k, v must be [B, H, L, D] with the same B and H; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"{op}: k and v must have the same length, got {k.shape[2]} and {v.shape[2]}")
    if k.shape[3] != d or v.shape[3] != d:
        raise ValueError(f"{op}: q, k, v must share head_dim, got {d}, {k.shape[3]}, {v.shape[3]}")
    if kv_lens is not None and kv_lens.shape[0] != b:
        raise ValueError(f"{op}: kv_lens must have shape [B] = [{b}], got {tuple(kv_lens.shape)}")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"{op}: scale must be a finite number or None, got {scale!r}")
    kernel_fits = q.dtype in FLOATING and d <= TRITON_MAX_HEAD_DIM
    if backend == "auto" and not kernel_fits:
        backend = "torch"
    if backend == "triton" and not kernel_fits:
        raise ValueError(
            f"{op}: backend='triton' supports dtypes float32/float16/bfloat16 and head_dim <= "
            f"{TRITON_MAX_HEAD_DIM}; got {str(q.dtype).removeprefix('torch.')} with head_dim={d} "
            f"(use backend='torch')"
        )
    return q, k, v, kv_lens, resolve_backend(op, backend, device)


def qformer_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    kv_lens: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention with the causal / key-length mask computed from indices.

    Parameters
    ----------
    q : Tensor ``[B, H, Lq, D]``, float32/float16/bfloat16 (float64 on the torch backend)
        Any strides (the Q-Former's ``[B, L, H, D]`` projection viewed as ``[B, H, L, D]``
        needs no copy).
    k, v : Tensor ``[B, H, Lk, D]``, same dtype and device as ``q``
    causal : bool
        Query ``i`` sees keys ``j <= i`` (top-left aligned).
    kv_lens : Tensor ``[B]``, integer, optional
        Keys at index ``>= kv_lens[b]`` are masked; values are clamped to ``[0, Lk]``.
    scale : float, optional
        Score scale; default ``D ** -0.5``.
    backend : {"auto", "triton", "torch"}
        ``"auto"`` runs Triton on CUDA tensors when the kernel supports the inputs
        (float32/float16/bfloat16, ``D <= 128``) and the torch reference otherwise.

    Returns
    -------
    Tensor ``[B, H, Lq, D]``, dtype of ``q``. Rows that see no key are zero. A row whose
    query holds a NaN, or that sees a key whose ``k``/``v`` holds a NaN, is NaN (every backend,
    masked or not; see the module notes).

    Raises
    ------
    TypeError
        Non-tensor inputs, non-floating q/k/v, mixed dtypes, non-integer ``kv_lens``, a
        non-bool ``causal``.
    ValueError
        Shape mismatches, tensors on different devices, a non-finite ``scale``, or a backend
        that cannot run here or cannot run these inputs (``"triton"`` with float64 or
        ``D > 128``).
    """
    q, k, v, kv_lens, chosen = _validate(q, k, v, causal, kv_lens, scale, backend)
    if chosen == "torch":
        return qformer_attention_reference(q, k, v, causal=causal, kv_lens=kv_lens, scale=scale)
    d = q.shape[-1]
    scale = float(scale) if scale is not None else (1.0 / math.sqrt(d) if d > 0 else 1.0)
    lens = kv_lens.contiguous() if kv_lens is not None else None
    out, _ = _attention_fwd_op(_unit_stride_d(q), _unit_stride_d(k), _unit_stride_d(v), lens, causal, scale)
    return out
