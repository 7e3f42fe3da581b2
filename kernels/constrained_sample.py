"""Grammar-constrained temperature / top-k / top-p sampling, one program per block of rows.

Every pass streams the row in ``BLOCK_V``-wide tiles that start on the 16-byte boundary at or
below the row's first id, masked per 16-byte chunk, so the logits arrive in 128-bit vector loads
whatever the row stride (see :func:`_tile` and :func:`vector_width`).

Each row is read as a *virtual row*: the contiguous id range its grammar state allows (text ids
``[0, text_vocab_size)``, or the codes) followed, for text rows, by the single ``<img>`` logit.
``<img>`` lies above every text id, so the virtual order is the id order and no mask tensor is
needed. Forced ``</img>`` rows read nothing.

Passes over a virtual row (each a stream of ``BLOCK_V``-wide tiles, accumulated per lane and
reduced once at the end, never sorted):

1. **stats**: max ``m`` and first argmax (greedy), min finite logit, finite count, NaN/+inf flag.
2. **bracket**: counts of tokens at or above ``NP`` logit pivots ``m - t·2^(i-3)`` (and
   the normaliser ``Z = Σ exp((x - m)/t)`` for rows without top-k). The top-k rule needs
   ``count ≥ k`` at the cut; top-p alone needs a lower bound of the mass above the cut to reach
   ``top_p·Z``. The highest pivot that satisfies it is the candidate cut ``lo``; up to
   ``MAX_REFINE`` further passes split ``[lo, hi)`` linearly while more than ``CAP`` tokens lie
   above ``lo``.
3. **extract**: the (at most ``CAP``) tokens ``x ≥ lo`` are compacted in id order into a per-row
   scratch buffer.
4. **exact filters on the candidates** (registers, pairwise in chunks): ``rank`` (tokens with a
   strictly larger logit) gives top-k; the mass of strictly larger top-k tokens gives top-p;
   then inverse-CDF sampling over the kept candidates in id order. For top-p without top-k the
   cut came from a mass bound, so the pass checks that every token below it is rejected too
   (some candidate is rejected, or the candidates' mass reaches ``top_p·Z``, or no finite token
   lies below the cut); otherwise the row falls back.

Rows with no filter sample over the whole row (one scan with early exit). Fallback rows (more
than ``CAP`` candidates, or a failed check) find the exact thresholds by an ``(NP + 1)``-ary
search over the monotone integer keys of the fp32 logits (about 10 passes per threshold) and
then scan. Every path keeps exactly the tokens the definitions keep; only the float sums that
compare masses with ``top_p`` and place ``u`` on the CDF are summed in another order than the
torch reference.

The uniform ``u`` is the same 32-bit hash as :func:`seedfast.ops.constrained_sample.row_uniform`,
computed in uint32, so every backend draws the same ``u`` for a row.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from seedfast.kernels._config import interpreting

LOG2E = tl.constexpr(1.4426950408889634)
FLT_MAX = tl.constexpr(3.4028234663852886e38)
NEG_INF = tl.constexpr(float("-inf"))
POS_INF = tl.constexpr(float("inf"))
BIG = tl.constexpr(2**30)

# The flag bits of seedfast.ops.constrained_sample (FLAG_NON_FINITE, FLAG_NOTHING_ALLOWED).
FLAG_NON_FINITE = tl.constexpr(1)
FLAG_NOTHING_ALLOWED = tl.constexpr(2)
DEFAULT_NUM_PIVOTS = 8
DEFAULT_MAX_REFINE = 3


# ---------------------------------------------------------------------------------------------
# The shared counter-based uniform


@triton.jit
def _hash32(x):
    """lowbias32 mixer on uint32 (wrapping multiplies, logical shifts)."""
    x ^= x >> 16
    x *= 0x7FEB352D
    x ^= x >> 15
    x *= 0x846CA68B
    x ^= x >> 16
    return x


@triton.jit
def _row_uniform(seed, offset, rows):
    """``row_uniform`` of the torch module: int64 ``seed``/``offset``/``rows`` → fp32 in [0, 1)."""
    h = _hash32(rows.to(tl.uint32) + 0x9E3779B9)
    h = _hash32(h ^ (offset & 0xFFFFFFFF).to(tl.uint32))
    h = _hash32(h ^ ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32))
    h = _hash32(h ^ (seed & 0xFFFFFFFF).to(tl.uint32))
    h = _hash32(h ^ ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32))
    return (h >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def _row_uniform_kernel(seed_ptr, offset_ptr, rows_ptr, out_ptr, N, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < N
    seed = tl.load(seed_ptr + i, mask=ok, other=0)
    offset = tl.load(offset_ptr + i, mask=ok, other=0)
    rows = tl.load(rows_ptr + i, mask=ok, other=0)
    tl.store(out_ptr + i, _row_uniform(seed, offset, rows), mask=ok)


def constrained_sample_uniform(seed: torch.Tensor, offset: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The kernels' uniform for int64 ``[N]`` ``seed``, ``offset``, ``rows`` (to test it against torch)."""
    n = rows.numel()
    out = torch.empty(n, dtype=torch.float32, device=rows.device)
    if n:
        block = 1024
        _row_uniform_kernel[(triton.cdiv(n, block),)](seed, offset, rows, out, n, BLOCK=block)
    return out


