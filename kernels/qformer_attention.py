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
* ``_attn_fwd_keys_major``, ``_attn_bwd_dq_keys_major``: the forward and dQ kernels for at
  most :data:`SHORT_Q_MAX` queries (the Q-Former's 32), computed transposed (``Sᵀ = K Qᵀ``,
  ``Oᵀ += Vᵀ Pᵀ``, ``dQᵀ += Kᵀ dSᵀ``) so that the MMA's M, which must be 64 for wgmma on
  sm_90, is the key tile or the head dim rather than the 32 queries. This gets the tensor
  cores' wgmma without packing heads into one tile, which would compute the cross-head
  blocks of a block-diagonal score matrix and throw them away.

Each is autotuned per dtype and query count (:func:`_launch_points`): ``_attn_*_kernel``
over :data:`GPU_CONFIGS` for fp16/bf16, ``_attn_*_kernel_short_q`` over
:data:`SHORT_Q_GPU_CONFIGS` for fp16/bf16 with at most 32 queries, and ``_attn_*_kernel_fp32``
over :data:`FP32_GPU_CONFIGS`, keyed on power-of-two buckets of
``Lq`` and ``Lk``, the head dim and the mask flags (never on the batch size). The grid is
one-dimensional, ``B·H·⌈L / BLOCK⌉`` programs with the blocks of one head adjacent, so it
never meets the 65535 limit of CUDA's second and third grid dimensions.

The head dim ``D`` is a constexpr, held as one or two power-of-two column chunks
(:func:`head_dim_tiles`: 88 = 64 + 32 with 8 masked columns, 80 = 64 + 16, 96 = 64 + 32)
rather than one tile padded to the next power of two, and each dot over ``D`` is one dot per
chunk. Batch, head and row strides are passed divided by ``ALIGN`` (:func:`stride_align`) and
multiplied back by the constexpr, so rows of a ``D = 88`` tensor, whose stride Triton cannot
prove 16-byte aligned by itself, are read with 16-byte vector and ``cp.async`` loads.

Every sum is taken in a fixed order by one program (no atomics), so results are bitwise
reproducible. That is also why the backward stays two kernels rather than FlashAttention-2's
single one: a fused dQ/dK/dV kernel walks queries inside each key block and must add its dQ
contributions with atomics (order-dependent sums), or serialise the key blocks of a head.
The price is two recomputed GEMMs (``S`` and ``dP`` in both kernels: 7 GEMMs against 5), about
40% more backward MMA work; at SEED's shapes the kernels report estimates every attention case
as bandwidth-bound, not MMA-bound (``seedfast kernels``: an estimate from the compiled code, no
GPU has timed the two designs against each other).

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
_TUNE_KEY = ["LQ_BUCKET", "LK_BUCKET", "HEAD_DIM", "CAUSAL", "HAS_KV_LENS"]


