"""Flash attention with the Q-Former's causal / key-length mask computed from indices.

Three kernels, one mask rule (see :mod:`seedfast.ops.qformer_attention`): query ``i`` of batch
``b`` sees key ``j`` iff ``j < kv_lens[b]`` (clamped to ``[0, Lk]`` in-kernel) and, when
causal, ``j <= i``. No ``[B, H, Lq, Lk]`` mask or score matrix ever exists.

* ``_attn_fwd``: one program per (batch·head, block of ``BLOCK_M`` queries) walks the
  key blocks with an online softmax in base 2 (scores pre-multiplied by ``scale·log2 e``),
  fp32 accumulation, and writes the output and the natural-log ``lse`` of each row.
* ``_attn_bwd_dq``: same grid and key walk; first computes ``delta = rowsum(dO·O)``
  for its rows (the FlashAttention-2 preprocess, fused here to save a launch) and stores it,
  then recomputes ``P = exp(S − lse)`` and accumulates ``dQ = scale · dS K``.
* ``_attn_bwd_dkdv``: one program per (batch·head, block of ``BLOCK_N`` keys) walks
  the query blocks and accumulates ``dV = Pᵀ dO`` and ``dK = scale · dSᵀ Q``. It reads the
  ``delta`` written by the dQ kernel, which runs before it on the same stream.

Each is autotuned twice: ``_attn_*_kernel`` over :data:`GPU_CONFIGS` for fp16/bf16 and
``_attn_*_kernel_fp32`` over :data:`FP32_GPU_CONFIGS`, keyed on power-of-two buckets of
``Lq`` and ``Lk``, the head-dim tile and the mask flags (never on the batch size). The grid is
one-dimensional, ``B·H·⌈L / BLOCK⌉`` programs with the blocks of one head adjacent, so it
never meets the 65535 limit of CUDA's second and third grid dimensions.

Every sum is taken in a fixed order by one program (no atomics), so results are bitwise
reproducible.

Key blocks that no row of a query block can see are never visited: the walk stops at
``min(Lk, kv_lens[b])`` and, when causal, at the block's last query index; the dK/dV walk
starts at the first query block that reaches the key block's first index, and is empty for
key blocks at or past ``kv_lens[b]``.

A row that sees no key has ``l = Σ exp = 0``: its output is 0 and its ``lse`` is ``+inf``,
so the backward's ``exp(S − lse)`` is 0 and the row passes zero gradient, without NaN.

fp32 inputs use 3xTF32 dots on tensor cores (``input_precision="tf32x3"``), near fp32
accuracy, so fp32 callers get the fp32 results they ask for (plain TF32 would cost ~1e-3
relative error); fp16/bf16 operands go to the tensor cores as they are, with ``P`` and ``dS``
rounded to the input dtype before their dots, as in FlashAttention.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from seedfast.kernels._common import round_bf16
from seedfast.kernels._config import autotune_configs, fp32_dot_precision, interpret_bf16

MAX_HEAD_DIM = 128
LOG2E = math.log2(math.e)
LN2 = tl.constexpr(math.log(2.0))
RCP_LN2 = tl.constexpr(LOG2E)
_TUNE_KEY = ["LQ_BUCKET", "LK_BUCKET", "BLOCK_D", "CAUSAL", "HAS_KV_LENS"]


def _config(block_m: int, block_n: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


# SEED's shapes are small (Lq = 32; Lk = 32, 64 or 257) with large B·H, so tiles stay at
# 32-64 rows: a 32-query tile covers a whole Q-Former head without padding rows. The same
# tiles serve the forward, the dQ walk (BLOCK_M queries, BLOCK_N keys per step) and the
# dK/dV walk (BLOCK_N keys, BLOCK_M queries per step).
GPU_CONFIGS = [_config(32, 32, 4, 2), _config(32, 64, 4, 2), _config(64, 64, 4, 2)]
# fp32 tiles take twice the registers and shared memory, and 3xTF32 splits each operand into
# two halves: larger tiles spill or exceed shared memory (a 64×64 dK/dV tile with D = 128
# needs 256 KiB) and take tens of seconds to compile, so fp32 keeps small tiles.
FP32_GPU_CONFIGS = [_config(32, 32, 4, 2)]
# Under the interpreter: one config, with different query and key tiles so that interpreted
# tests cross the causal diagonal at block boundaries that do not line up.
_INTERPRETER_FWD = _config(32, 64, 4, 1)
_INTERPRETER_DKDV = _config(64, 32, 4, 1)


def _tuned(kernel, gpu_configs: list[triton.Config], interpreter_config: triton.Config):
    return triton.autotune(configs=autotune_configs(gpu_configs, interpreter_config), key=_TUNE_KEY)(kernel)


@triton.jit
def _visible_keys(lens_ptr, b, LK, HAS_KV_LENS: tl.constexpr):
    """Number of leading keys batch ``b`` may see: ``kv_lens[b]`` clamped to ``[0, LK]``."""
    if HAS_KV_LENS:
        # Clamped in the stored integer type first: an int64 length above 2**31 must not wrap.
        n = tl.load(lens_ptr + b)
        n = tl.minimum(tl.maximum(n, 0), LK).to(tl.int32)
    else:
        n = LK
    return n


@triton.jit
def _program_block(L, H, BLOCK: tl.constexpr):
    """This program's (batch·head, batch, head, first index) when each (b, h) is cut into
    ``cdiv(L, BLOCK)`` blocks of queries (fwd, dQ) or keys (dK/dV), one program per block."""
    n_blocks = tl.cdiv(L, BLOCK)
    pid = tl.program_id(0)
    bh = pid // n_blocks
    return bh, bh // H, bh % H, (pid % n_blocks) * BLOCK


@triton.jit
def _key_walk(lens_ptr, b, LK, start_m, HAS_KV_LENS: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    """``(n_keys, hi)``: the keys batch ``b`` may see, and the end of the key walk of the query
    block at ``start_m`` (a causal block's rows see no key past its last row)."""
    n_keys = _visible_keys(lens_ptr, b, LK, HAS_KV_LENS)
    hi = n_keys
    if CAUSAL:
        hi = tl.minimum(hi, start_m + BLOCK_M)
    return n_keys, hi


@triton.jit
def _keep(rows, cols, n_keys, CAUSAL: tl.constexpr):
    """The mask rule on broadcastable query/key index tiles."""
    keep = cols < n_keys
    if CAUSAL:
        keep = keep & (cols <= rows)
    return keep


@triton.jit
def _load(ptrs, mask, INTERPRET_BF16: tl.constexpr):
    x = tl.load(ptrs, mask=mask, other=0.0)
    if INTERPRET_BF16:
        x = x.to(tl.float32)
    return x


@triton.jit
def _dot_operand(x, like, INTERPRET_BF16: tl.constexpr):
    """fp32 ``x`` in the dtype of ``like``, the other operand of its ``tl.dot``. Under the
    interpreter's bf16 workaround operands stay fp32, holding bf16-rounded values."""
    if INTERPRET_BF16:
        y = round_bf16(x, True)
    else:
        y = x.to(like.dtype)
    return y


@triton.jit
def _attn_fwd(
    q_ptr, k_ptr, v_ptr, lens_ptr, o_ptr, lse_ptr,
    H, LQ, LK, D, qk_scale,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_l,
    LQ_BUCKET, LK_BUCKET,
    BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, HAS_KV_LENS: tl.constexpr,
    INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    bh, b, h, start_m = _program_block(LQ, H, BLOCK_M)
    rows = start_m + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < LQ
    dim_ok = dims < D

    q_base = q_ptr + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h
    k_base = k_ptr + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h
    v_base = v_ptr + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h
    q = _load(q_base + rows[:, None] * sq_l + dims[None, :], row_ok[:, None] & dim_ok[None, :], INTERPRET_BF16)

    n_keys, hi = _key_walk(lens_ptr, b, LK, start_m, HAS_KV_LENS, CAUSAL, BLOCK_M)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        col_ok = cols < LK
        k_t = _load(k_base + cols[None, :] * sk_l + dims[:, None], dim_ok[:, None] & col_ok[None, :], INTERPRET_BF16)
        s = tl.dot(q, k_t, input_precision=PRECISION) * qk_scale
        s = tl.where(_keep(rows[:, None], cols[None, :], n_keys, CAUSAL), s, float("-inf"))
        # The walk only runs when kv_lens[b] >= 1, and then every row sees key 0 (j = 0 <= i)
        # in the first block: m_new is finite from there on, so exp2(m_i - m_new) is 0 on
        # the first step (m_i = -inf) and never -inf - (-inf) = NaN.
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = _load(v_base + cols[:, None] * sv_l + dims[None, :], col_ok[:, None] & dim_ok[None, :], INTERPRET_BF16)
        acc = acc * alpha[:, None] + tl.dot(_dot_operand(p, v, INTERPRET_BF16), v, input_precision=PRECISION)
        m_i = m_new

    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * LN2, float("inf"))
    o_base = o_ptr + b.to(tl.int64) * so_b + h.to(tl.int64) * so_h
    tl.store(o_base + rows[:, None] * so_l + dims[None, :], round_bf16(out, INTERPRET_BF16),
             mask=row_ok[:, None] & dim_ok[None, :])
    tl.store(lse_ptr + bh.to(tl.int64) * LQ + rows, lse, mask=row_ok)


@triton.jit
def _attn_bwd_dq(
    q_ptr, k_ptr, v_ptr, lens_ptr, o_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    H, LQ, LK, D, qk_scale, scale,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_l,
    sdo_b, sdo_h, sdo_l, sdq_b, sdq_h, sdq_l,
    LQ_BUCKET, LK_BUCKET,
    BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, HAS_KV_LENS: tl.constexpr,
    INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    bh, b, h, start_m = _program_block(LQ, H, BLOCK_M)
    rows = start_m + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < LQ
    tile_ok = row_ok[:, None] & (dims < D)[None, :]

    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    q = _load(q_ptr + b64 * sq_b + h64 * sq_h + rows[:, None] * sq_l + dims[None, :], tile_ok, INTERPRET_BF16)
    do = _load(do_ptr + b64 * sdo_b + h64 * sdo_h + rows[:, None] * sdo_l + dims[None, :], tile_ok, INTERPRET_BF16)
    o = tl.load(o_ptr + b64 * so_b + h64 * so_h + rows[:, None] * so_l + dims[None, :], mask=tile_ok, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
    tl.store(delta_ptr + bh.to(tl.int64) * LQ + rows, delta, mask=row_ok)
    # Base-2 exponent of each row's normaliser; +inf for rows that see nothing.
    lse2 = tl.load(lse_ptr + bh.to(tl.int64) * LQ + rows, mask=row_ok, other=float("inf")) * RCP_LN2

    k_base = k_ptr + b64 * sk_b + h64 * sk_h
    v_base = v_ptr + b64 * sv_b + h64 * sv_h
    n_keys, hi = _key_walk(lens_ptr, b, LK, start_m, HAS_KV_LENS, CAUSAL, BLOCK_M)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        kv_ok = (cols < LK)[:, None] & (dims < D)[None, :]
        k = _load(k_base + cols[:, None] * sk_l + dims[None, :], kv_ok, INTERPRET_BF16)
        v = _load(v_base + cols[:, None] * sv_l + dims[None, :], kv_ok, INTERPRET_BF16)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.where(_keep(rows[:, None], cols[None, :], n_keys, CAUSAL), tl.exp2(s - lse2[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(_dot_operand(ds, k, INTERPRET_BF16), k, input_precision=PRECISION)

    dq_base = dq_ptr + b64 * sdq_b + h64 * sdq_h
    tl.store(dq_base + rows[:, None] * sdq_l + dims[None, :], round_bf16(dq * scale, INTERPRET_BF16), mask=tile_ok)


@triton.jit
def _attn_bwd_dkdv(
    q_ptr, k_ptr, v_ptr, lens_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    H, LQ, LK, D, qk_scale, scale,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l,
    sdo_b, sdo_h, sdo_l, sdk_b, sdk_h, sdk_l, sdv_b, sdv_h, sdv_l,
    LQ_BUCKET, LK_BUCKET,
    BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, HAS_KV_LENS: tl.constexpr,
    INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    bh, b, h, start_n = _program_block(LK, H, BLOCK_N)
    cols = start_n + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < D
    kv_ok = (cols < LK)[:, None] & dim_ok[None, :]

    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    k = _load(k_ptr + b64 * sk_b + h64 * sk_h + cols[:, None] * sk_l + dims[None, :], kv_ok, INTERPRET_BF16)
    v = _load(v_ptr + b64 * sv_b + h64 * sv_h + cols[:, None] * sv_l + dims[None, :], kv_ok, INTERPRET_BF16)

    n_keys = _visible_keys(lens_ptr, b, LK, HAS_KV_LENS)
    # Keys at or past n_keys are seen by nobody: an empty walk leaves their gradients at 0.
    hi = tl.where(start_n < n_keys, LQ, 0)
    lo = 0
    if CAUSAL:
        # Queries before start_n see none of these keys: start at the block holding query start_n.
        lo = (start_n // BLOCK_M) * BLOCK_M

    q_base = q_ptr + b64 * sq_b + h64 * sq_h
    do_base = do_ptr + b64 * sdo_b + h64 * sdo_h
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        row_ok = rows < LQ
        tile_ok = row_ok[:, None] & dim_ok[None, :]
        q = _load(q_base + rows[:, None] * sq_l + dims[None, :], tile_ok, INTERPRET_BF16)
        do = _load(do_base + rows[:, None] * sdo_l + dims[None, :], tile_ok, INTERPRET_BF16)
        # lse = +inf past LQ makes those padding rows' probabilities exactly 0.
        lse2 = tl.load(lse_ptr + bh.to(tl.int64) * LQ + rows, mask=row_ok, other=float("inf")) * RCP_LN2
        delta = tl.load(delta_ptr + bh.to(tl.int64) * LQ + rows, mask=row_ok, other=0.0)
        # Transposed scores [BLOCK_N, BLOCK_M], so that Pᵀ and dSᵀ feed their dots directly.
        s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
        p_t = tl.where(_keep(rows[None, :], cols[:, None], n_keys, CAUSAL), tl.exp2(s_t - lse2[None, :]), 0.0)
        dv += tl.dot(_dot_operand(p_t, do, INTERPRET_BF16), do, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(_dot_operand(ds_t, q, INTERPRET_BF16), q, input_precision=PRECISION)

    tl.store(dk_ptr + b64 * sdk_b + h64 * sdk_h + cols[:, None] * sdk_l + dims[None, :],
             round_bf16(dk * scale, INTERPRET_BF16), mask=kv_ok)
    tl.store(dv_ptr + b64 * sdv_b + h64 * sdv_h + cols[:, None] * sdv_l + dims[None, :],
             round_bf16(dv, INTERPRET_BF16), mask=kv_ok)


# The autotuned launch points: one per kernel for fp16/bf16 and one for fp32.
_attn_fwd_kernel = _tuned(_attn_fwd, GPU_CONFIGS, _INTERPRETER_FWD)
_attn_bwd_dq_kernel = _tuned(_attn_bwd_dq, GPU_CONFIGS, _INTERPRETER_FWD)
_attn_bwd_dkdv_kernel = _tuned(_attn_bwd_dkdv, GPU_CONFIGS, _INTERPRETER_DKDV)
_attn_fwd_kernel_fp32 = _tuned(_attn_fwd, FP32_GPU_CONFIGS, _INTERPRETER_FWD)
_attn_bwd_dq_kernel_fp32 = _tuned(_attn_bwd_dq, FP32_GPU_CONFIGS, _INTERPRETER_FWD)
_attn_bwd_dkdv_kernel_fp32 = _tuned(_attn_bwd_dkdv, FP32_GPU_CONFIGS, _INTERPRETER_DKDV)


def block_d(head_dim: int) -> int:
    """The padded head-dim tile: a power of two, at least 16 (the smallest ``tl.dot`` operand)."""
    return max(16, triton.next_power_of_2(head_dim))


def _bucket(n: int) -> int:
    # Autotune once per power-of-two length, not per exact length (text lengths vary).
    return triton.next_power_of_2(max(n, 1))


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _constexprs(q: torch.Tensor, kv_lens: torch.Tensor | None, causal: bool) -> dict:
    return dict(
        BLOCK_D=block_d(q.shape[3]), CAUSAL=causal, HAS_KV_LENS=kv_lens is not None,
        INTERPRET_BF16=interpret_bf16(q.dtype), PRECISION=fp32_dot_precision(q.dtype),
    )


def _check(**tensors: torch.Tensor) -> None:
    for name, x in tensors.items():
        assert x.stride(3) == 1 or x.shape[3] <= 1, f"{name} needs unit stride in D"
        assert x.shape[3] <= MAX_HEAD_DIM, f"{name}: head_dim {x.shape[3]} exceeds MAX_HEAD_DIM={MAX_HEAD_DIM}"


def qformer_attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lens: torch.Tensor | None, *, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward on ``q [B, H, Lq, D]``, ``k, v [B, H, Lk, D]`` (unit stride in D).

    Returns ``(out, lse)``: ``out`` like ``q`` (same strides when ``q`` is dense), ``lse``
    fp32 ``[B, H, Lq]`` contiguous, the natural-log normaliser of each row (``+inf`` for rows
    that see no key).
    """
    _check(q=q, k=k, v=v)
    bsz, heads, lq, d = q.shape
    lk = k.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty((bsz, heads, lq), dtype=torch.float32, device=q.device)
    if bsz * heads * lq == 0:
        return out, lse
    consts = _constexprs(q, kv_lens, causal)

    def grid(meta):
        return (bsz * heads * triton.cdiv(lq, meta["BLOCK_M"]),)

    kernel = _attn_fwd_kernel_fp32 if q.dtype == torch.float32 else _attn_fwd_kernel
    kernel[grid](
        q, k, v, kv_lens if kv_lens is not None else lse, out, lse,
        heads, lq, lk, d, scale * LOG2E,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        _bucket(lq), _bucket(lk), **consts,
    )
    return out, lse


def qformer_attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    kv_lens: torch.Tensor | None,
    *,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(dq, dk, dv)`` of the forward, each shaped (and, when dense, strided) like its input.

    ``out`` and ``lse`` are the forward's results; ``grad_out`` needs unit stride in D.
    """
    _check(q=q, k=k, v=v, out=out, grad_out=grad_out)
    bsz, heads, lq, d = q.shape
    lk = k.shape[2]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if bsz * heads == 0 or lq * lk == 0:
        # Nothing is seen: every gradient is zero (and the kernels would have no work).
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = torch.empty((bsz, heads, lq), dtype=torch.float32, device=q.device)
    consts = _constexprs(q, kv_lens, causal)
    lens = kv_lens if kv_lens is not None else lse

    def dq_grid(meta):
        return (bsz * heads * triton.cdiv(lq, meta["BLOCK_M"]),)

    def dkdv_grid(meta):
        return (bsz * heads * triton.cdiv(lk, meta["BLOCK_N"]),)

    fp32 = q.dtype == torch.float32
    (_attn_bwd_dq_kernel_fp32 if fp32 else _attn_bwd_dq_kernel)[dq_grid](
        q, k, v, lens, out, grad_out, lse, delta, dq,
        heads, lq, lk, d, scale * LOG2E, scale,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out), *_strides(grad_out), *_strides(dq),
        _bucket(lq), _bucket(lk), **consts,
    )
    (_attn_bwd_dkdv_kernel_fp32 if fp32 else _attn_bwd_dkdv_kernel)[dkdv_grid](
        q, k, v, lens, grad_out, lse, delta, dk, dv,
        heads, lq, lk, d, scale * LOG2E, scale,
        *_strides(q), *_strides(k), *_strides(v), *_strides(grad_out), *_strides(dk), *_strides(dv),
        _bucket(lq), _bucket(lk), **consts,
    )
    return dq, dk, dv