# ---------------------------------------------------------------------------------------------
# Building blocks


@triton.jit
def _key(x):
    """Monotone int32 key of fp32 ``x`` (-0.0 and +0.0 share key 0)."""
    bits = x.to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return tl.where(x == 0.0, 0, key)


@triton.jit
def _unkey(key):
    """The fp32 value of an int64 key inside the int32 key range (inverse of :func:`_key`)."""
    k32 = key.to(tl.int32)
    bits = tl.where(k32 >= 0, k32, k32 ^ 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _tile(logits_ptr, abase, shift, length, has_boi, boi_x, on, t, VEC: tl.constexpr):
    """fp32 logits of the ``VEC``-aligned positions ``t`` of each row, which of them exist, and
    their virtual positions ``j = t - shift`` (``[ROWS, BLOCK_V]`` each).

    Row ``r`` starts ``shift[r] < VEC`` elements after the aligned index ``abase[r]``. Loads are
    masked per ``VEC``-wide chunk (a chunk is read whole when it holds a position of the row), so
    they compile to 16-byte vector loads; the few neighbours read with a chunk lie in the same
    16-byte block as a row element, and ``valid`` drops them.
    """
    tt = t[None, :]
    j = tt - shift[:, None]
    chunk = (tt // VEC) * VEC
    load_ok = on[:, None] & (chunk < (shift + length)[:, None])
    x = tl.load(logits_ptr + abase[:, None] + tt, mask=load_ok, other=0.0).to(tl.float32)
    inside = load_ok & (j >= 0) & (j < length[:, None])
    extra = on[:, None] & has_boi[:, None] & (j == length[:, None])
    x = tl.where(extra, boi_x[:, None], x)
    return x, inside | extra, j


@triton.jit
def _pivot_pass(logits_ptr, abase, shift, length, has_boi, boi_x, on, m, scale, px, floor_x,
                COUNT: tl.constexpr, MASS: tl.constexpr, ZSUM: tl.constexpr,
                ROWS: tl.constexpr, NP: tl.constexpr, BLOCK_V: tl.constexpr, VEC: tl.constexpr):
    """One pass over the rows ``on``: for each pivot ``px[:, i]`` the count of finite tokens
    ``x ≥ px`` (``COUNT``) and their weight ``exp((x - m)/t)`` restricted to ``x ≥ floor_x``
    (``MASS``); and ``Z``, the weight of all finite tokens ``x ≥ floor_x`` (``ZSUM``)."""
    stop = tl.max(tl.where(on, shift + length + has_boi.to(tl.int32), 0))
    cnt_acc = tl.zeros([ROWS, NP, BLOCK_V], tl.int32)
    mass_acc = tl.zeros([ROWS, NP, BLOCK_V], tl.float32)
    z_acc = tl.zeros([ROWS, BLOCK_V], tl.float32)
    for j0 in range(0, stop, BLOCK_V):
        x, valid, unused_j = _tile(logits_ptr, abase, shift, length, has_boi, boi_x, on, j0 + tl.arange(0, BLOCK_V),
                                   VEC)
        live = valid & (x > NEG_INF) & (x < POS_INF)
        # NaN compares false with every pivot, so dead lanes drop out of all counts.
        x = tl.where(live, x, float("nan"))
        ge = x[:, None, :] >= px[:, :, None]
        if COUNT:
            cnt_acc += ge.to(tl.int32)
        if MASS or ZSUM:
            w = tl.where(live & (x >= floor_x[:, None]), tl.exp2((x - m[:, None]) * scale[:, None]), 0.0)
            if MASS:
                mass_acc += tl.where(ge, w[:, None, :], 0.0)
            if ZSUM:
                z_acc += w
    return tl.sum(cnt_acc, axis=2), tl.sum(mass_acc, axis=2), tl.sum(z_acc, axis=1)


@triton.jit
def _narrow(upd, px, cnt, lb, cond, lo, cnt_lo, hi, cnt_hi, lbm_hi, NP: tl.constexpr):
    """Move the bracket ``[lo, hi)`` of the rows ``upd`` to the highest pivot satisfying ``cond``
    (pivots descend with the lane), keeping ``count(x ≥ hi)`` and the lower bound ``lb`` of the
    mass above ``hi`` for the next pass's bound."""
    lanes = tl.arange(0, NP)[None, :]
    sel = tl.min(tl.where(cond, lanes, NP), axis=1)
    at = lanes == sel[:, None]
    below = lanes == sel[:, None] - 1
    has = upd & (sel < NP)
    above = upd & (sel > 0)
    return (tl.where(has, tl.sum(tl.where(at, px, 0.0), axis=1), lo),
            tl.where(has, tl.sum(tl.where(at, cnt, 0), axis=1), cnt_lo),
            tl.where(above, tl.sum(tl.where(below, px, 0.0), axis=1), hi),
            tl.where(above, tl.sum(tl.where(below, cnt, 0), axis=1), cnt_hi),
            tl.where(above, tl.sum(tl.where(below, lb, 0.0), axis=1), lbm_hi))


@triton.jit
def _cut_holds(cnt, lb, k_on, p_on, top_k, top_p, z_all):
    """Whether each pivot can be the candidate cut: with top-k, at least ``k`` tokens above it;
    with top-p alone, a mass bound above it reaching ``top_p·Z`` (with a 1/1024 margin, since
    ``Z`` was summed in another order; the candidate pass checks the cut anyway)."""
    with_k = k_on[:, None] & (cnt >= top_k[:, None])
    with_p = (p_on & ~k_on)[:, None] & (lb * (1.0 - 1.0 / 1024.0) >= (top_p * z_all)[:, None])
    return with_k | with_p


@triton.jit
def _mass_lower_bound(px, cnt, m, scale, cnt_hi, lbm_hi, NP: tl.constexpr):
    """Lower bound of the mass of tokens ``x ≥ px[:, i]``: the tokens between two pivots weigh at
    least the lower pivot's weight; ``lbm_hi`` bounds what lies above ``hi`` (count ``cnt_hi``)."""
    lanes = tl.arange(0, NP)
    shifted = tl.sum(tl.where(lanes[None, None, :] == lanes[None, :, None] - 1, cnt[:, None, :], 0), axis=2)
    prev = tl.where(lanes[None, :] == 0, cnt_hi[:, None], shifted)
    wp = tl.exp2((px - m[:, None]) * scale[:, None])
    return lbm_hi[:, None] + tl.cumsum((cnt - prev).to(tl.float32) * wp, axis=1)


@triton.jit
def _scan_sample(logits_ptr, abase, shift, length, has_boi, boi_x, on, m, scale, thr, target,
                 ROWS: tl.constexpr, BLOCK_V: tl.constexpr, VEC: tl.constexpr):
    """Inverse CDF in id order over the finite tokens ``x ≥ thr``: the first virtual position
    whose running weight exceeds ``target`` (or the last with weight, if rounding leaves
    ``target`` at the top). Stops once every row has found its token."""
    stop = tl.max(tl.where(on, shift + length + has_boi.to(tl.int32), 0))
    carry = tl.zeros([ROWS], tl.float32)
    found = ~on
    pick = tl.zeros([ROWS], tl.int32)
    last = tl.full([ROWS], -1, tl.int32)
    t0 = 0
    while (t0 < stop) & (tl.min(found.to(tl.int32)) == 0):
        x, valid, j = _tile(logits_ptr, abase, shift, length, has_boi, boi_x, on & ~found, t0 + tl.arange(0, BLOCK_V),
                            VEC)
        keep = valid & (x > NEG_INF) & (x < POS_INF) & (x >= thr[:, None])
        w = tl.where(keep, tl.exp2((x - m[:, None]) * scale[:, None]), 0.0)
        cum = tl.cumsum(w, axis=1) + carry[:, None]
        hit = (cum > target[:, None]) & (w > 0.0)
        first = tl.min(tl.where(hit, j, BIG), axis=1)
        now = ~found & (first < BIG)
        pick = tl.where(now, first, pick)
        found = found | now
        last = tl.maximum(last, tl.max(tl.where(w > 0.0, j, -1), axis=1))
        carry += tl.sum(w, axis=1)
        t0 += BLOCK_V
    return tl.where(on & ~found, tl.maximum(last, 0), pick)


# ---------------------------------------------------------------------------------------------
# The kernel


@triton.jit
def _constrained_sample_kernel(
    logits_ptr, pos_ptr, temp_ptr, topk_ptr, topp_ptr, seed_ptr, offset_ptr, stream_ptr,
    tokens_ptr, next_pos_ptr, flags_ptr, cand_x_ptr, cand_id_ptr,
    B, stride_row, s_temp, s_topk, s_topp, s_seed, s_off, s_stream,
    text_vocab, first_code, num_codes, boi_id, eoi_id, eos_id, codes_per_image,
    ROWS: tl.constexpr, BLOCK_V: tl.constexpr, NP: tl.constexpr, MAX_REFINE: tl.constexpr,
    CAP: tl.constexpr, CHUNK: tl.constexpr, VEC: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B
    pos = tl.load(pos_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    in_text = pos < 0
    forced = pos >= codes_per_image
    active = row_ok & ~forced
    lo_id = tl.where(in_text, 0, first_code)
    length = tl.where(in_text, text_vocab, num_codes)
    has_boi = in_text
    row_base = rows * stride_row
    # Tiles start on the VEC-aligned element at or below each row's first virtual id.
    abase = ((row_base + lo_id) // VEC) * VEC
    shift = (row_base + lo_id - abase).to(tl.int32)
    boi_x = tl.load(logits_ptr + row_base + boi_id, mask=active & in_text, other=0.0).to(tl.float32)

    temp = tl.load(temp_ptr + rows * s_temp, mask=row_ok, other=1.0)
    top_k = tl.load(topk_ptr + rows * s_topk, mask=row_ok, other=0)
    top_p = tl.load(topp_ptr + rows * s_topp, mask=row_ok, other=1.0)
    seed = tl.load(seed_ptr + rows * s_seed, mask=row_ok, other=0)
    offset = tl.load(offset_ptr + rows * s_off, mask=row_ok, other=0)
    stream = tl.load(stream_ptr + rows * s_stream, mask=row_ok, other=0)
    u = _row_uniform(seed, offset, stream)
    # NaN temperatures are greedy too; 1/t saturates at FLT_MAX so that (m - m)·scale stays 0.
    greedy = ~(temp > 0.0)
    scale = tl.minimum((1.0 / tl.where(greedy, 1.0, temp)) * LOG2E, FLT_MAX)

    # ---- pass 1: max / first argmax / min / finite count / NaN-or-+inf flag
    stop = tl.max(tl.where(active, shift + length + has_boi.to(tl.int32), 0))
    m_acc = tl.full([ROWS, BLOCK_V], NEG_INF, tl.float32)
    arg_acc = tl.zeros([ROWS, BLOCK_V], tl.int32)
    min_acc = tl.full([ROWS, BLOCK_V], POS_INF, tl.float32)
    fin_acc = tl.zeros([ROWS, BLOCK_V], tl.int32)
    bad_acc = tl.zeros([ROWS, BLOCK_V], tl.int32)
    for j0 in range(0, stop, BLOCK_V):
        x, valid, j = _tile(logits_ptr, abase, shift, length, has_boi, boi_x, active, j0 + tl.arange(0, BLOCK_V), VEC)
        live = valid & (x > NEG_INF) & (x < POS_INF)
        bad_acc |= (valid & ((x != x) | (x == POS_INF))).to(tl.int32)
        xm = tl.where(live, x, NEG_INF)
        # Strictly greater: each lane keeps its earliest maximum, so ties go to the lowest id.
        better = xm > m_acc
        arg_acc = tl.where(better, j, arg_acc)
        m_acc = tl.where(better, xm, m_acc)
        min_acc = tl.minimum(min_acc, tl.where(live, x, POS_INF))
        fin_acc += live.to(tl.int32)
    m = tl.max(m_acc, axis=1)
    arg = tl.min(tl.where(m_acc == m[:, None], arg_acc, BIG), axis=1)
    x_min = tl.min(min_acc, axis=1)
    n_fin = tl.sum(fin_acc, axis=1)
    non_finite = active & (tl.max(bad_acc, axis=1) > 0)
    nothing = active & ~non_finite & (n_fin == 0)
    error = non_finite | nothing
    sampling = active & ~error & ~greedy
    k_on = sampling & (top_k > 0) & (top_k < n_fin)
    p_on = sampling & ~(top_p >= 1.0)
    need_cand = k_on | p_on
    lanes = tl.arange(0, NP)
    z_all = tl.zeros([ROWS], tl.float32)

    # ---- pass 2: a first bracket from geometric pivots m - t·2^(i-3), and Z where needed
    lo = x_min
    cnt_lo = n_fin
    hi = m
    cnt_hi = tl.zeros([ROWS], tl.int32)
    lbm_hi = tl.zeros([ROWS], tl.float32)
    need_z = sampling & ~k_on
    if tl.max(sampling.to(tl.int32)) > 0:
        px = m[:, None] - temp[:, None] * tl.exp2(lanes.to(tl.float32) - 3.0)[None, :]
        if tl.max(need_z.to(tl.int32)) > 0:
            cnt, unused_mass, z_all = _pivot_pass(
                logits_ptr, abase, shift, length, has_boi, boi_x, sampling, m, scale, px,
                tl.full([ROWS], NEG_INF, tl.float32),
                COUNT=True, MASS=False, ZSUM=True, ROWS=ROWS, NP=NP, BLOCK_V=BLOCK_V, VEC=VEC)
        else:
            cnt, unused_mass, unused_z = _pivot_pass(
                logits_ptr, abase, shift, length, has_boi, boi_x, sampling, m, scale, px,
                tl.full([ROWS], NEG_INF, tl.float32),
                COUNT=True, MASS=False, ZSUM=False, ROWS=ROWS, NP=NP, BLOCK_V=BLOCK_V, VEC=VEC)
        lb = _mass_lower_bound(px, cnt, m, scale, cnt_hi, lbm_hi, NP)
        cond = _cut_holds(cnt, lb, k_on, p_on, top_k, top_p, z_all)
        lo, cnt_lo, hi, cnt_hi, lbm_hi = _narrow(need_cand, px, cnt, lb, cond, lo, cnt_lo, hi, cnt_hi, lbm_hi, NP)

    # ---- refinement: linear pivots inside [lo, hi) while too many candidates
    refine = need_cand & (cnt_lo > CAP)
    it = 0
    while (tl.max(refine.to(tl.int32)) > 0) & (it < MAX_REFINE):
        frac = (lanes + 1).to(tl.float32) / (NP + 1)
        px = hi[:, None] - (hi - lo)[:, None] * frac[None, :]
        cnt, unused_mass, unused_z = _pivot_pass(
            logits_ptr, abase, shift, length, has_boi, boi_x, refine, m, scale, px,
            tl.full([ROWS], NEG_INF, tl.float32),
            COUNT=True, MASS=False, ZSUM=False, ROWS=ROWS, NP=NP, BLOCK_V=BLOCK_V, VEC=VEC)
        lb = _mass_lower_bound(px, cnt, m, scale, cnt_hi, lbm_hi, NP)
        cond = _cut_holds(cnt, lb, k_on, p_on, top_k, top_p, z_all)
        lo, cnt_lo, hi, cnt_hi, lbm_hi = _narrow(refine, px, cnt, lb, cond, lo, cnt_lo, hi, cnt_hi, lbm_hi, NP)
        refine = need_cand & (cnt_lo > CAP)
        it += 1
    fallback = need_cand & (cnt_lo > CAP)
    cand = need_cand & ~fallback

    # ---- extract the candidates x ≥ lo, in id order, into this row's scratch slots
    slots = tl.arange(0, CAP)
    n_cand = tl.zeros([ROWS], tl.int32)
    tok_cand = tl.zeros([ROWS], tl.int64)
    if tl.max(cand.to(tl.int32)) > 0:
        stop_c = tl.max(tl.where(cand, shift + length + has_boi.to(tl.int32), 0))
        for j0 in range(0, stop_c, BLOCK_V):
            x, valid, j = _tile(logits_ptr, abase, shift, length, has_boi, boi_x, cand, j0 + tl.arange(0, BLOCK_V),
                                VEC)
            take = valid & (x > NEG_INF) & (x < POS_INF) & (x >= lo[:, None])
            slot = n_cand[:, None] + tl.cumsum(take.to(tl.int32), axis=1) - 1
            ok = take & (slot < CAP)
            vid = tl.where(j < length[:, None], lo_id[:, None] + j, boi_id)
            tl.store(cand_x_ptr + rows[:, None] * CAP + slot, x, mask=ok)
            tl.store(cand_id_ptr + rows[:, None] * CAP + slot, vid, mask=ok)
            n_cand += tl.sum(take.to(tl.int32), axis=1)
        # The scratch slots were written by other threads of this program.
        tl.debug_barrier()

        # ---- exact top-k / top-p on the candidates, then inverse CDF in id order
        cvalid = cand[:, None] & (slots[None, :] < n_cand[:, None])
        cx = tl.load(cand_x_ptr + rows[:, None] * CAP + slots[None, :], mask=cvalid, other=NEG_INF)
        cid = tl.load(cand_id_ptr + rows[:, None] * CAP + slots[None, :], mask=cvalid, other=0)
        cw = tl.where(cvalid, tl.exp2((cx - m[:, None]) * scale[:, None]), 0.0)
        stop_j = tl.max(tl.where(cand, n_cand, 0))
        rank = tl.zeros([ROWS, CAP], tl.int32)
        for c0 in range(0, stop_j, CHUNK):
            jj = c0 + tl.arange(0, CHUNK)
            jvalid = cand[:, None] & (jj[None, :] < n_cand[:, None])
            xj = tl.load(cand_x_ptr + rows[:, None] * CAP + jj[None, :], mask=jvalid, other=NEG_INF)
            rank += tl.sum(((xj[:, None, :] > cx[:, :, None]) & jvalid[:, None, :]).to(tl.int32), axis=2)
        keep_k = cvalid & (~k_on[:, None] | (rank < top_k[:, None]))
        t_k = tl.min(tl.where(keep_k, cx, POS_INF), axis=1)
        z_k = tl.where(k_on, tl.sum(tl.where(keep_k, cw, 0.0), axis=1), z_all)
        keep = keep_k
        if tl.max(p_on.to(tl.int32)) > 0:
            mass_gt = tl.zeros([ROWS, CAP], tl.float32)
            for c0 in range(0, stop_j, CHUNK):
                jj = c0 + tl.arange(0, CHUNK)
                jvalid = cand[:, None] & (jj[None, :] < n_cand[:, None])
                xj = tl.load(cand_x_ptr + rows[:, None] * CAP + jj[None, :], mask=jvalid, other=NEG_INF)
                wj = tl.where(jvalid & (xj >= t_k[:, None]), tl.exp2((xj - m[:, None]) * scale[:, None]), 0.0)
                mass_gt += tl.sum(tl.where(xj[:, None, :] > cx[:, :, None], wj[:, None, :], 0.0), axis=2)
            # The most probable tokens (no larger logit) are always kept.
            keep_p = ~p_on[:, None] | (mass_gt < (top_p * z_k)[:, None]) | (cx == m[:, None])
            keep = keep & keep_p
            # Top-p alone: every token below the cut must be rejected too. It is when some
            # candidate is, or when the candidates' mass (all above such a token) reaches top_p·Z,
            # or when there is no token below the cut; otherwise the row falls back.
            rejected = tl.max((cvalid & ~keep_p).to(tl.int32), axis=1) > 0
            complete = (tl.sum(cw, axis=1) >= top_p * z_k) | (n_cand == n_fin)
            bad_cut = cand & ~k_on & ~rejected & ~complete
            fallback = fallback | bad_cut
            cand = cand & ~bad_cut
        fw = tl.where(keep, cw, 0.0)
        target = u * tl.sum(fw, axis=1)
        cum = tl.cumsum(fw, axis=1)
        first = tl.min(tl.where((cum > target[:, None]) & (fw > 0.0), slots[None, :], CAP), axis=1)
        last = tl.max(tl.where(fw > 0.0, slots[None, :], -1), axis=1)
        chosen = tl.where(first < CAP, first, last)
        tok_cand = tl.sum(tl.where(slots[None, :] == chosen[:, None], cid, 0), axis=1).to(tl.int64)

    # ---- exact thresholds over the whole row for fallback rows (NP+1-ary search on keys)
    full = sampling & ~cand
    thr = tl.full([ROWS], NEG_INF, tl.float32)
    z_final = z_all
    tok_full = tl.zeros([ROWS], tl.int64)
    if tl.max(full.to(tl.int32)) > 0:
        t_k_fb = tl.full([ROWS], NEG_INF, tl.float32)
        todo = fallback & k_on
        # Largest key K with count(x ≥ K) ≥ k; count(≥ key(x_min)) = n_fin > k, count(≥ key(m)+1) = 0.
        klo = _key(x_min).to(tl.int64)
        khi = _key(m).to(tl.int64) + 1
        while tl.max((todo & (khi - klo > 1)).to(tl.int32)) > 0:
            step = todo & (khi - klo > 1)
            keys = klo[:, None] + ((khi - klo)[:, None] * (lanes + 1)[None, :]) // (NP + 1)
            cnt, unused_mass, unused_z = _pivot_pass(
                logits_ptr, abase, shift, length, has_boi, boi_x, step, m, scale, _unkey(keys), t_k_fb,
                COUNT=True, MASS=False, ZSUM=False, ROWS=ROWS, NP=NP, BLOCK_V=BLOCK_V, VEC=VEC)
            # The pivots ascend; the count condition holds on a prefix of them.
            n_ok = tl.sum((cnt >= top_k[:, None]).to(tl.int32), axis=1)
            before = lanes[None, :] < n_ok[:, None]
            klo = tl.where(step, tl.max(tl.where(before, keys, klo[:, None]), axis=1), klo)
            khi = tl.where(step, tl.min(tl.where(before, khi[:, None], keys), axis=1), khi)
        t_k_fb = tl.where(todo, _unkey(klo), NEG_INF)
        todo = fallback & p_on
        if tl.max(todo.to(tl.int32)) > 0:
            # Top-p normaliser: the top-k mass (all of Z without top-k).
            unused_cnt, unused_mass, z_k_fb = _pivot_pass(
                logits_ptr, abase, shift, length, has_boi, boi_x, todo & k_on, m, scale,
                tl.full([ROWS, NP], POS_INF, tl.float32), t_k_fb,
                COUNT=False, MASS=False, ZSUM=True, ROWS=ROWS, NP=NP, BLOCK_V=BLOCK_V, VEC=VEC)
            z_k_fb = tl.where(k_on, z_k_fb, z_all)
            bound = top_p * z_k_fb
            # Smallest key K with mass(key > K) < top_p·Z: that mass is the mass of x ≥ unkey(K + 1).
            klo = _key(tl.where(k_on, t_k_fb, x_min)).to(tl.int64) - 1
            khi = _key(m).to(tl.int64)
            while tl.max((todo & (khi - klo > 1)).to(tl.int32)) > 0:
                step = todo & (khi - klo > 1)
                keys = klo[:, None] + ((khi - klo)[:, None] * (lanes + 1)[None, :]) // (NP + 1)
                unused_cnt, mass, unused_z = _pivot_pass(
                    logits_ptr, abase, shift, length, has_boi, boi_x, step, m, scale, _unkey(keys + 1), t_k_fb,
                    COUNT=False, MASS=True, ZSUM=False, ROWS=ROWS, NP=NP, BLOCK_V=BLOCK_V, VEC=VEC)
                # The mass condition holds on a suffix of the ascending pivots.
                n_big = NP - tl.sum((mass < bound[:, None]).to(tl.int32), axis=1)
                before = lanes[None, :] < n_big[:, None]
                klo = tl.where(step, tl.max(tl.where(before, keys, klo[:, None]), axis=1), klo)
                khi = tl.where(step, tl.min(tl.where(before, khi[:, None], keys), axis=1), khi)
            thr = tl.where(todo, tl.maximum(_unkey(khi), t_k_fb), thr)
        thr = tl.where(fallback & ~p_on, t_k_fb, thr)
        if tl.max(fallback.to(tl.int32)) > 0:
            unused_cnt, unused_mass, z_fb = _pivot_pass(
                logits_ptr, abase, shift, length, has_boi, boi_x, fallback, m, scale,
                tl.full([ROWS, NP], POS_INF, tl.float32), thr,
                COUNT=False, MASS=False, ZSUM=True, ROWS=ROWS, NP=NP, BLOCK_V=BLOCK_V, VEC=VEC)
            z_final = tl.where(fallback, z_fb, z_final)
        j_pick = _scan_sample(logits_ptr, abase, shift, length, has_boi, boi_x, full, m, scale, thr, u * z_final,
                              ROWS, BLOCK_V, VEC)
        tok_full = tl.where(j_pick < length, lo_id + j_pick, boi_id).to(tl.int64)

    # ---- tokens, next grammar state, flags
    tok = tl.where(arg < length, lo_id + arg, boi_id).to(tl.int64)
    tok = tl.where(cand, tok_cand, tok)
    tok = tl.where(full, tok_full, tok)
    tok = tl.where(error, eos_id, tok)
    tok = tl.where(forced, eoi_id, tok)
    nxt = tl.where(in_text & (tok == boi_id), 0, -1)
    nxt = tl.where(~in_text & ~forced & ~error, pos + 1, nxt)
    flags = tl.where(non_finite, FLAG_NON_FINITE, 0) + tl.where(nothing, FLAG_NOTHING_ALLOWED, 0)
    tl.store(tokens_ptr + rows, tok, mask=row_ok)
    tl.store(next_pos_ptr + rows, nxt.to(tl.int32), mask=row_ok)
    tl.store(flags_ptr + rows, flags.to(tl.int32), mask=row_ok)


# ---------------------------------------------------------------------------------------------
# Launcher

# The kernel's compile-time parameters, set by the launcher.
_KERNEL_CONSTEXPRS = ("ROWS", "BLOCK_V", "NP", "MAX_REFINE", "CAP", "CHUNK", "VEC")


def launch_config(b: int, v: int, cap: int | None, *, interpret: bool | None = None) -> dict:
    """Tile sizes: one row per program on a GPU; under the interpreter (``interpret``, by default
    ``TRITON_INTERPRET``) many rows per program, since numpy runs whole tiles at once and every
    program costs a fixed overhead."""
    if interpreting() if interpret is None else interpret:
        rows = min(1024, triton.next_power_of_2(max(b, 1)))
        block_v = max(16, min(triton.next_power_of_2(v), 65536 // rows))
        cap = 32 if cap is None else cap
        return {"ROWS": rows, "BLOCK_V": block_v, "CAP": cap, "CHUNK": min(cap, 32), "num_warps": 1}
    # 8 elements per thread and tile: two 16-byte loads of float32 or one of 16-bit floats, and
    # per-lane pivot accumulators that fit the registers (no spills on sm_80/sm_90, checked by
    # tests/ops/test_constrained_sample.py).
    block_v = 2048 if v >= 4096 else max(128, triton.next_power_of_2(v))
    # 512 candidates hold the first bracket of top-50 on typical 32k-text rows without a refine pass.
    cap = (512 if v >= 4096 else 256) if cap is None else cap
    return {"ROWS": 1, "BLOCK_V": block_v, "CAP": cap, "CHUNK": min(cap, 16), "num_warps": 8 if v >= 4096 else 4}


def vector_width(logits: torch.Tensor) -> int:
    """Elements per 16-byte load (4 for float32, 8 for 16-bit floats) when ``logits`` starts on a
    16-byte boundary; 1 otherwise, so that no load reads outside the 16-byte blocks of its row."""
    size = logits.element_size()
    return 16 // size if logits.data_ptr() % 16 == 0 else 1


def constrained_sample_forward(
    logits: torch.Tensor,
    image_pos: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    stream: torch.Tensor,
    layout: tuple[int, int, int, int, int, int, int],
    *,
    cap: int | None = None,
    num_pivots: int = DEFAULT_NUM_PIVOTS,
    max_refine: int = DEFAULT_MAX_REFINE,
    rows: int | None = None,
    block_v: int | None = None,
    vec: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the sampler on ``logits [B, V]`` (unit stride in V) and per-row ``[B]`` tensors
    (any stride, e.g. expanded scalars): ``temperature``/``top_p`` float32, ``top_k``/``seed``/
    ``offset``/``stream`` int64, ``image_pos`` int32/int64.

    ``layout`` is ``(text_vocab_size, first_code_id, num_codes, boi_id, eoi_id, eos_id,
    codes_per_image)``. ``cap`` (candidates per row), ``num_pivots`` and ``max_refine`` tune the
    threshold search, ``rows`` (rows per program) and ``block_v`` (tile width) the tiling; all
    are powers of two (``max_refine`` any int >= 0), default to :func:`launch_config`, and change
    speed, never the kept set. ``vec`` (elements per vector load, default :func:`vector_width`)
    must divide 16 bytes and the alignment of ``logits``.

    Returns ``(tokens int64 [B], next_image_pos int32 [B], flags int32 [B])``.
    """
    b, v = logits.shape
    assert logits.stride(1) == 1 or v <= 1, "unit stride in V required"
    dev = logits.device
    tokens = torch.empty(b, dtype=torch.int64, device=dev)
    next_pos = torch.empty(b, dtype=torch.int32, device=dev)
    flags = torch.empty(b, dtype=torch.int32, device=dev)
    if b == 0:
        return tokens, next_pos, flags
    cfg = launch_config(b, v, cap)
    cfg["ROWS"] = rows or cfg["ROWS"]
    cfg["BLOCK_V"] = block_v or cfg["BLOCK_V"]
    cfg["CHUNK"] = min(cfg["CHUNK"], cfg["CAP"])
    vec = vector_width(logits) if vec is None else vec
    for name, value in (("cap", cfg["CAP"]), ("num_pivots", num_pivots), ("rows", cfg["ROWS"]),
                        ("block_v", cfg["BLOCK_V"]), ("vec", vec)):
        assert value >= 1 and value & (value - 1) == 0, f"{name} must be a power of two, got {value}"
    assert vec * logits.element_size() <= 16 and logits.data_ptr() % (vec * logits.element_size()) == 0, (
        f"vec={vec} needs logits aligned to {vec * logits.element_size()} bytes")
    cfg["BLOCK_V"] = max(cfg["BLOCK_V"], vec)
    cand_x = torch.empty((b, cfg["CAP"]), dtype=torch.float32, device=dev)
    cand_id = torch.empty((b, cfg["CAP"]), dtype=torch.int32, device=dev)
    text_vocab, first_code, num_codes, boi, eoi, eos, n_codes = layout
    _constrained_sample_kernel[(triton.cdiv(b, cfg["ROWS"]),)](
        logits, image_pos, temperature, top_k, top_p, seed, offset, stream,
        tokens, next_pos, flags, cand_x, cand_id,
        b, logits.stride(0), temperature.stride(0), top_k.stride(0), top_p.stride(0), seed.stride(0),
        offset.stride(0), stream.stride(0),
        text_vocab, first_code, num_codes, boi, eoi, eos, n_codes,
        ROWS=cfg["ROWS"], BLOCK_V=cfg["BLOCK_V"], NP=num_pivots, MAX_REFINE=max_refine,
        CAP=cfg["CAP"], CHUNK=cfg["CHUNK"], VEC=vec, num_warps=cfg["num_warps"],
    )
    return tokens, next_pos, flags