def _config(block_m: int, block_n: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


# SEED's shapes are small (Lq = 32; Lk = 32, 64 or 257) with large B·H, so tiles stay at
# 32-64 rows: a 32-query tile covers a whole Q-Former head without padding rows. The same
# tiles serve the forward, the dQ walk (BLOCK_M queries, BLOCK_N keys per step) and the
# dK/dV walk (BLOCK_N keys, BLOCK_M queries per step). Every config compiles for sm_90
# without register spills at D = 80, 88 and 96 (the tests read the compiled code): the 32×64
# and 64×64 tiles run 8 warps because with 4 the 32×64 dQ and forward kernels spilled at
# D = 80 and 96 and the 64×64 dK/dV kernel at D = 88 and 128; a 64-row tile is what puts
# all three kernels on wgmma on sm_90. On sm_80 (mma.sync keeps more of the split head dim's
# two accumulators live) the 64×64 dK/dV tile spills 12-84 bytes at D = 80, 88 and 96 and none
# at 64 or 128 (ptxas, 2026-12-07); the autotuner times it there against the spill-free
# 32-row tiles, and more warps do not help (16 warps cap registers at 128 and spill KBs).
GPU_CONFIGS = [_config(32, 32, 4, 2), _config(32, 64, 8, 2), _config(64, 64, 8, 2)]
# fp32 uses 3xTF32, which splits each operand into a high and a low half and triples the
# dots: only 16×16 tiles over 8 warps stay spill-free at D = 88..128 (32×32 spilled up to
# 14 KB in the dK/dV kernel); fp32 is the accuracy path, not the fast one.
FP32_GPU_CONFIGS = [_config(16, 16, 8, 2)]
# Up to 32 queries (the Q-Former), fp16/bf16: one 32-query tile holds every query of a head,
# and the keys-major forward and dQ kernels put 64-128 keys or the head dim on the MMA's M;
# the dK/dV kernel already has the key tile there, so it takes 64-key tiles only.
SHORT_Q_MAX = 32
SHORT_Q_GPU_CONFIGS = [_config(32, 64, 4, 2), _config(32, 64, 8, 2), _config(32, 128, 4, 2)]
SHORT_Q_DKDV_GPU_CONFIGS = [_config(32, 64, 8, 2)]
# Under the interpreter: one config, with different query and key tiles so that interpreted
# tests cross the causal diagonal at block boundaries that do not line up.
_INTERPRETER_FWD = _config(32, 64, 4, 1)
_INTERPRETER_DKDV = _config(64, 32, 4, 1)
_INTERPRETER_SHORT_Q_DKDV = _config(32, 64, 4, 1)


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
def _head_base(ptr, b, h, stride_b, stride_h, ALIGN: tl.constexpr):
    """Pointer to head ``(b, h)`` of a ``[B, H, L, D]`` tensor whose strides were passed divided
    by ``ALIGN``: multiplying by the constexpr tells the compiler the offset is a multiple of
    ``ALIGN`` elements (16 bytes), which Triton cannot infer from strides such as 88."""
    return ptr + b.to(tl.int64) * stride_b * ALIGN + h.to(tl.int64) * stride_h * ALIGN


@triton.jit
def _cols_ptrs(base, idx, stride, OFF: tl.constexpr, W: tl.constexpr, HEAD_DIM: tl.constexpr, ALIGN: tl.constexpr):
    """Pointers to head dims ``[OFF, OFF + W)`` of rows ``idx``, and the head-dim mask (a
    compile-time pattern, so it never splits a 16-byte vector when ``HEAD_DIM`` is a multiple of 8)."""
    dims = OFF + tl.arange(0, W)
    return base + idx[:, None] * (stride * ALIGN) + dims[None, :], dims < HEAD_DIM


@triton.jit
def _load(ptrs, mask, INTERPRET_BF16: tl.constexpr):
    x = tl.load(ptrs, mask=mask, other=0.0)
    if INTERPRET_BF16:
        x = x.to(tl.float32)
    return x


@triton.jit
def _load_head(base, idx, idx_ok, stride,
               HEAD_DIM: tl.constexpr, D_LO: tl.constexpr, D_HI: tl.constexpr, ALIGN: tl.constexpr,
               INTERPRET_BF16: tl.constexpr):
    """Rows ``idx`` of one head as ``(lo, hi)``: head dims ``[0, D_LO)`` and ``[D_LO, D_LO + D_HI)``
    (``hi`` is ``lo`` itself, unused, when ``D_HI == 0``)."""
    ptrs, dim_ok = _cols_ptrs(base, idx, stride, 0, D_LO, HEAD_DIM, ALIGN)
    lo = _load(ptrs, idx_ok[:, None] & dim_ok[None, :], INTERPRET_BF16)
    hi = lo
    if D_HI > 0:
        ptrs, dim_ok = _cols_ptrs(base, idx, stride, D_LO, D_HI, HEAD_DIM, ALIGN)
        hi = _load(ptrs, idx_ok[:, None] & dim_ok[None, :], INTERPRET_BF16)
    return lo, hi


@triton.jit
def _store_head(base, idx, idx_ok, stride, lo, hi,
                HEAD_DIM: tl.constexpr, D_LO: tl.constexpr, D_HI: tl.constexpr, ALIGN: tl.constexpr,
                INTERPRET_BF16: tl.constexpr):
    """Store the fp32 chunks ``(lo, hi)`` of rows ``idx`` of one head, rounded to the tensor's dtype."""
    ptrs, dim_ok = _cols_ptrs(base, idx, stride, 0, D_LO, HEAD_DIM, ALIGN)
    tl.store(ptrs, round_bf16(lo, INTERPRET_BF16), mask=idx_ok[:, None] & dim_ok[None, :])
    if D_HI > 0:
        ptrs, dim_ok = _cols_ptrs(base, idx, stride, D_LO, D_HI, HEAD_DIM, ALIGN)
        tl.store(ptrs, round_bf16(hi, INTERPRET_BF16), mask=idx_ok[:, None] & dim_ok[None, :])


@triton.jit
def _dot_head(a_lo, a_hi, b_lo, b_hi, D_HI: tl.constexpr, PRECISION: tl.constexpr):
    """``a @ bᵀ`` contracted over the whole head dim: one dot per column chunk, accumulated."""
    s = tl.dot(a_lo, tl.trans(b_lo), input_precision=PRECISION)
    if D_HI > 0:
        s = tl.dot(a_hi, tl.trans(b_hi), s, input_precision=PRECISION)
    return s


@triton.jit
def _mma_head(acc_lo, acc_hi, a, b_lo, b_hi, D_HI: tl.constexpr, PRECISION: tl.constexpr):
    """``acc += a @ b`` for each column chunk of the head dim (``b`` is ``[N, D]``-shaped)."""
    acc_lo = tl.dot(a, b_lo, acc_lo, input_precision=PRECISION)
    if D_HI > 0:
        acc_hi = tl.dot(a, b_hi, acc_hi, input_precision=PRECISION)
    return acc_lo, acc_hi


@triton.jit
def _row_dot_head(a_lo, a_hi, b_lo, b_hi, D_HI: tl.constexpr):
    """``rowsum(a · b)`` in fp32 over the whole head dim."""
    r = tl.sum(a_lo.to(tl.float32) * b_lo.to(tl.float32), axis=1)
    if D_HI > 0:
        r += tl.sum(a_hi.to(tl.float32) * b_hi.to(tl.float32), axis=1)
    return r


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
    H, LQ, LK, qk_scale,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_l,
    LQ_BUCKET, LK_BUCKET,
    HEAD_DIM: tl.constexpr, D_LO: tl.constexpr, D_HI: tl.constexpr, ALIGN: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_KV_LENS: tl.constexpr,
    INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    bh, b, h, start_m = _program_block(LQ, H, BLOCK_M)
    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < LQ

    k_base = _head_base(k_ptr, b, h, sk_b, sk_h, ALIGN)
    v_base = _head_base(v_ptr, b, h, sv_b, sv_h, ALIGN)
    q_lo, q_hi = _load_head(_head_base(q_ptr, b, h, sq_b, sq_h, ALIGN), rows, row_ok, sq_l,
                            HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)

    n_keys, hi = _key_walk(lens_ptr, b, LK, start_m, HAS_KV_LENS, CAUSAL, BLOCK_M)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc_lo = tl.zeros([BLOCK_M, D_LO], tl.float32)
    acc_hi = acc_lo
    if D_HI > 0:
        acc_hi = tl.zeros([BLOCK_M, D_HI], tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        col_ok = cols < LK
        k_lo, k_hi = _load_head(k_base, cols, col_ok, sk_l, HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)
        s = _dot_head(q_lo, q_hi, k_lo, k_hi, D_HI, PRECISION) * qk_scale
        s = tl.where(_keep(rows[:, None], cols[None, :], n_keys, CAUSAL), s, float("-inf"))
        # The walk only runs when kv_lens[b] >= 1, and then every row sees key 0 (j = 0 <= i)
        # in the first block: m_new is finite from there on, so exp2(m_i - m_new) is 0 on
        # the first step (m_i = -inf) and never -inf - (-inf) = NaN.
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v_lo, v_hi = _load_head(v_base, cols, col_ok, sv_l, HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)
        acc_lo = acc_lo * alpha[:, None]
        if D_HI > 0:
            acc_hi = acc_hi * alpha[:, None]
        acc_lo, acc_hi = _mma_head(acc_lo, acc_hi, _dot_operand(p, v_lo, INTERPRET_BF16), v_lo, v_hi, D_HI, PRECISION)
        m_i = m_new

    seen = l_i > 0.0
    inv_l = 1.0 / tl.where(seen, l_i, 1.0)
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * LN2, float("inf"))
    _store_head(_head_base(o_ptr, b, h, so_b, so_h, ALIGN), rows, row_ok, so_l,
                acc_lo * inv_l[:, None], acc_hi * inv_l[:, None], HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)
    tl.store(lse_ptr + bh.to(tl.int64) * LQ + rows, lse, mask=row_ok)


@triton.jit
def _dq_rows(q_ptr, o_ptr, do_ptr, lse_ptr, delta_ptr, bh, b, h, rows, row_ok, LQ,
             sq_b, sq_h, sq_l, so_b, so_h, so_l, sdo_b, sdo_h, sdo_l,
             HEAD_DIM: tl.constexpr, D_LO: tl.constexpr, D_HI: tl.constexpr, ALIGN: tl.constexpr,
             INTERPRET_BF16: tl.constexpr):
    """Both dQ kernels' per-row inputs: Q and dO, ``delta = rowsum(dO ∘ O)`` (also stored for the
    dK/dV kernel) and the base-2 exponent of each row's normaliser (+inf for rows that see nothing)."""
    q_lo, q_hi = _load_head(_head_base(q_ptr, b, h, sq_b, sq_h, ALIGN), rows, row_ok, sq_l,
                            HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)
    do_lo, do_hi = _load_head(_head_base(do_ptr, b, h, sdo_b, sdo_h, ALIGN), rows, row_ok, sdo_l,
                              HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)
    o_lo, o_hi = _load_head(_head_base(o_ptr, b, h, so_b, so_h, ALIGN), rows, row_ok, so_l,
                            HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)
    delta = _row_dot_head(do_lo, do_hi, o_lo, o_hi, D_HI)
    tl.store(delta_ptr + bh.to(tl.int64) * LQ + rows, delta, mask=row_ok)
    lse2 = tl.load(lse_ptr + bh.to(tl.int64) * LQ + rows, mask=row_ok, other=float("inf")) * RCP_LN2
    return q_lo, q_hi, do_lo, do_hi, delta, lse2


@triton.jit
def _attn_bwd_dq(
    q_ptr, k_ptr, v_ptr, lens_ptr, o_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    H, LQ, LK, qk_scale, scale,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_l,
    sdo_b, sdo_h, sdo_l, sdq_b, sdq_h, sdq_l,
    LQ_BUCKET, LK_BUCKET,
    HEAD_DIM: tl.constexpr, D_LO: tl.constexpr, D_HI: tl.constexpr, ALIGN: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_KV_LENS: tl.constexpr,
    INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    bh, b, h, start_m = _program_block(LQ, H, BLOCK_M)
    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < LQ

    q_lo, q_hi, do_lo, do_hi, delta, lse2 = _dq_rows(
        q_ptr, o_ptr, do_ptr, lse_ptr, delta_ptr, bh, b, h, rows, row_ok, LQ,
        sq_b, sq_h, sq_l, so_b, so_h, so_l, sdo_b, sdo_h, sdo_l, HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)

    k_base = _head_base(k_ptr, b, h, sk_b, sk_h, ALIGN)
    v_base = _head_base(v_ptr, b, h, sv_b, sv_h, ALIGN)
    n_keys, hi = _key_walk(lens_ptr, b, LK, start_m, HAS_KV_LENS, CAUSAL, BLOCK_M)

    dq_lo = tl.zeros([BLOCK_M, D_LO], tl.float32)
    dq_hi = dq_lo
    if D_HI > 0:
        dq_hi = tl.zeros([BLOCK_M, D_HI], tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        col_ok = cols < LK
        k_lo, k_hi = _load_head(k_base, cols, col_ok, sk_l, HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)
        v_lo, v_hi = _load_head(v_base, cols, col_ok, sv_l, HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)
        s = _dot_head(q_lo, q_hi, k_lo, k_hi, D_HI, PRECISION) * qk_scale
        p = tl.where(_keep(rows[:, None], cols[None, :], n_keys, CAUSAL), tl.exp2(s - lse2[:, None]), 0.0)
        dp = _dot_head(do_lo, do_hi, v_lo, v_hi, D_HI, PRECISION)
        ds = p * (dp - delta[:, None])
        dq_lo, dq_hi = _mma_head(dq_lo, dq_hi, _dot_operand(ds, k_lo, INTERPRET_BF16), k_lo, k_hi, D_HI, PRECISION)

    _store_head(_head_base(dq_ptr, b, h, sdq_b, sdq_h, ALIGN), rows, row_ok, sdq_l, dq_lo * scale, dq_hi * scale,
                HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)


@triton.jit
def _attn_bwd_dkdv(
    q_ptr, k_ptr, v_ptr, lens_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    H, LQ, LK, qk_scale, scale,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l,
    sdo_b, sdo_h, sdo_l, sdk_b, sdk_h, sdk_l, sdv_b, sdv_h, sdv_l,
    LQ_BUCKET, LK_BUCKET,
    HEAD_DIM: tl.constexpr, D_LO: tl.constexpr, D_HI: tl.constexpr, ALIGN: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_KV_LENS: tl.constexpr,
    INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    bh, b, h, start_n = _program_block(LK, H, BLOCK_N)
    cols = start_n + tl.arange(0, BLOCK_N)
    col_ok = cols < LK

    k_lo, k_hi = _load_head(_head_base(k_ptr, b, h, sk_b, sk_h, ALIGN), cols, col_ok, sk_l,
                            HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)
    v_lo, v_hi = _load_head(_head_base(v_ptr, b, h, sv_b, sv_h, ALIGN), cols, col_ok, sv_l,
                            HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)

    n_keys = _visible_keys(lens_ptr, b, LK, HAS_KV_LENS)
    # Keys at or past n_keys are seen by nobody: an empty walk leaves their gradients at 0.
    hi = tl.where(start_n < n_keys, LQ, 0)
    lo = 0
    if CAUSAL:
        # Queries before start_n see none of these keys: start at the block holding query start_n.
        lo = (start_n // BLOCK_M) * BLOCK_M

    q_base = _head_base(q_ptr, b, h, sq_b, sq_h, ALIGN)
    do_base = _head_base(do_ptr, b, h, sdo_b, sdo_h, ALIGN)
    dk_lo = tl.zeros([BLOCK_N, D_LO], tl.float32)
    dv_lo = tl.zeros([BLOCK_N, D_LO], tl.float32)
    dk_hi = dk_lo
    dv_hi = dv_lo
    if D_HI > 0:
        dk_hi = tl.zeros([BLOCK_N, D_HI], tl.float32)
        dv_hi = tl.zeros([BLOCK_N, D_HI], tl.float32)
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        row_ok = rows < LQ
        q_lo, q_hi = _load_head(q_base, rows, row_ok, sq_l, HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)
        do_lo, do_hi = _load_head(do_base, rows, row_ok, sdo_l, HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)
        # lse = +inf past LQ makes those padding rows' probabilities exactly 0.
        lse2 = tl.load(lse_ptr + bh.to(tl.int64) * LQ + rows, mask=row_ok, other=float("inf")) * RCP_LN2
        delta = tl.load(delta_ptr + bh.to(tl.int64) * LQ + rows, mask=row_ok, other=0.0)
        # Transposed scores [BLOCK_N, BLOCK_M], so that Pᵀ and dSᵀ feed their dots directly.
        s_t = _dot_head(k_lo, k_hi, q_lo, q_hi, D_HI, PRECISION) * qk_scale
        p_t = tl.where(_keep(rows[None, :], cols[:, None], n_keys, CAUSAL), tl.exp2(s_t - lse2[None, :]), 0.0)
        dv_lo, dv_hi = _mma_head(dv_lo, dv_hi, _dot_operand(p_t, do_lo, INTERPRET_BF16), do_lo, do_hi, D_HI, PRECISION)
        dp_t = _dot_head(v_lo, v_hi, do_lo, do_hi, D_HI, PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk_lo, dk_hi = _mma_head(dk_lo, dk_hi, _dot_operand(ds_t, q_lo, INTERPRET_BF16), q_lo, q_hi, D_HI, PRECISION)

    _store_head(_head_base(dk_ptr, b, h, sdk_b, sdk_h, ALIGN), cols, col_ok, sdk_l, dk_lo * scale, dk_hi * scale,
                HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)
    _store_head(_head_base(dv_ptr, b, h, sdv_b, sdv_h, ALIGN), cols, col_ok, sdv_l, dv_lo, dv_hi,
                HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)


@triton.jit
def _mma_head_t(acc_lo, acc_hi, b_lo, b_hi, a, D_HI: tl.constexpr, PRECISION: tl.constexpr):
    """``accᵀ += bᵀ @ a`` for each column chunk of the head dim: the head dim is the MMA's M."""
    acc_lo = tl.dot(tl.trans(b_lo), a, acc_lo, input_precision=PRECISION)
    if D_HI > 0:
        acc_hi = tl.dot(tl.trans(b_hi), a, acc_hi, input_precision=PRECISION)
    return acc_lo, acc_hi


@triton.jit
def _attn_fwd_keys_major(
    q_ptr, k_ptr, v_ptr, lens_ptr, o_ptr, lse_ptr,
    H, LQ, LK, qk_scale,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_l,
    LQ_BUCKET, LK_BUCKET,
    HEAD_DIM: tl.constexpr, D_LO: tl.constexpr, D_HI: tl.constexpr, ALIGN: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_KV_LENS: tl.constexpr,
    INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """:func:`_attn_fwd` for ``LQ <= BLOCK_M`` (the Q-Former's 32 queries), computed transposed:
    ``Sᵀ = K Qᵀ`` and ``Oᵀ += Vᵀ Pᵀ`` put the key tile and the head dim, not the 32 queries, on
    the MMA's M, which must be 64 for wgmma on sm_90. No rows are padded to get there."""
    bh, b, h, start_m = _program_block(LQ, H, BLOCK_M)
    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < LQ

    k_base = _head_base(k_ptr, b, h, sk_b, sk_h, ALIGN)
    v_base = _head_base(v_ptr, b, h, sv_b, sv_h, ALIGN)
    q_lo, q_hi = _load_head(_head_base(q_ptr, b, h, sq_b, sq_h, ALIGN), rows, row_ok, sq_l,
                            HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)

    n_keys, hi = _key_walk(lens_ptr, b, LK, start_m, HAS_KV_LENS, CAUSAL, BLOCK_M)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc_lo = tl.zeros([D_LO, BLOCK_M], tl.float32)
    acc_hi = acc_lo
    if D_HI > 0:
        acc_hi = tl.zeros([D_HI, BLOCK_M], tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        col_ok = cols < LK
        k_lo, k_hi = _load_head(k_base, cols, col_ok, sk_l, HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)
        s_t = _dot_head(k_lo, k_hi, q_lo, q_hi, D_HI, PRECISION) * qk_scale
        s_t = tl.where(_keep(rows[None, :], cols[:, None], n_keys, CAUSAL), s_t, float("-inf"))
        # As in _attn_fwd: every row sees key 0 in the first block, so m_new is finite.
        m_new = tl.maximum(m_i, tl.max(s_t, axis=0))
        alpha = tl.exp2(m_i - m_new)
        p_t = tl.exp2(s_t - m_new[None, :])
        l_i = l_i * alpha + tl.sum(p_t, axis=0)
        v_lo, v_hi = _load_head(v_base, cols, col_ok, sv_l, HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)
        acc_lo = acc_lo * alpha[None, :]
        if D_HI > 0:
            acc_hi = acc_hi * alpha[None, :]
        acc_lo, acc_hi = _mma_head_t(acc_lo, acc_hi, v_lo, v_hi, _dot_operand(p_t, v_lo, INTERPRET_BF16),
                                     D_HI, PRECISION)
        m_i = m_new

    seen = l_i > 0.0
    inv_l = 1.0 / tl.where(seen, l_i, 1.0)
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * LN2, float("inf"))
    _store_head(_head_base(o_ptr, b, h, so_b, so_h, ALIGN), rows, row_ok, so_l,
                tl.trans(acc_lo * inv_l[None, :]), tl.trans(acc_hi * inv_l[None, :]),
                HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)
    tl.store(lse_ptr + bh.to(tl.int64) * LQ + rows, lse, mask=row_ok)


@triton.jit
def _attn_bwd_dq_keys_major(
    q_ptr, k_ptr, v_ptr, lens_ptr, o_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    H, LQ, LK, qk_scale, scale,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_l,
    sdo_b, sdo_h, sdo_l, sdq_b, sdq_h, sdq_l,
    LQ_BUCKET, LK_BUCKET,
    HEAD_DIM: tl.constexpr, D_LO: tl.constexpr, D_HI: tl.constexpr, ALIGN: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_KV_LENS: tl.constexpr,
    INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """:func:`_attn_bwd_dq` for ``LQ <= BLOCK_M``, transposed like :func:`_attn_fwd_keys_major`:
    ``Sᵀ = K Qᵀ``, ``dPᵀ = V dOᵀ`` and ``dQᵀ += Kᵀ dSᵀ`` have the key tile or the head dim as M."""
    bh, b, h, start_m = _program_block(LQ, H, BLOCK_M)
    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < LQ

    q_lo, q_hi, do_lo, do_hi, delta, lse2 = _dq_rows(
        q_ptr, o_ptr, do_ptr, lse_ptr, delta_ptr, bh, b, h, rows, row_ok, LQ,
        sq_b, sq_h, sq_l, so_b, so_h, so_l, sdo_b, sdo_h, sdo_l, HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)

    k_base = _head_base(k_ptr, b, h, sk_b, sk_h, ALIGN)
    v_base = _head_base(v_ptr, b, h, sv_b, sv_h, ALIGN)
    n_keys, hi = _key_walk(lens_ptr, b, LK, start_m, HAS_KV_LENS, CAUSAL, BLOCK_M)

    dq_lo = tl.zeros([D_LO, BLOCK_M], tl.float32)
    dq_hi = dq_lo
    if D_HI > 0:
        dq_hi = tl.zeros([D_HI, BLOCK_M], tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        col_ok = cols < LK
        k_lo, k_hi = _load_head(k_base, cols, col_ok, sk_l, HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)
        v_lo, v_hi = _load_head(v_base, cols, col_ok, sv_l, HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)
        s_t = _dot_head(k_lo, k_hi, q_lo, q_hi, D_HI, PRECISION) * qk_scale
        p_t = tl.where(_keep(rows[None, :], cols[:, None], n_keys, CAUSAL), tl.exp2(s_t - lse2[None, :]), 0.0)
        dp_t = _dot_head(v_lo, v_hi, do_lo, do_hi, D_HI, PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dq_lo, dq_hi = _mma_head_t(dq_lo, dq_hi, k_lo, k_hi, _dot_operand(ds_t, k_lo, INTERPRET_BF16),
                                   D_HI, PRECISION)

    _store_head(_head_base(dq_ptr, b, h, sdq_b, sdq_h, ALIGN), rows, row_ok, sdq_l,
                tl.trans(dq_lo * scale), tl.trans(dq_hi * scale), HEAD_DIM, D_LO, D_HI, ALIGN, INTERPRET_BF16)


# The autotuned launch points: one per kernel for fp16/bf16, one for fp32, and one for
# fp16/bf16 with at most SHORT_Q_MAX queries.
_attn_fwd_kernel = _tuned(_attn_fwd, GPU_CONFIGS, _INTERPRETER_FWD)
_attn_bwd_dq_kernel = _tuned(_attn_bwd_dq, GPU_CONFIGS, _INTERPRETER_FWD)
_attn_bwd_dkdv_kernel = _tuned(_attn_bwd_dkdv, GPU_CONFIGS, _INTERPRETER_DKDV)
_attn_fwd_kernel_fp32 = _tuned(_attn_fwd, FP32_GPU_CONFIGS, _INTERPRETER_FWD)
_attn_bwd_dq_kernel_fp32 = _tuned(_attn_bwd_dq, FP32_GPU_CONFIGS, _INTERPRETER_FWD)
_attn_bwd_dkdv_kernel_fp32 = _tuned(_attn_bwd_dkdv, FP32_GPU_CONFIGS, _INTERPRETER_DKDV)
_attn_fwd_kernel_short_q = _tuned(_attn_fwd_keys_major, SHORT_Q_GPU_CONFIGS, _INTERPRETER_FWD)
_attn_bwd_dq_kernel_short_q = _tuned(_attn_bwd_dq_keys_major, SHORT_Q_GPU_CONFIGS, _INTERPRETER_FWD)
_attn_bwd_dkdv_kernel_short_q = _tuned(_attn_bwd_dkdv, SHORT_Q_DKDV_GPU_CONFIGS, _INTERPRETER_SHORT_Q_DKDV)


def _launch_points(q: torch.Tensor) -> tuple:
    """The (forward, dQ, dK/dV) autotuned kernels for ``q``'s dtype and query count."""
    if q.dtype == torch.float32:
        # fp32 keeps its 16×16 tiles (see FP32_GPU_CONFIGS), far from wgmma's M = 64 either way.
        return _attn_fwd_kernel_fp32, _attn_bwd_dq_kernel_fp32, _attn_bwd_dkdv_kernel_fp32
    if q.shape[2] <= SHORT_Q_MAX:
        return _attn_fwd_kernel_short_q, _attn_bwd_dq_kernel_short_q, _attn_bwd_dkdv_kernel_short_q
    return _attn_fwd_kernel, _attn_bwd_dq_kernel, _attn_bwd_dkdv_kernel


def head_dim_tiles(head_dim: int) -> tuple[int, int]:
    """``(D_LO, D_HI)``: the head dim as one or two power-of-two column chunks, each at least 16
    (the smallest ``tl.dot`` operand), ``D_HI = 0`` when one chunk covers it.

    A non-power-of-two head dim is split rather than padded to the next power of two: 80 =
    64 + 16 and 96 = 64 + 32 exactly, 88 = 64 + 32 with 8 masked columns (96 is also the
    smallest multiple of 16, the MMA's reduction step, that holds 88), where one 128-wide tile
    would waste 31-45% of every matmul.

    Parameters
    ----------
    head_dim : int
        ``D``, between 1 and :data:`MAX_HEAD_DIM`.

    Returns
    -------
    tuple of int
        ``(D_LO, D_HI)`` with ``D_LO + D_HI >= head_dim``.
    """
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in [1, {MAX_HEAD_DIM}], got {head_dim}")
    full = max(16, triton.next_power_of_2(head_dim))
    if full == head_dim or head_dim <= 16:
        return full, 0
    lo = full // 2
    return lo, max(16, triton.next_power_of_2(head_dim - lo))


def _bucket(n: int) -> int:
    # Autotune once per power-of-two length, not per exact length (text lengths vary).
    return triton.next_power_of_2(max(n, 1))


def stride_align(*tensors: torch.Tensor) -> int:
    """The constexpr ``ALIGN`` of a launch: ``16 // itemsize`` when every batch, head and row
    stride of ``tensors`` is a multiple of it (so each row starts on a 16-byte boundary
    relative to the base pointer), else 1.

    The strides are then passed divided by ``ALIGN`` and multiplied back in-kernel by the
    constexpr, which is how the compiler learns that rows of a ``D = 88`` (or 80, 96) tensor
    are 16-byte aligned and may be read with 16-byte vector loads; Triton's own hint covers
    only integers divisible by 16. Strides of size-1 dimensions never matter (see
    :func:`_strides`).
    """
    align = 16 // tensors[0].element_size()
    for x in tensors:
        for dim in range(3):
            stride = x.stride(dim) if x.shape[dim] > 1 else 0
            if stride % align or stride >= 2**31:
                return 1
    return align


def _strides(x: torch.Tensor, align: int) -> tuple[int, int, int]:
    # A size-1 dimension is only ever indexed at 0: its stride, whatever it is, becomes 0.
    return tuple((x.stride(dim) if x.shape[dim] > 1 else 0) // align for dim in range(3))


def _constexprs(q: torch.Tensor, kv_lens: torch.Tensor | None, causal: bool, align: int) -> dict:
    d_lo, d_hi = head_dim_tiles(q.shape[3])
    return dict(
        HEAD_DIM=q.shape[3], D_LO=d_lo, D_HI=d_hi, ALIGN=align, CAUSAL=causal, HAS_KV_LENS=kv_lens is not None,
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
    align = stride_align(q, k, v, out)
    consts = _constexprs(q, kv_lens, causal, align)

    def grid(meta):
        return (bsz * heads * triton.cdiv(lq, meta["BLOCK_M"]),)

    _launch_points(q)[0][grid](
        q, k, v, kv_lens if kv_lens is not None else lse, out, lse,
        heads, lq, lk, scale * LOG2E,
        *_strides(q, align), *_strides(k, align), *_strides(v, align), *_strides(out, align),
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
    # One ALIGN for both kernels: a fact about all eight tensors' strides.
    align = stride_align(q, k, v, out, grad_out, dq, dk, dv)
    consts = _constexprs(q, kv_lens, causal, align)
    lens = kv_lens if kv_lens is not None else lse

    def dq_grid(meta):
        return (bsz * heads * triton.cdiv(lq, meta["BLOCK_M"]),)

    def dkdv_grid(meta):
        return (bsz * heads * triton.cdiv(lk, meta["BLOCK_N"]),)

    def strides(*tensors):
        return [s for x in tensors for s in _strides(x, align)]

    _, dq_kernel, dkdv_kernel = _launch_points(q)
    dq_kernel[dq_grid](
        q, k, v, lens, out, grad_out, lse, delta, dq,
        heads, lq, lk, scale * LOG2E, scale,
        *strides(q, k, v, out, grad_out, dq),
        _bucket(lq), _bucket(lk), **consts,
    )
    dkdv_kernel[dkdv_grid](
        q, k, v, lens, grad_out, lse, delta, dk, dv,
        heads, lq, lk, scale * LOG2E, scale,
        *strides(q, k, v, grad_out, dk, dv),
        _bucket(lq), _bucket(lk), **consts,
    )
    return dq, dk, dv
