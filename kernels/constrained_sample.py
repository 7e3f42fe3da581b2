"""Grammar-constrained temperature / top-k / top-p sampling: a split two-pass sampler, and the
one-program-per-row pivot sampler that is its exact fallback.

Each row is read as a *virtual row*: the contiguous id range its grammar state allows (text ids
``[0, text_vocab_size)``, or the codes) followed, for text rows, by the single ``<img>`` logit.
``<img>`` lies above every text id, so the virtual order is the id order and no mask tensor is
needed. Forced ``</img>`` rows read nothing. Tiles of ``BLOCK_V`` positions start on the 16-byte
boundary at or below the row's first id and are masked per 16-byte chunk, so the logits arrive in
128-bit vector loads whatever the row stride (see :func:`_tile` and :func:`vector_width`).

**The split sampler** (the default; five launches, no host synchronisation, shapes fixed by
``B`` and ``V``, so CUDA-graph capturable). A row's tiles are spread over up to one program each
(:func:`programs_per_row`: ~1000 one-warp programs in all, so a single row of V = 40194 runs on
126 programs). The tile is the unit of every float sum and the histograms are integers, so the
tokens do not depend on how many programs share a row.

1. **pass 1** (``_split_tiles_kernel``), per tile: max, first argmax, ``Σ exp((x - tile max)/t)``,
   finite count, NaN/+inf bit. For rows with top-k or top-p, each finite token is also added (by
   integer atomics) to the row's histogram over ``NUM_BUCKETS`` value buckets: 2^5 per binade of
   ``|x|`` in ``[2^-20, 2^12)`` plus a tiny and a huge bucket per sign, numbered from the top.
   Each bucket holds a count and the weight ``exp((x - edge)/t)`` relative to its upper edge in
   fixed point (2^-43), an exact integer sum in any order.
2. **select** (``_split_select_kernel``), per row: the tiles merged in tile order (``m``, first
   argmax, ``Z`` online-softmax style); greedy, error and forced rows finish here. Filtered rows
   walk the histogram from the top: top-k's bucket is the first whose cumulative count reaches
   ``k``; top-p's is the last non-empty bucket whose mass above is below ``top_p·Z`` (with
   top-k, below ``top_p`` times the mass above k's bucket, a lower bound of the top-k mass, so
   the boundary lies between). The buckets ``[c_lo, c_hi]`` between hold the candidates.
3. **pass 2** (``_split_collect_kernel``), per tile: the weight of the tokens above ``c_lo`` (all
   kept) and the tokens inside ``[c_lo, c_hi]`` appended to the row's candidates.
4. **finish** (``_split_finish_kernel``), per row: the candidates sorted by (logit descending,
   id): the k-th largest logit is the top-k cut, and the last tie group whose strictly larger
   (top-k) tokens weigh less than ``top_p`` times the top-k total is the top-p cut, exactly the
   definitions. The kept weight per tile (pass 2's sum plus the kept candidates, added in fixed
   point) locates the tile where ``u`` times the total falls; the inverse CDF in id order runs
   inside that one tile.
5. Rows whose candidate buckets hold more than ``CAP`` tokens, or top-p rows whose buckets above
   them are too wide for the temperature (``width/t > 20`` in log2 units, where the fixed-point masses would
   lose precision), are handed to the pivot sampler (``_constrained_sample_kernel`` with
   ``ONLY_FALLBACK``), which every other row leaves at once.

**The pivot sampler** (``method="rows"``, and the fallback): one program per block of rows,
passes over the row accumulated per lane and reduced once at the end, never sorted:

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
then scan.

Both samplers keep exactly the tokens the definitions keep; only the float sums that compare
masses with ``top_p`` and place ``u`` on the CDF are summed in another order than the torch
reference. The uniform ``u`` is the same 32-bit hash as
:func:`seedfast.ops.constrained_sample.row_uniform`, computed in uint32, so every backend draws
the same ``u`` for a row.
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

# The split sampler's buckets (see the module docstring): 2^MANT_BITS buckets per binade of
# |x| for the binades [2^(EXP_LO - 127), 2^(EXP_LO - 127 + NUM_EXP)), one bucket of tiny |x| and one
# of huge |x| on each side of zero.
MANT_BITS = 5
EXP_LO = 107
NUM_EXP = 32
NUM_BUCKETS = 2 * ((NUM_EXP << MANT_BITS) + 2)
# Fixed point of the bucket masses (each term in (0, 1], summed exactly in int64 whatever the order;
# no overflow below 2^20 tokens per row).
FIX = tl.constexpr(2.0**43)
# Widest bucket (in log2 units of weight) whose fixed-point mass is trusted above the candidates.
MAX_WIDTH_LOG2 = tl.constexpr(20.0)
# Per-row state between the split kernels: ints [mode, filters, c_lo, c_hi, n_above, n_cand, ..]
# and floats [m, mass above the candidates, Z, ..].
ROW_INTS = tl.constexpr(8)
ROW_FLOATS = tl.constexpr(4)
MODE_DONE = tl.constexpr(0)
MODE_SAMPLE = tl.constexpr(1)
MODE_FALLBACK = tl.constexpr(2)
BAD_BIT = tl.constexpr(1 << 30)


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
    tokens_ptr, next_pos_ptr, flags_ptr, cand_x_ptr, cand_id_ptr, mode_ptr,
    B, stride_row, s_temp, s_topk, s_topp, s_seed, s_off, s_stream,
    text_vocab, first_code, num_codes, boi_id, eoi_id, eos_id, codes_per_image,
    ROWS: tl.constexpr, BLOCK_V: tl.constexpr, NP: tl.constexpr, MAX_REFINE: tl.constexpr,
    CAP: tl.constexpr, CHUNK: tl.constexpr, VEC: tl.constexpr, ONLY_FALLBACK: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B
    if ONLY_FALLBACK:
        # The exact whole-row search for the rows the split sampler handed over (mode_ptr: its
        # per-row state); every other row is left alone.
        row_ok = row_ok & (tl.load(mode_ptr + rows * ROW_INTS, mask=row_ok, other=0) == MODE_FALLBACK)
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
# The split sampler: many programs per row, two passes over the logits


@triton.jit
def _tile_at(logits_ptr, abase, shift, length, has_boi, boi_x, on, tt, VEC: tl.constexpr):
    """:func:`_tile` for per-row positions ``tt [ROWS, BLOCK_V]`` (each row its own tile)."""
    j = tt - shift[:, None]
    chunk = (tt // VEC) * VEC
    load_ok = on[:, None] & (chunk < (shift + length)[:, None]) & (tt >= 0)
    x = tl.load(logits_ptr + abase[:, None] + tt, mask=load_ok, other=0.0).to(tl.float32)
    inside = load_ok & (j >= 0) & (j < length[:, None])
    extra = on[:, None] & has_boi[:, None] & (j == length[:, None])
    x = tl.where(extra, boi_x[:, None], x)
    return x, inside | extra, j


@triton.jit
def _row_layout(pos_ptr, rows, row_ok, stride_row, text_vocab, first_code, num_codes, codes_per_image,
                VEC: tl.constexpr):
    """Each row's grammar state and virtual row (see :func:`_tile`): ``pos, in_text, forced, active,
    lo_id, length, abase, shift, span`` (``span``: positions from ``abase`` to the row's end)."""
    pos = tl.load(pos_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    in_text = pos < 0
    forced = pos >= codes_per_image
    active = row_ok & ~forced
    lo_id = tl.where(in_text, 0, first_code)
    length = tl.where(in_text, text_vocab, num_codes)
    row_base = rows * stride_row
    abase = ((row_base + lo_id) // VEC) * VEC
    shift = (row_base + lo_id - abase).to(tl.int32)
    span = shift + length + in_text.to(tl.int32)
    return pos, in_text, forced, active, lo_id, length, abase, shift, span


@triton.jit
def _row_scale(temp_ptr, rows, row_ok, s_temp):
    """Greedy rows (``t <= 0`` or NaN) and ``log2(e)/t`` (saturated at FLT_MAX)."""
    temp = tl.load(temp_ptr + rows * s_temp, mask=row_ok, other=1.0)
    greedy = ~(temp > 0.0)
    scale = tl.minimum((1.0 / tl.where(greedy, 1.0, temp)) * LOG2E, FLT_MAX)
    return greedy, scale


@triton.jit
def _bucket(x, MB: tl.constexpr, E_LO: tl.constexpr, NE: tl.constexpr):
    """Bucket of finite fp32 ``x``, counted from the top (0 holds the largest values; monotone
    non-increasing in ``x``; -0.0 and +0.0 share a bucket), and the bucket's upper edge."""
    bits = x.to(tl.int32, bitcast=True)
    neg = (bits < 0) & (x != 0.0)
    mag_bits = bits & 0x7FFFFFFF
    e = mag_bits >> 23
    trunc = mag_bits >> (23 - MB)
    tiny = e < E_LO
    huge = e >= E_LO + NE
    mag = tl.where(tiny, 0, tl.where(huge, (NE << MB) + 1, trunc - ((E_LO << MB) - 1)))
    half = (NE << MB) + 2
    jtop = tl.where(neg, half + mag, half - 1 - mag)
    pos_edge = tl.where(tiny, E_LO << 23, tl.where(huge, 0x7F800000, (trunc + 1) << (23 - MB)))
    neg_edge = tl.where(tiny, 0, (tl.minimum(trunc, (E_LO + NE) << MB) << (23 - MB)) | -2147483648)
    edge = tl.where(neg, neg_edge, pos_edge).to(tl.float32, bitcast=True)
    return jtop, edge


@triton.jit
def _bucket_edge(jtop, MB: tl.constexpr, E_LO: tl.constexpr, NE: tl.constexpr):
    """The upper edge and the width of bucket ``jtop`` (as :func:`_bucket` numbers them)."""
    half = (NE << MB) + 2
    neg = jtop >= half
    mag = tl.where(neg, jtop - half, half - 1 - jtop)
    tiny = mag == 0
    huge = mag == (NE << MB) + 1
    trunc = mag + ((E_LO << MB) - 1)
    lo_v = (trunc << (23 - MB)).to(tl.float32, bitcast=True)
    hi_v = ((trunc + 1) << (23 - MB)).to(tl.float32, bitcast=True)
    tiny_v = ((jtop * 0 + E_LO) << 23).to(tl.float32, bitcast=True)
    width = tl.where(tiny, tiny_v, tl.where(huge, POS_INF, hi_v - lo_v))
    edge = tl.where(neg, tl.where(tiny, 0.0, -lo_v), tl.where(tiny, tiny_v, tl.where(huge, POS_INF, hi_v)))
    return edge, width


@triton.jit
def _split_tiles_kernel(
    logits_ptr, pos_ptr, temp_ptr, topk_ptr, topp_ptr,
    tile_m_ptr, tile_s_ptr, tile_arg_ptr, tile_n_ptr, hist_n_ptr, hist_w_ptr,
    B, stride_row, s_temp, s_topk, s_topp, text_vocab, first_code, num_codes, boi_id, codes_per_image, NT, TPP,
    ROWS: tl.constexpr, BLOCK_V: tl.constexpr, VEC: tl.constexpr, MB: tl.constexpr, E_LO: tl.constexpr,
    NE: tl.constexpr,
):
    """Pass 1, program ``(i, p)``: tiles ``[p·TPP, (p+1)·TPP)`` of rows block ``i``. Per tile: max,
    first argmax, ``Σ exp((x - tile max)/t)``, finite count and NaN/+inf bit; per row with a
    filter, every finite token into the row's bucket histogram (count, and the weight relative
    to the bucket's upper edge in fixed point)."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B
    pos, in_text, forced, active, lo_id, length, abase, shift, span = _row_layout(
        pos_ptr, rows, row_ok, stride_row, text_vocab, first_code, num_codes, codes_per_image, VEC)
    boi_x = tl.load(logits_ptr + rows * stride_row + boi_id, mask=active & in_text, other=0.0).to(tl.float32)
    greedy, scale = _row_scale(temp_ptr, rows, row_ok, s_temp)
    top_k = tl.load(topk_ptr + rows * s_topk, mask=row_ok, other=0)
    top_p = tl.load(topp_ptr + rows * s_topp, mask=row_ok, other=1.0)
    hist_on = active & ~greedy & ((top_k > 0) | ~(top_p >= 1.0))
    any_hist = tl.max(hist_on.to(tl.int32)) > 0
    nb = 2 * ((NE << MB) + 2)
    n_tiles = tl.cdiv(tl.max(tl.where(active, span, 0)), BLOCK_V)
    t_first = tl.program_id(1) * TPP
    t_stop = tl.minimum(t_first + TPP, n_tiles)
    for t in range(t_first, t_stop):
        x, valid, j = _tile(logits_ptr, abase, shift, length, in_text, boi_x, active, t * BLOCK_V + tl.arange(0, BLOCK_V),
                            VEC)
        live = valid & (x > NEG_INF) & (x < POS_INF)
        bad = tl.max((valid & ((x != x) | (x == POS_INF))).to(tl.int32), axis=1)
        xm = tl.where(live, x, NEG_INF)
        mt = tl.max(xm, axis=1)
        arg = tl.min(tl.where(live & (xm == mt[:, None]), j, BIG), axis=1)
        mref = tl.where(mt > NEG_INF, mt, 0.0)
        st = tl.sum(tl.where(live, tl.exp2((x - mref[:, None]) * scale[:, None]), 0.0), axis=1)
        nt = tl.sum(live.to(tl.int32), axis=1) + tl.where(bad > 0, BAD_BIT, 0)
        at = rows * NT + t
        tl.store(tile_m_ptr + at, mt, mask=row_ok)
        tl.store(tile_s_ptr + at, st, mask=row_ok)
        tl.store(tile_arg_ptr + at, arg, mask=row_ok)
        tl.store(tile_n_ptr + at, nt, mask=row_ok)
        if any_hist:
            on = live & hist_on[:, None]
            xs = tl.where(on, x, 0.0)
            jb, edge = _bucket(xs, MB, E_LO, NE)
            term = tl.exp2((xs - edge) * scale[:, None])
            hp = rows[:, None] * nb + jb
            tl.atomic_add(hist_n_ptr + hp, tl.full([ROWS, BLOCK_V], 1, tl.int32), mask=on, sem="relaxed")
            tl.atomic_add(hist_w_ptr + hp, (term * FIX).to(tl.int64), mask=on, sem="relaxed")


@triton.jit
def _hist_block(hist_n_ptr, hist_w_ptr, rows, jj, on, m, scale, c_carry, w_carry,
                MB: tl.constexpr, E_LO: tl.constexpr, NE: tl.constexpr):
    """Buckets ``jj`` of the rows ``on``: counts, inclusive cumulative counts and exclusive
    cumulative masses ``Σ exp((x - m)/t)`` from the top (after the carries), and the carries on."""
    nb = 2 * ((NE << MB) + 2)
    ok = on[:, None] & (jj[None, :] < nb)
    at = rows[:, None] * nb + jj[None, :]
    cnt = tl.load(hist_n_ptr + at, mask=ok, other=0)
    fixed = tl.load(hist_w_ptr + at, mask=ok, other=0)
    edge, width = _bucket_edge(jj, MB, E_LO, NE)
    # Non-empty buckets lie at or below the bucket of m: their edges at most one width above m.
    w = tl.where(cnt > 0, fixed.to(tl.float32) * (1.0 / FIX)
                 * tl.exp2(tl.minimum((edge[None, :] - m[:, None]) * scale[:, None], 126.0)), 0.0)
    c_incl = c_carry[:, None] + tl.cumsum(cnt, axis=1)
    w_incl = w_carry[:, None] + tl.cumsum(w, axis=1)
    return cnt, c_incl, w_incl - w, tl.max(c_incl, axis=1), tl.max(w_incl, axis=1)


@triton.jit
def _take_bucket(upd, hit, cnt, c_incl, w_excl, above, incl, mass):
    """Where ``upd``: the count above, the inclusive count and the mass above the one bucket of
    this block that ``hit`` marks (per row); elsewhere the values so far."""
    above = tl.where(upd, tl.sum(tl.where(hit, c_incl - cnt, 0), axis=1), above)
    incl = tl.where(upd, tl.sum(tl.where(hit, c_incl, 0), axis=1), incl)
    mass = tl.where(upd, tl.sum(tl.where(hit, w_excl, 0.0), axis=1), mass)
    return above, incl, mass


@triton.jit
def _split_select_kernel(
    pos_ptr, temp_ptr, topk_ptr, topp_ptr, tokens_ptr, next_pos_ptr, flags_ptr,
    tile_m_ptr, tile_s_ptr, tile_arg_ptr, tile_n_ptr, hist_n_ptr, hist_w_ptr, row_i_ptr, row_f_ptr,
    B, stride_row, s_temp, s_topk, s_topp, text_vocab, first_code, num_codes, boi_id, eoi_id, eos_id,
    codes_per_image, NT,
    ROWS: tl.constexpr, BLOCK_V: tl.constexpr, VEC: tl.constexpr, TB: tl.constexpr, NBLK: tl.constexpr,
    CAP: tl.constexpr, MB: tl.constexpr, E_LO: tl.constexpr, NE: tl.constexpr,
):
    """Per row: merge the tiles (max, first argmax, Z, errors) in tile order; finish greedy, error
    and forced rows; for filtered rows walk the histogram from the top to the buckets
    ``[c_lo, c_hi]`` that hold the top-k and top-p boundaries (the mass above them comes from the
    histogram), or hand the row to the exact fallback when they hold more than ``CAP`` tokens or
    a bucket above them is too wide for its fixed-point mass."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B
    pos, in_text, forced, active, lo_id, length, abase, shift, span = _row_layout(
        pos_ptr, rows, row_ok, stride_row, text_vocab, first_code, num_codes, codes_per_image, VEC)
    greedy, scale = _row_scale(temp_ptr, rows, row_ok, s_temp)
    top_k = tl.load(topk_ptr + rows * s_topk, mask=row_ok, other=0)
    top_p = tl.load(topp_ptr + rows * s_topp, mask=row_ok, other=1.0)
    nb = 2 * ((NE << MB) + 2)

    # ---- merge the tiles, in tile order (per-lane accumulators, reduced once). Loads are masked
    # per 4-tile chunk (the workspace rows are padded to 16), so that they are 16-byte vectors.
    n_tiles = tl.where(active, tl.cdiv(span, BLOCK_V), 0)
    stop = tl.max(n_tiles)
    m_acc = tl.full([ROWS, TB], NEG_INF, tl.float32)
    n_acc = tl.zeros([ROWS, TB], tl.int32)
    for t0 in range(0, stop, TB):
        tb = t0 + tl.arange(0, TB)
        ok = tb[None, :] < n_tiles[:, None]
        chunk_ok = ((tb // 4) * 4)[None, :] < n_tiles[:, None]
        at = rows[:, None] * NT + tb[None, :]
        m_acc = tl.maximum(m_acc, tl.where(ok, tl.load(tile_m_ptr + at, mask=chunk_ok, other=NEG_INF), NEG_INF))
        n_acc |= tl.where(ok, tl.load(tile_n_ptr + at, mask=chunk_ok, other=0), 0) & BAD_BIT
        n_acc += tl.where(ok, tl.load(tile_n_ptr + at, mask=chunk_ok, other=0), 0) & (BAD_BIT - 1)
    m = tl.max(m_acc, axis=1)
    n_fin = tl.sum(n_acc & (BAD_BIT - 1), axis=1)
    bad = tl.max(n_acc & BAD_BIT, axis=1)
    arg_acc = tl.full([ROWS, TB], BIG, tl.int32)
    z_acc = tl.zeros([ROWS, TB], tl.float32)
    for t0 in range(0, stop, TB):
        tb = t0 + tl.arange(0, TB)
        ok = tb[None, :] < n_tiles[:, None]
        chunk_ok = ((tb // 4) * 4)[None, :] < n_tiles[:, None]
        at = rows[:, None] * NT + tb[None, :]
        mt = tl.where(ok, tl.load(tile_m_ptr + at, mask=chunk_ok, other=NEG_INF), NEG_INF)
        st = tl.load(tile_s_ptr + at, mask=chunk_ok, other=0.0)
        ag = tl.load(tile_arg_ptr + at, mask=chunk_ok, other=BIG)
        arg_acc = tl.minimum(arg_acc, tl.where(ok & (mt == m[:, None]), ag, BIG))
        live_t = ok & (mt > NEG_INF)
        z_acc += tl.where(live_t, st * tl.exp2((tl.where(live_t, mt, 0.0) - m[:, None]) * scale[:, None]), 0.0)
    arg = tl.min(arg_acc, axis=1)
    z_all = tl.sum(z_acc, axis=1)
    non_finite = active & (bad > 0)
    nothing = active & ~non_finite & (n_fin == 0)
    error = non_finite | nothing
    sampling = active & ~error & ~greedy
    k_on = sampling & (top_k > 0) & (top_k < n_fin)
    p_on = sampling & ~(top_p >= 1.0)
    filt = k_on | p_on
    j_top, unused_edge = _bucket(tl.where(filt, m, 0.0), MB, E_LO, NE)
    j_start = (tl.min(tl.where(filt, j_top, nb)) // NBLK) * NBLK

    # ---- top-k: the first bucket whose inclusive count reaches k
    bk = tl.zeros([ROWS], tl.int32)
    above_k = tl.zeros([ROWS], tl.int32)
    incl_k = tl.zeros([ROWS], tl.int32)
    mass_k = tl.zeros([ROWS], tl.float32)
    todo = k_on
    c_carry = tl.zeros([ROWS], tl.int32)
    w_carry = tl.zeros([ROWS], tl.float32)
    j0 = j_start
    while (tl.max(todo.to(tl.int32)) > 0) & (j0 < nb):
        jj = tl.multiple_of(j0, NBLK) + tl.arange(0, NBLK)
        cnt, c_incl, w_excl, c_carry, w_carry = _hist_block(hist_n_ptr, hist_w_ptr, rows, jj, todo, m, scale,
                                                            c_carry, w_carry, MB, E_LO, NE)
        first = tl.min(tl.where(c_incl >= top_k[:, None], jj[None, :], nb), axis=1)
        found = todo & (first < nb)
        hit = jj[None, :] == first[:, None]
        bk = tl.where(found, first, bk)
        above_k, incl_k, mass_k = _take_bucket(found, hit, cnt, c_incl, w_excl, above_k, incl_k, mass_k)
        todo = todo & ~found
        j0 += NBLK

    # ---- top-p: the last non-empty bucket (down to bk) with less mass above it than top_p·Z
    # (top_p times the mass above bk with top-k: a lower bound of the top-k mass, so the
    # boundary lies in [c_lo, bk]). The top bucket always qualifies: its maximum is kept.
    bound = tl.where(k_on, top_p * mass_k, top_p * z_all)
    limit = tl.where(k_on, bk, nb - 1)
    bp = j_top
    above_p = tl.zeros([ROWS], tl.int32)
    incl_p = tl.zeros([ROWS], tl.int32)
    mass_p = tl.zeros([ROWS], tl.float32)
    todo = p_on
    c_carry = tl.zeros([ROWS], tl.int32)
    w_carry = tl.zeros([ROWS], tl.float32)
    j0 = j_start
    while (tl.max(todo.to(tl.int32)) > 0) & (j0 < nb):
        jj = tl.multiple_of(j0, NBLK) + tl.arange(0, NBLK)
        cnt, c_incl, w_excl, c_carry, w_carry = _hist_block(hist_n_ptr, hist_w_ptr, rows, jj, todo, m, scale,
                                                            c_carry, w_carry, MB, E_LO, NE)
        inside = todo[:, None] & (cnt > 0) & (jj[None, :] <= limit[:, None])
        good = inside & ((w_excl < bound[:, None]) | (jj[None, :] == j_top[:, None]))
        last = tl.max(tl.where(good, jj[None, :], -1), axis=1)
        upd = last >= 0
        hit = jj[None, :] == last[:, None]
        bp = tl.where(upd, last, bp)
        above_p, incl_p, mass_p = _take_bucket(upd, hit, cnt, c_incl, w_excl, above_p, incl_p, mass_p)
        done = (tl.max((inside & ~good).to(tl.int32), axis=1) > 0) | (j0 + NBLK > limit)
        todo = todo & ~done
        j0 += NBLK

    c_hi = tl.where(k_on, bk, bp)
    c_lo = tl.where(p_on, bp, bk)
    n_above = tl.where(p_on, above_p, above_k)
    mass_above = tl.where(p_on, mass_p, mass_k)
    n_cand = tl.where(k_on, incl_k, incl_p) - n_above
    unused_e0, width_top = _bucket_edge(j_top, MB, E_LO, NE)
    unused_e1, width_lo = _bucket_edge(c_lo, MB, E_LO, NE)
    trusted = (tl.maximum(width_top, width_lo) * scale <= MAX_WIDTH_LOG2)
    # Top-k alone uses counts only; top-p compares the fixed-point masses.
    fallback = filt & ((n_cand > CAP) | (p_on & ~trusted))
    # Rows without a filter keep every finite token: all of them lie "above" an empty range.
    c_lo = tl.where(filt, c_lo, nb)
    c_hi = tl.where(filt, c_hi, nb - 1)
    mode = tl.where(sampling, tl.where(fallback, MODE_FALLBACK, MODE_SAMPLE), MODE_DONE)
    ri = row_i_ptr + rows * ROW_INTS
    tl.store(ri + 0, mode, mask=row_ok)
    tl.store(ri + 1, k_on.to(tl.int32) + 2 * p_on.to(tl.int32), mask=row_ok)
    tl.store(ri + 2, c_lo, mask=row_ok)
    tl.store(ri + 3, c_hi, mask=row_ok)
    tl.store(ri + 4, n_above, mask=row_ok)
    tl.store(ri + 5, tl.zeros([ROWS], tl.int32), mask=row_ok)  # the candidate counter of pass 2
    rf = row_f_ptr + rows * ROW_FLOATS
    tl.store(rf + 0, m, mask=row_ok)
    tl.store(rf + 1, mass_above, mask=row_ok)
    tl.store(rf + 2, z_all, mask=row_ok)

    # ---- rows finished here: greedy, errors, forced </img>
    tok = tl.where(arg < length, lo_id + arg, boi_id).to(tl.int64)
    tok = tl.where(error, eos_id, tok)
    tok = tl.where(forced, eoi_id, tok)
    nxt = tl.where(in_text & (tok == boi_id), 0, -1)
    nxt = tl.where(~in_text & ~forced & ~error, pos + 1, nxt)
    flags = tl.where(non_finite, FLAG_NON_FINITE, 0) + tl.where(nothing, FLAG_NOTHING_ALLOWED, 0)
    done = row_ok & (mode == MODE_DONE)
    tl.store(tokens_ptr + rows, tok, mask=done)
    tl.store(next_pos_ptr + rows, nxt.to(tl.int32), mask=done)
    tl.store(flags_ptr + rows, flags.to(tl.int32), mask=done)


@triton.jit
def _split_collect_kernel(
    logits_ptr, pos_ptr, temp_ptr, tile_a_ptr, tile_c_ptr, row_i_ptr, row_f_ptr, cand_x_ptr, cand_j_ptr,
    B, stride_row, s_temp, text_vocab, first_code, num_codes, boi_id, codes_per_image, NT, TPP,
    ROWS: tl.constexpr, BLOCK_V: tl.constexpr, VEC: tl.constexpr, CAP: tl.constexpr, MB: tl.constexpr,
    E_LO: tl.constexpr, NE: tl.constexpr,
):
    """Pass 2, program ``(i, p)``: per tile, the weight of the tokens above the candidate buckets
    (all kept); the tokens inside them are appended to the row's candidates."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B
    mode = tl.load(row_i_ptr + rows * ROW_INTS, mask=row_ok, other=MODE_DONE)
    on = row_ok & (mode == MODE_SAMPLE)
    if tl.max(on.to(tl.int32)) > 0:
        pos, in_text, forced, active, lo_id, length, abase, shift, span = _row_layout(
            pos_ptr, rows, row_ok, stride_row, text_vocab, first_code, num_codes, codes_per_image, VEC)
        boi_x = tl.load(logits_ptr + rows * stride_row + boi_id, mask=on & in_text, other=0.0).to(tl.float32)
        greedy, scale = _row_scale(temp_ptr, rows, row_ok, s_temp)
        c_lo = tl.load(row_i_ptr + rows * ROW_INTS + 2, mask=on, other=0)
        c_hi = tl.load(row_i_ptr + rows * ROW_INTS + 3, mask=on, other=0)
        m = tl.load(row_f_ptr + rows * ROW_FLOATS, mask=on, other=0.0)
        n_tiles = tl.cdiv(tl.max(tl.where(on, span, 0)), BLOCK_V)
        t_first = tl.program_id(1) * TPP
        t_stop = tl.minimum(t_first + TPP, n_tiles)
        for t in range(t_first, t_stop):
            x, valid, j = _tile(logits_ptr, abase, shift, length, in_text, boi_x, on, t * BLOCK_V + tl.arange(0, BLOCK_V),
                                VEC)
            live = valid & (x > NEG_INF) & (x < POS_INF)
            xs = tl.where(live, x, 0.0)
            jb, unused_edge = _bucket(xs, MB, E_LO, NE)
            w = tl.where(live, tl.exp2((xs - m[:, None]) * scale[:, None]), 0.0)
            above = live & (jb < c_lo[:, None])
            inside = live & (jb >= c_lo[:, None]) & (jb <= c_hi[:, None])
            tl.store(tile_a_ptr + rows * NT + t, tl.sum(tl.where(above, w, 0.0), axis=1), mask=on)
            tl.store(tile_c_ptr + rows * NT + t, tl.zeros([ROWS], tl.int64), mask=on)
            n_in = tl.sum(inside.to(tl.int32), axis=1)
            base = tl.atomic_add(row_i_ptr + rows * ROW_INTS + 5, n_in, mask=on & (n_in > 0), sem="relaxed")
            slot = base[:, None] + tl.cumsum(inside.to(tl.int32), axis=1) - 1
            ok = inside & (slot < CAP)
            tl.store(cand_x_ptr + rows[:, None] * CAP + slot, x, mask=ok)
            tl.store(cand_j_ptr + rows[:, None] * CAP + slot, j, mask=ok)


@triton.jit
def _sort_candidates(cand_x_ptr, cand_j_ptr, rows, cvalid, n_cand, on, ROWS: tl.constexpr, CAP: tl.constexpr,
                     CHUNK: tl.constexpr, BY_RANK: tl.constexpr):
    """The candidates' keys and virtual positions sorted by logit (descending), ties by position.

    ``tl.sort`` of packed ``(key, position)`` int64 words on a GPU; under the interpreter (whose
    ``tl.sort`` takes seconds) each candidate's rank by chunked comparisons, then a scatter to
    its rank through the scratch slots.
    """
    slots = tl.arange(0, CAP)
    cat = rows[:, None] * CAP + slots[None, :]
    cx = tl.load(cand_x_ptr + cat, mask=cvalid, other=0.0)
    cj = tl.load(cand_j_ptr + cat, mask=cvalid, other=0)
    ckey = _key(cx)
    if BY_RANK:
        rank = tl.zeros([ROWS, CAP], tl.int32)
        for c0 in range(0, tl.max(tl.where(on, n_cand, 0)), CHUNK):
            jj = c0 + tl.arange(0, CHUNK)
            ok = on[:, None] & (jj[None, :] < n_cand[:, None])
            kx = _key(tl.load(cand_x_ptr + rows[:, None] * CAP + jj[None, :], mask=ok, other=0.0))
            kj = tl.load(cand_j_ptr + rows[:, None] * CAP + jj[None, :], mask=ok, other=0)
            before = (kx[:, None, :] > ckey[:, :, None]) | ((kx[:, None, :] == ckey[:, :, None])
                                                          & (kj[:, None, :] < cj[:, :, None]))
            rank += tl.sum((before & ok[:, None, :]).to(tl.int32), axis=2)
        tl.debug_barrier()
        tl.store(cand_x_ptr + rows[:, None] * CAP + rank, ckey.to(tl.float32, bitcast=True), mask=cvalid)
        tl.store(cand_j_ptr + rows[:, None] * CAP + rank, cj, mask=cvalid)
        tl.debug_barrier()
        ckey = tl.load(cand_x_ptr + cat, mask=cvalid, other=0.0).to(tl.int32, bitcast=True)
        cj = tl.load(cand_j_ptr + cat, mask=cvalid, other=0)
    else:
        packed = ((2147483647 - ckey.to(tl.int64)) << 31) | cj.to(tl.int64)
        packed = tl.sort(tl.where(cvalid, packed, 9223372036854775807), dim=1)
        cj = (packed & 2147483647).to(tl.int32)
        ckey = (2147483647 - (packed >> 31)).to(tl.int32)
    return ckey, cj


@triton.jit
def _split_finish_kernel(
    logits_ptr, pos_ptr, temp_ptr, topk_ptr, topp_ptr, seed_ptr, offset_ptr, stream_ptr,
    tokens_ptr, next_pos_ptr, flags_ptr, tile_a_ptr, tile_c_ptr, row_i_ptr, row_f_ptr, cand_x_ptr, cand_j_ptr,
    B, stride_row, s_temp, s_topk, s_topp, s_seed, s_off, s_stream,
    text_vocab, first_code, num_codes, boi_id, codes_per_image, NT,
    ROWS: tl.constexpr, BLOCK_V: tl.constexpr, VEC: tl.constexpr, TB: tl.constexpr, CAP: tl.constexpr,
    CHUNK: tl.constexpr,
    BY_RANK: tl.constexpr, MB: tl.constexpr, E_LO: tl.constexpr, NE: tl.constexpr,
):
    """Per row: the exact top-k and top-p thresholds among the candidates (sorted by logit, ties
    by id), the kept weight per tile, the tile where ``u`` times the total falls, and the inverse
    CDF in id order inside that one tile."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B
    mode = tl.load(row_i_ptr + rows * ROW_INTS, mask=row_ok, other=MODE_DONE)
    on = row_ok & (mode == MODE_SAMPLE)
    if tl.max(on.to(tl.int32)) > 0:
        pos, in_text, forced, active, lo_id, length, abase, shift, span = _row_layout(
            pos_ptr, rows, row_ok, stride_row, text_vocab, first_code, num_codes, codes_per_image, VEC)
        boi_x = tl.load(logits_ptr + rows * stride_row + boi_id, mask=on & in_text, other=0.0).to(tl.float32)
        greedy, scale = _row_scale(temp_ptr, rows, row_ok, s_temp)
        top_k = tl.load(topk_ptr + rows * s_topk, mask=on, other=0)
        top_p = tl.load(topp_ptr + rows * s_topp, mask=on, other=1.0)
        seed = tl.load(seed_ptr + rows * s_seed, mask=row_ok, other=0)
        offset = tl.load(offset_ptr + rows * s_off, mask=row_ok, other=0)
        stream = tl.load(stream_ptr + rows * s_stream, mask=row_ok, other=0)
        u = _row_uniform(seed, offset, stream)
        ri = row_i_ptr + rows * ROW_INTS
        filters = tl.load(ri + 1, mask=on, other=0)
        k_on = on & ((filters & 1) != 0)
        p_on = on & ((filters & 2) != 0)
        c_lo = tl.load(ri + 2, mask=on, other=0)
        c_hi = tl.load(ri + 3, mask=on, other=0)
        n_above = tl.load(ri + 4, mask=on, other=0)
        n_cand = tl.minimum(tl.load(ri + 5, mask=on, other=0), CAP)
        m = tl.load(row_f_ptr + rows * ROW_FLOATS + 0, mask=on, other=0.0)
        mass_above = tl.load(row_f_ptr + rows * ROW_FLOATS + 1, mask=on, other=0.0)
        z_all = tl.load(row_f_ptr + rows * ROW_FLOATS + 2, mask=on, other=1.0)

        # ---- the candidates, sorted by logit (descending), ties by id: a canonical order
        slots = tl.arange(0, CAP)
        cvalid = on[:, None] & (slots[None, :] < n_cand[:, None])
        cat = rows[:, None] * CAP + slots[None, :]
        ckey, cj = _sort_candidates(cand_x_ptr, cand_j_ptr, rows, cvalid, n_cand, on, ROWS, CAP, CHUNK, BY_RANK)
        cx = _unkey(ckey)
        cw = tl.where(cvalid, tl.exp2((cx - m[:, None]) * scale[:, None]), 0.0)
        # Each candidate's predecessor, through the scratch slots (written by other threads).
        tl.debug_barrier()
        tl.store(cand_x_ptr + cat, tl.cumsum(cw, axis=1), mask=cvalid)
        tl.store(cand_j_ptr + cat, ckey, mask=cvalid)
        tl.debug_barrier()
        has_prev = cvalid & (slots[None, :] > 0)
        mass_before = tl.load(cand_x_ptr + cat - 1, mask=has_prev, other=0.0)
        key_prev = tl.load(cand_j_ptr + cat - 1, mask=has_prev, other=0)
        starts = cvalid & (~has_prev | (key_prev != ckey))

        # ---- top-k: the k-th largest logit; top-p: the last tie group whose strictly larger
        # (top-k) tokens weigh less than top_p times the top-k total; the global maximum is kept.
        kth = (top_k - 1 - n_above).to(tl.int32)
        t_k = tl.sum(tl.where(slots[None, :] == kth[:, None], ckey, 0), axis=1)
        keep = cvalid & (~k_on[:, None] | (ckey >= t_k[:, None]))
        z_k = tl.where(k_on, mass_above + tl.sum(tl.where(keep, cw, 0.0), axis=1), z_all)
        bound = top_p * z_k
        first = (n_above == 0)[:, None] & (slots[None, :] == 0)
        cond = starts & keep & ((mass_above[:, None] + mass_before < bound[:, None]) | first)
        last = tl.max(tl.where(cond, slots[None, :], -1), axis=1)
        t_p = tl.sum(tl.where(slots[None, :] == last[:, None], ckey, 0), axis=1)
        keep = keep & (~p_on[:, None] | ((last >= 0)[:, None] & (ckey >= t_p[:, None])))
        thr = tl.min(tl.where(keep, ckey.to(tl.int64), 2147483648), axis=1)
        kw = tl.where(keep, cw, 0.0)

        # ---- the kept weight per tile: the weight above the candidates plus the kept candidates'
        # (added per tile in fixed point, so in any order), summed in tile order
        ctile = (shift[:, None] + cj) // BLOCK_V
        tl.atomic_add(tile_c_ptr + rows[:, None] * NT + ctile, (kw * FIX).to(tl.int64), mask=keep, sem="relaxed")
        tl.debug_barrier()
        n_tiles = tl.where(on, tl.cdiv(span, BLOCK_V), 0)
        total = tl.zeros([ROWS], tl.float32)
        for t0 in range(0, tl.max(n_tiles), TB):
            tb = t0 + tl.arange(0, TB)
            ok = tb[None, :] < n_tiles[:, None]
            chunk_ok = ((tb // 4) * 4)[None, :] < n_tiles[:, None]
            at = rows[:, None] * NT + tb[None, :]
            # The fixed-point sums were added at L2 by this program's atomics: read past L1.
            s_t = tl.where(ok, tl.load(tile_a_ptr + at, mask=chunk_ok, other=0.0)
                           + tl.load(tile_c_ptr + at, mask=chunk_ok, other=0, cache_modifier=".cg").to(tl.float32)
                           * (1.0 / FIX), 0.0)
            total += tl.sum(s_t, axis=1)
        target = u * total
        carry = tl.zeros([ROWS], tl.float32)
        t_hit = tl.full([ROWS], -1, tl.int32)
        c_hit = tl.zeros([ROWS], tl.float32)
        t_last = tl.zeros([ROWS], tl.int32)
        c_last = tl.zeros([ROWS], tl.float32)
        for t0 in range(0, tl.max(n_tiles), TB):
            tb = t0 + tl.arange(0, TB)
            ok = tb[None, :] < n_tiles[:, None]
            chunk_ok = ((tb // 4) * 4)[None, :] < n_tiles[:, None]
            at = rows[:, None] * NT + tb[None, :]
            # The fixed-point sums were added at L2 by this program's atomics: read past L1.
            s_t = tl.where(ok, tl.load(tile_a_ptr + at, mask=chunk_ok, other=0.0)
                           + tl.load(tile_c_ptr + at, mask=chunk_ok, other=0, cache_modifier=".cg").to(tl.float32)
                           * (1.0 / FIX), 0.0)
            incl = carry[:, None] + tl.cumsum(s_t, axis=1)
            hit = tl.min(tl.where((s_t > 0.0) & (incl > target[:, None]), tb[None, :], BIG), axis=1)
            now = on & (t_hit < 0) & (hit < BIG)
            t_hit = tl.where(now, hit, t_hit)
            c_hit = tl.where(now, tl.sum(tl.where(tb[None, :] == hit[:, None], incl - s_t, 0.0), axis=1), c_hit)
            last = tl.max(tl.where(s_t > 0.0, tb[None, :], -1), axis=1)
            has = last >= 0
            t_last = tl.where(has, last, t_last)
            c_last = tl.where(has, tl.sum(tl.where(tb[None, :] == last[:, None], incl - s_t, 0.0), axis=1), c_last)
            carry = tl.max(incl, axis=1)
        # Rounding can leave the target at the top: the last tile with weight then.
        c_hit = tl.where(t_hit >= 0, c_hit, c_last)
        t_hit = tl.where(t_hit >= 0, t_hit, t_last)

        # ---- inverse CDF in id order inside that tile
        tt = t_hit[:, None] * BLOCK_V + tl.arange(0, BLOCK_V)[None, :]
        x, valid, j = _tile_at(logits_ptr, abase, shift, length, in_text, boi_x, on, tt, VEC)
        live = valid & (x > NEG_INF) & (x < POS_INF)
        xs = tl.where(live, x, 0.0)
        jb, unused_edge = _bucket(xs, MB, E_LO, NE)
        kept = live & ((jb < c_lo[:, None])
                       | ((jb <= c_hi[:, None]) & (_key(xs).to(tl.int64) >= thr[:, None])))
        w = tl.where(kept, tl.exp2((xs - m[:, None]) * scale[:, None]), 0.0)
        cum = c_hit[:, None] + tl.cumsum(w, axis=1)
        first_j = tl.min(tl.where((cum > target[:, None]) & (w > 0.0), j, BIG), axis=1)
        last_j = tl.max(tl.where(w > 0.0, j, -1), axis=1)
        pick = tl.where(first_j < BIG, first_j, last_j)
        tok = tl.where(pick < length, lo_id + pick, boi_id).to(tl.int64)
        nxt = tl.where(in_text, tl.where(tok == boi_id, 0, -1), pos + 1)
        tl.store(tokens_ptr + rows, tok, mask=on)
        tl.store(next_pos_ptr + rows, nxt.to(tl.int32), mask=on)
        tl.store(flags_ptr + rows, tl.zeros([ROWS], tl.int32), mask=on)


# ---------------------------------------------------------------------------------------------
# Launcher

# The kernel's compile-time parameters, set by the launcher.
_KERNEL_CONSTEXPRS = ("ROWS", "BLOCK_V", "NP", "MAX_REFINE", "CAP", "CHUNK", "VEC", "ONLY_FALLBACK")


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


def split_config(b: int, v: int, *, interpret: bool | None = None) -> dict:
    """The split sampler's tiles: on a GPU one row per program, ``BLOCK_V`` = 256 (one warp, 8
    elements and one or two 16-byte loads per thread) and 1024 candidates; under the interpreter
    (``interpret``, by default ``TRITON_INTERPRET``) many rows per program and wide tiles. The
    tile width never depends on ``B``, so the programs per row (:func:`programs_per_row`) change
    speed only, never a token."""
    if interpreting() if interpret is None else interpret:
        rows = min(1024, triton.next_power_of_2(max(b, 1)))
        block_v = max(16, min(triton.next_power_of_2(v), 65536 // rows))
        return {"ROWS": rows, "BLOCK_V": block_v, "CAP": max(64, min(1024, 65536 // rows)), "num_warps": 1,
                "select_warps": 1, "finish_warps": 1}
    block_v = 256 if v >= 4096 else max(64, min(256, triton.next_power_of_2(v)))
    return {"ROWS": 1, "BLOCK_V": block_v, "CAP": 1024, "num_warps": 1, "select_warps": 1, "finish_warps": 4}


# Programs of the two passes to aim for: one-warp programs, eight per SM of an H100 (132 SMs).
NUM_SMS = 132
TARGET_PROGRAMS = 8 * NUM_SMS


def programs_per_row(b: int, num_tiles: int, *, interpret: bool | None = None) -> int:
    """Programs per row of the two passes: at small batches up to one per tile, so that a single
    row (126 tiles of 256 at V = 40194) fills the SMs; fewer as the batch grows, one per row from
    :data:`TARGET_PROGRAMS` rows on. One under the interpreter."""
    if interpreting() if interpret is None else interpret:
        return 1
    return max(1, min(num_tiles, triton.cdiv(TARGET_PROGRAMS, b)))


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
    method: str = "split",
    cap: int | None = None,
    num_pivots: int = DEFAULT_NUM_PIVOTS,
    max_refine: int = DEFAULT_MAX_REFINE,
    rows: int | None = None,
    block_v: int | None = None,
    vec: int | None = None,
    programs: int | None = None,
    sort_by_rank: bool | None = None,
    trace: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the sampler on ``logits [B, V]`` (unit stride in V) and per-row ``[B]`` tensors
    (any stride, e.g. expanded scalars): ``temperature``/``top_p`` float32, ``top_k``/``seed``/
    ``offset``/``stream`` int64, ``image_pos`` int32/int64.

    ``layout`` is ``(text_vocab_size, first_code_id, num_codes, boi_id, eoi_id, eos_id,
    codes_per_image)``. ``method`` is ``"split"`` (the two-pass histogram sampler, several
    programs per row; default) or ``"rows"`` (the pivot sampler, one program per block of rows,
    which is also the split sampler's exact fallback). ``cap`` (candidates per row), ``rows``
    (rows per program), ``block_v`` (tile width), ``programs`` (programs per row, split only) and,
    for ``"rows"``, ``num_pivots`` and ``max_refine`` tune speed, never the kept set; all are
    powers of two (``max_refine`` any int >= 0, ``programs`` any int >= 1) and default to
    :func:`split_config` / :func:`launch_config`. ``vec`` (elements per vector load, default
    :func:`vector_width`) must divide 16 bytes and the alignment of ``logits``. ``sort_by_rank``
    orders the candidates by rank and scatter instead of ``tl.sort`` (default: under the
    interpreter only, where ``tl.sort`` is slow).

    Returns ``(tokens int64 [B], next_image_pos int32 [B], flags int32 [B])``.
    """
    b, v = logits.shape
    assert logits.stride(1) == 1 or v <= 1, "unit stride in V required"
    assert method in ("split", "rows"), f"method must be 'split' or 'rows', got {method!r}"
    dev = logits.device
    tokens = torch.empty(b, dtype=torch.int64, device=dev)
    next_pos = torch.empty(b, dtype=torch.int32, device=dev)
    flags = torch.empty(b, dtype=torch.int32, device=dev)
    if b == 0:
        return tokens, next_pos, flags
    vec = vector_width(logits) if vec is None else vec
    assert vec >= 1 and vec & (vec - 1) == 0, f"vec must be a power of two, got {vec}"
    assert vec * logits.element_size() <= 16 and logits.data_ptr() % (vec * logits.element_size()) == 0, (
        f"vec={vec} needs logits aligned to {vec * logits.element_size()} bytes")
    args = (logits, image_pos, temperature, top_k, top_p, seed, offset, stream, tokens, next_pos, flags)
    if method == "rows":
        _launch_rows(args, layout, cap, num_pivots, max_refine, rows, block_v, vec, None)
    else:
        _launch_split(args, layout, cap, rows, block_v, vec, programs,
                      interpreting() if sort_by_rank is None else sort_by_rank, trace)
    return tokens, next_pos, flags


def _check_pow2(**values: int) -> None:
    for name, value in values.items():
        assert value >= 1 and value & (value - 1) == 0, f"{name} must be a power of two, got {value}"


def _launch_rows(args, layout, cap, num_pivots, max_refine, rows, block_v, vec, modes) -> None:
    """The pivot sampler on every row, or (``modes``: the split sampler's row state) on the rows
    the split sampler handed over."""
    logits, image_pos, temperature, top_k, top_p, seed, offset, stream, tokens, next_pos, flags = args
    b, v = logits.shape
    cfg = launch_config(b, v, cap)
    cfg["ROWS"] = rows or cfg["ROWS"]
    cfg["BLOCK_V"] = max(block_v or cfg["BLOCK_V"], vec)
    cfg["CHUNK"] = min(cfg["CHUNK"], cfg["CAP"])
    _check_pow2(cap=cfg["CAP"], num_pivots=num_pivots, rows=cfg["ROWS"], block_v=cfg["BLOCK_V"])
    cand_x = torch.empty((b, cfg["CAP"]), dtype=torch.float32, device=logits.device)
    cand_id = torch.empty((b, cfg["CAP"]), dtype=torch.int32, device=logits.device)
    text_vocab, first_code, num_codes, boi, eoi, eos, n_codes = layout
    _constrained_sample_kernel[(triton.cdiv(b, cfg["ROWS"]),)](
        logits, image_pos, temperature, top_k, top_p, seed, offset, stream,
        tokens, next_pos, flags, cand_x, cand_id, tokens if modes is None else modes,
        b, logits.stride(0), temperature.stride(0), top_k.stride(0), top_p.stride(0), seed.stride(0),
        offset.stride(0), stream.stride(0),
        text_vocab, first_code, num_codes, boi, eoi, eos, n_codes,
        ROWS=cfg["ROWS"], BLOCK_V=cfg["BLOCK_V"], NP=num_pivots, MAX_REFINE=max_refine,
        CAP=cfg["CAP"], CHUNK=cfg["CHUNK"], VEC=vec, ONLY_FALLBACK=modes is not None, num_warps=cfg["num_warps"],
    )


def _launch_split(args, layout, cap, rows, block_v, vec, programs, by_rank, trace) -> None:
    """Pass 1 (tiles and histograms), select, pass 2 (kept weight per tile and candidates),
    finish; then the pivot sampler on the rows handed over (those return at once otherwise).
    Five launches, no host synchronisation, shapes fixed by ``B`` and ``V``."""
    logits, image_pos, temperature, top_k, top_p, seed, offset, stream, tokens, next_pos, flags = args
    b, v = logits.shape
    dev = logits.device
    cfg = split_config(b, v)
    cfg["ROWS"] = rows or cfg["ROWS"]
    cfg["BLOCK_V"] = max(block_v or cfg["BLOCK_V"], vec)
    cfg["CAP"] = cap or cfg["CAP"]
    _check_pow2(cap=cfg["CAP"], rows=cfg["ROWS"], block_v=cfg["BLOCK_V"])
    text_vocab, first_code, num_codes, boi, eoi, eos, n_codes = layout
    num_tiles = triton.cdiv(vec - 1 + max(text_vocab + 1, num_codes), cfg["BLOCK_V"])
    # The tile workspace's row stride: a multiple of 16, so that its rows load in 16-byte vectors.
    nt_pad = triton.cdiv(num_tiles, 16) * 16
    per_row = programs or programs_per_row(triton.cdiv(b, cfg["ROWS"]), num_tiles)
    assert per_row >= 1, f"programs must be >= 1, got {per_row}"
    tiles_per_program = triton.cdiv(num_tiles, per_row)
    grid2 = (triton.cdiv(b, cfg["ROWS"]), triton.cdiv(num_tiles, tiles_per_program))
    grid1 = (grid2[0],)
    nb = NUM_BUCKETS
    tile_m = torch.empty((b, nt_pad), dtype=torch.float32, device=dev)
    tile_s = torch.empty((b, nt_pad), dtype=torch.float32, device=dev)  # then the weight above the candidates
    tile_arg = torch.empty((b, nt_pad), dtype=torch.int32, device=dev)
    tile_n = torch.empty((b, nt_pad), dtype=torch.int32, device=dev)
    tile_c = torch.empty((b, nt_pad), dtype=torch.int64, device=dev)  # kept candidates' weight, fixed point
    hist = torch.zeros(3 * b * nb, dtype=torch.int32, device=dev)  # one memset: counts, then int64 masses
    hist_n, hist_w = hist[:b * nb], hist[b * nb:].view(torch.int64)
    row_i = torch.empty((b, 8), dtype=torch.int32, device=dev)
    row_f = torch.empty((b, 4), dtype=torch.float32, device=dev)
    cand_x = torch.empty((b, cfg["CAP"]), dtype=torch.float32, device=dev)
    cand_j = torch.empty((b, cfg["CAP"]), dtype=torch.int32, device=dev)
    buckets = dict(MB=MANT_BITS, E_LO=EXP_LO, NE=NUM_EXP)
    tiling = dict(ROWS=cfg["ROWS"], BLOCK_V=cfg["BLOCK_V"], VEC=vec)
    st, sk, sp = temperature.stride(0), top_k.stride(0), top_p.stride(0)
    stride = logits.stride(0)
    _split_tiles_kernel[grid2](
        logits, image_pos, temperature, top_k, top_p, tile_m, tile_s, tile_arg, tile_n, hist_n, hist_w,
        b, stride, st, sk, sp, text_vocab, first_code, num_codes, boi, n_codes, nt_pad, tiles_per_program,
        **tiling, **buckets, num_warps=cfg["num_warps"])
    _split_select_kernel[grid1](
        image_pos, temperature, top_k, top_p, tokens, next_pos, flags,
        tile_m, tile_s, tile_arg, tile_n, hist_n, hist_w, row_i, row_f,
        b, stride, st, sk, sp, text_vocab, first_code, num_codes, boi, eoi, eos, n_codes, nt_pad,
        **tiling, TB=128 * cfg["select_warps"], NBLK=512 if cfg["ROWS"] == 1 else 128,
        CAP=cfg["CAP"], **buckets, num_warps=cfg["select_warps"])
    _split_collect_kernel[grid2](
        logits, image_pos, temperature, tile_s, tile_c, row_i, row_f, cand_x, cand_j,
        b, stride, st, text_vocab, first_code, num_codes, boi, n_codes, nt_pad, tiles_per_program,
        **tiling, CAP=cfg["CAP"], **buckets, num_warps=cfg["num_warps"])
    _split_finish_kernel[grid1](
        logits, image_pos, temperature, top_k, top_p, seed, offset, stream, tokens, next_pos, flags,
        tile_s, tile_c, row_i, row_f, cand_x, cand_j,
        b, stride, st, sk, sp, seed.stride(0), offset.stride(0), stream.stride(0),
        text_vocab, first_code, num_codes, boi, n_codes, nt_pad,
        **tiling, TB=128 * cfg["finish_warps"], CAP=cfg["CAP"],
        CHUNK=max(1, min(cfg["CAP"], 16, 2**20 // (cfg["ROWS"] * cfg["CAP"]))), BY_RANK=by_rank, **buckets,
        num_warps=cfg["finish_warps"])
    _launch_rows(args, layout, None, DEFAULT_NUM_PIVOTS, DEFAULT_MAX_REFINE, None, None, vec, row_i)
    if trace is not None:
        trace.update(passes_grid=grid2, rows_grid=grid1, num_tiles=num_tiles, block_v=cfg["BLOCK_V"],
                     cap=cfg["CAP"], modes=row_i[:, 0])
