"""Fused vector quantisation: nearest code, straight-through output, VQ loss and usage counts.

One forward program owns a block of ``BLOCK_N`` rows of ``z`` and walks a range of the codebook
in tiles of ``BLOCK_K`` codes. Each tile's distances ``‖e‖² − 2 z·e`` come from one ``tl.dot``
(fp32 accumulation) and a per-call table of ``‖e‖²`` (:func:`code_norms`, computed once, not
once per tile and program). ``‖z‖²`` is constant per row and is left out of the argmin. The
program keeps a running minimum per (row, lane) element, ``[BLOCK_N, BLOCK_K]`` in registers,
and reduces across lanes once after the last tile, so the hot loop has no cross-lane
reduction and no N×K distance matrix ever exists.

When N is too small to fill the GPU, the codebook is split into ranges of ``codes_per_split``
codes, one program per (row block, range); each writes its partial (min, argmin) and a merge
kernel picks the winner per row and writes the outputs.

Distances that are NaN or +inf count as FLT_MAX: the running minimum starts at FLT_MAX and
takes only strictly smaller values, so such codes are never chosen over a finite one, and ties
(also among those codes) go to the lowest index, as ``torch.argmin``, within a lane, across
lanes and across codebook ranges alike. A row of ``z`` with a non-finite value gets code 0.

The backward kernel walks D in chunks (so D = 256 costs no more registers than D = 32) and
writes ``grad_z`` (straight-through gradient plus the VQ-loss term) and,
unless the caller asks for the deterministic path, scatters the codebook gradient with
atomics; ``vq_codebook_grad_segments`` is the deterministic alternative over codes sorted by
value. All atomics (codebook gradient, usage counts) are relaxed: they only accumulate, and
nothing reads the sums before the kernel ends, so they need no memory fences.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from seedfast.kernels._common import round_bf16
from seedfast.kernels._config import autotune_configs, fp32_dot_precision, interpret_bf16

FLT_MAX = tl.constexpr(3.4028234663852886e38)
INT32_MAX = tl.constexpr(2**31 - 1)
MAX_DIM = 256
# Codebook ranges of an automatic split are whole multiples of the largest BLOCK_K, so no
# range ends in a partial tile except the codebook's last.
SPLIT_ALIGN = 256
# Enough programs to keep every SM busy with two resident programs.
PROGRAMS_PER_SM = 2
_LARGEST_BLOCK_N = 128
# The merge reads 2 rows' partials per thread (8-byte loads), and writes in [256, 16] chunks.
MERGE_BLOCK_N = 256
MERGE_WRITE_D = 16
# The forward's z_q/loss epilogue walks D in chunks of 64: whole, D = 256 spilled on sm_80
# (27 stores); chunks of 16 or 32 leave one spill at BLOCK_N = 64 on sm_80 (ptxas stops at 168
# registers there), chunks of 64 none.
FWD_WRITE_D = 64
# fp32's forward keeps z in registers up to a 32-feature tile and walks larger ones in chunks of
# 16 features (chunks of 32 compile without spills too, but at 255 registers on sm_80).
FP32_MAX_DOT_D = 32
FP32_DOT_CHUNK = 16
# Elements per program of the ‖e‖² pre-pass: 512 codes of D = 8, 16 of D = 256.
NORMS_TILE = 4096
# The backward's tile: D in chunks of at most 64 and BLOCK_N · chunk = 1024 elements, at least
# 32 rows (128 rows of D = 8, 32 rows of D = 32, 32 × 64 from D = 64 up). Larger tiles spill
# on sm_90 (fp16 at D = 32, bf16 at D = 256).
BACKWARD_CHUNK_D = 64
BACKWARD_TILE = 1024


def _fwd_gpu_configs() -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bn, bk, w, s in [
            # 32 running-minimum elements per thread (BLOCK_N·BLOCK_K / threads).
            (128, 64, 8, 3),
            (128, 64, 8, 4),
            (64, 128, 8, 3),
            (64, 64, 4, 3),
            (64, 64, 4, 4),
            # 16 per thread, for fp32's three-pass tf32 dot.
            (128, 32, 8, 3),
            (64, 32, 4, 3),
        ]
    ]


def _per_thread(config: triton.Config) -> int:
    return config.kwargs["BLOCK_N"] * config.kwargs["BLOCK_K"] // (32 * config.num_warps)


def fwd_config_fits(config: triton.Config, dtype: torch.dtype, feature_tile: int) -> bool:
    """Whether the autotuner may try ``config`` for ``z`` of ``dtype`` and ``BLOCK_D = feature_tile``.

    Read from the sm_80/sm_90 compiled code. The running minimum holds two
    ``[BLOCK_N, BLOCK_K]`` tiles besides the dot's accumulator: 32 elements per thread fit
    beside a bf16/fp16 dot, 16 beside fp32's three-pass tf32 dot. A feature tile over 64 also
    needs ``BLOCK_K <= 64``. Every config kept here compiles without spills at D = 8, 32 and
    256 in every dtype, with and without the z_q/loss writes (the tests hold it): the writes
    walk D in chunks of ``FWD_WRITE_D`` and fp32 past 32 features chunks its dot
    (:func:`dot_features`).
    """
    per_thread = _per_thread(config)
    if dtype == torch.float32:
        return per_thread <= 16
    return per_thread == 32 and (feature_tile <= 64 or config.kwargs["BLOCK_K"] <= 64)


def _prune_fwd_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    if len(configs) == 1:  # the interpreter's single config
        return configs
    args = {**(named_args or {}), **kwargs}
    return [c for c in configs if fwd_config_fits(c, args["z_ptr"].dtype, args["BLOCK_D"])]


def _fwd_configs() -> list[triton.Config]:
    return autotune_configs(_fwd_gpu_configs(), triton.Config({"BLOCK_N": 128, "BLOCK_K": 256}))


@triton.jit
def _vq_code_norms_kernel(e_ptr, norms_ptr, K, D, stride_ek,
                          BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, ROW_ALIGN: tl.constexpr):
    # ROW_ALIGN divides D and the row stride: the dim mask is constant over ROW_ALIGN elements
    # and rows start aligned, so a D = 8 row loads as one vector instead of 8 scalars.
    D = D // ROW_ALIGN * ROW_ALIGN
    stride_ek = stride_ek // ROW_ALIGN * ROW_ALIGN
    cols = tl.program_id(0).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    dims = tl.arange(0, BLOCK_D)
    col_ok = cols < K
    e = tl.load(e_ptr + cols[:, None] * stride_ek + dims[None, :],
                mask=col_ok[:, None] & (dims < D)[None, :], other=0.0).to(tl.float32)
    tl.store(norms_ptr + cols, tl.sum(e * e, axis=1), mask=col_ok)


@triton.jit
def _load_rows(z_ptr, rows, row_ok, dims, dim_ok, stride_zn, INTERPRET_BF16: tl.constexpr):
    """A ``[BLOCK_N, BLOCK_D]`` block of ``z`` and whether each row is finite."""
    z = tl.load(z_ptr + rows[:, None] * stride_zn + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    if INTERPRET_BF16:
        z = z.to(tl.float32)
    # inf * 0 and nan * 0 are nan: one reduction flags rows with a non-finite entry.
    row_finite = tl.sum(z.to(tl.float32) * 0.0, axis=1) == 0.0
    return z, row_finite


@triton.jit
def _rows_finite(z_ptr, rows, row_ok, D, stride_zn, BLOCK_N: tl.constexpr, WRITE_D: tl.constexpr):
    """Whether each row of ``z`` is finite, read in ``[BLOCK_N, WRITE_D]`` chunks."""
    finite = tl.full([BLOCK_N], 1, tl.int1)
    z_rows = z_ptr + rows[:, None] * stride_zn
    for d0 in range(0, D, WRITE_D):
        dims = d0 + tl.arange(0, WRITE_D)
        z = tl.load(z_rows + dims[None, :], mask=row_ok[:, None] & (dims < D)[None, :], other=0.0)
        # inf * 0 and nan * 0 are nan: one reduction flags rows with a non-finite entry.
        finite = finite & (tl.sum(z.to(tl.float32) * 0.0, axis=1) == 0.0)
    return finite


@triton.jit
def _write_outputs(
    code, row_finite, rows, row_ok, slot,
    z_ptr, e_ptr, codes_ptr, zq_ptr, loss_part_ptr, counts_ptr, D, stride_zn, stride_ek, stride_qn,
    BLOCK_N: tl.constexpr, WRITE_D: tl.constexpr,
    WRITE_ZQ: tl.constexpr, WRITE_LOSS: tl.constexpr, WRITE_COUNTS: tl.constexpr,
):
    """Codes, usage counts, ``z_q`` and this block's loss partial sum (into ``loss_part[slot]``).

    ``z_q`` and the loss walk D in chunks of ``WRITE_D``, so that at D = 256 the gathered codes
    and ``z`` never sit in registers whole. ``z`` is loaded again for the loss (an L2 hit, N·D
    elements) rather than kept live across the codebook loop, where its registers are better
    spent on the running minimum."""
    code = tl.where(row_finite, code, 0)
    tl.store(codes_ptr + rows, code.to(tl.int64), mask=row_ok)
    if WRITE_COUNTS:
        tl.atomic_add(counts_ptr + code, 1, mask=row_ok, sem="relaxed")
    if WRITE_ZQ or WRITE_LOSS:
        e_rows = e_ptr + code[:, None].to(tl.int64) * stride_ek
        sq = tl.zeros([BLOCK_N], tl.float32)
        for d0 in range(0, D, WRITE_D):
            dims = d0 + tl.arange(0, WRITE_D)
            mask = row_ok[:, None] & (dims < D)[None, :]
            e = tl.load(e_rows + dims[None, :], mask=mask, other=0.0)
            if WRITE_ZQ:
                tl.store(zq_ptr + rows[:, None] * stride_qn + dims[None, :], e, mask=mask)
            if WRITE_LOSS:
                z = tl.load(z_ptr + rows[:, None] * stride_zn + dims[None, :], mask=mask, other=0.0)
                diff = e.to(tl.float32) - z.to(tl.float32)
                sq += tl.sum(diff * diff, axis=1)
        if WRITE_LOSS:
            tl.store(loss_part_ptr + slot, tl.sum(sq, axis=0))


@triton.autotune(
    configs=_fwd_configs(),
    # Writing z_q and the loss changes the best tile shape, and so does the codebook range a
    # program walks: nearest_code, vq_quantize and split launches tune separately.
    key=["K", "K_SPLIT", "BLOCK_D", "N_BUCKET", "WRITE_ZQ", "WRITE_LOSS", "WRITE_COUNTS", "PARTIAL"],
    prune_configs_by={"early_config_prune": _prune_fwd_configs},
    reset_to_zero=["counts_ptr"],
)
@triton.jit
def _vq_forward_kernel(
    z_ptr, e_ptr, norms_ptr, codes_ptr, zq_ptr, loss_part_ptr, counts_ptr, part_min_ptr, part_idx_ptr,
    N, K, D, K_SPLIT, stride_zn, stride_ek, stride_qn, stride_part,
    N_BUCKET,
    BLOCK_D: tl.constexpr,
    WRITE_ZQ: tl.constexpr, WRITE_LOSS: tl.constexpr, WRITE_COUNTS: tl.constexpr, PARTIAL: tl.constexpr,
    INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr, ROW_ALIGN: tl.constexpr, WRITE_D: tl.constexpr,
    DOT_D: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    # ROW_ALIGN divides D and the strides (see row_align): the dim mask is constant over
    # ROW_ALIGN elements and rows start aligned, so short rows (D = 8) still load as vectors.
    D = D // ROW_ALIGN * ROW_ALIGN
    stride_zn = stride_zn // ROW_ALIGN * ROW_ALIGN
    stride_ek = stride_ek // ROW_ALIGN * ROW_ALIGN
    stride_qn = stride_qn // ROW_ALIGN * ROW_ALIGN
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    dim_ok = dims < D
    if DOT_D == BLOCK_D:
        # The block of z stays in registers (sm_80) or shared memory (sm_90) for the whole walk.
        z, row_finite = _load_rows(z_ptr, rows, row_ok, dims, dim_ok, stride_zn, INTERPRET_BF16)
    else:
        row_finite = _rows_finite(z_ptr, rows, row_ok, D, stride_zn, BLOCK_N, DOT_D)

    k_lo = split * K_SPLIT
    k_hi = tl.minimum(k_lo + K_SPLIT, K)
    lanes = tl.arange(0, BLOCK_K)
    best = tl.full([BLOCK_N, BLOCK_K], FLT_MAX, tl.float32)
    # Lanes start on the range's first tile, so a row whose distances are all NaN, +inf or
    # FLT_MAX ends on the range's first code, the lowest index among equals.
    best_idx = tl.zeros([BLOCK_N, BLOCK_K], tl.int32) + (k_lo + lanes)[None, :]
    for k0 in range(k_lo, k_hi, BLOCK_K):
        cols = k0 + lanes
        col_ok = cols < k_hi
        e_cols = e_ptr + cols[None, :].to(tl.int64) * stride_ek
        if DOT_D == BLOCK_D:
            # The codebook tile is loaded transposed, [BLOCK_D, BLOCK_K], ready for the dot.
            e_t = tl.load(e_cols + dims[:, None], mask=dim_ok[:, None] & col_ok[None, :], other=0.0)
            if INTERPRET_BF16:
                e_t = e_t.to(tl.float32)
            ze = tl.dot(z, e_t, input_precision=PRECISION)
        else:
            # A feature tile too large to keep z in registers (fp32 at D = 256): the dot walks
            # D in chunks of DOT_D, reloading z's chunk (an L1/L2 hit) for every codebook tile.
            ze = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
            for d0 in range(0, D, DOT_D):
                dims_c = d0 + tl.arange(0, DOT_D)
                dim_ok_c = dims_c < D
                z_c = tl.load(z_ptr + rows[:, None] * stride_zn + dims_c[None, :],
                              mask=row_ok[:, None] & dim_ok_c[None, :], other=0.0)
                e_c = tl.load(e_cols + dims_c[:, None], mask=dim_ok_c[:, None] & col_ok[None, :], other=0.0)
                if INTERPRET_BF16:
                    z_c = z_c.to(tl.float32)
                    e_c = e_c.to(tl.float32)
                ze = tl.dot(z_c, e_c, ze, input_precision=PRECISION)
        # Padded columns get ‖e‖² = +inf, so a +inf distance.
        e_sq = tl.load(norms_ptr + cols, mask=col_ok, other=float("inf"))
        dist = e_sq[None, :] - 2.0 * ze
        # Strictly smaller, against a start of FLT_MAX: NaN and +inf distances never win (as if
        # clamped to FLT_MAX), and since a lane sees its codes in increasing order it keeps the
        # lowest index among equal distances.
        better = dist < best
        best = tl.where(better, dist, best)
        best_idx = tl.where(better, cols[None, :], best_idx)

    row_min = tl.min(best, axis=1)
    code = tl.min(tl.where(best == row_min[:, None], best_idx, INT32_MAX), axis=1)
    if PARTIAL:
        tl.store(part_min_ptr + split.to(tl.int64) * stride_part + rows, row_min, mask=row_ok)
        tl.store(part_idx_ptr + split.to(tl.int64) * stride_part + rows, code, mask=row_ok)
    else:
        _write_outputs(code, row_finite, rows, row_ok, pid,
                       z_ptr, e_ptr, codes_ptr, zq_ptr, loss_part_ptr, counts_ptr, D, stride_zn, stride_ek, stride_qn,
                       BLOCK_N, WRITE_D, WRITE_ZQ, WRITE_LOSS, WRITE_COUNTS)


@triton.jit
def _vq_merge_kernel(
    z_ptr, e_ptr, part_min_ptr, part_idx_ptr, codes_ptr, zq_ptr, loss_part_ptr, counts_ptr,
    N, D, N_SPLIT, stride_zn, stride_ek, stride_qn, stride_part,
    BLOCK_N: tl.constexpr, ROW_ALIGN: tl.constexpr, WRITE_D: tl.constexpr,
    WRITE_ZQ: tl.constexpr, WRITE_LOSS: tl.constexpr, WRITE_COUNTS: tl.constexpr,
):
    pid = tl.program_id(0)
    D = D // ROW_ALIGN * ROW_ALIGN
    stride_zn = stride_zn // ROW_ALIGN * ROW_ALIGN
    stride_ek = stride_ek // ROW_ALIGN * ROW_ALIGN
    stride_qn = stride_qn // ROW_ALIGN * ROW_ALIGN
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    min_ptrs = part_min_ptr + rows
    idx_ptrs = part_idx_ptr + rows
    # The partials' rows are padded to stride_part, a multiple of 16: masked by it rather than
    # by N, the loads stay vectors whatever N (padding rows merge garbage that nothing reads).
    part_ok = rows < stride_part
    best = tl.load(min_ptrs, mask=part_ok, other=FLT_MAX)
    code = tl.load(idx_ptrs, mask=part_ok, other=0)
    for _ in range(1, N_SPLIT):
        # Pointer steps stay 64-bit where split * N would overflow int32. The stride is a
        # multiple of 16, so the loads stay vectors whatever N.
        min_ptrs += stride_part
        idx_ptrs += stride_part
        m = tl.load(min_ptrs, mask=part_ok, other=FLT_MAX)
        i = tl.load(idx_ptrs, mask=part_ok, other=0)
        # Ranges hold increasing codes: strictly smaller keeps the lowest index on ties.
        better = m < best
        best = tl.where(better, m, best)
        code = tl.where(better, i, code)
    row_finite = _rows_finite(z_ptr, rows, row_ok, D, stride_zn, BLOCK_N, WRITE_D)
    _write_outputs(code, row_finite, rows, row_ok, pid,
                   z_ptr, e_ptr, codes_ptr, zq_ptr, loss_part_ptr, counts_ptr, D, stride_zn, stride_ek, stride_qn,
                   BLOCK_N, WRITE_D, WRITE_ZQ, WRITE_LOSS, WRITE_COUNTS)


@triton.jit
def _vq_backward_kernel(
    z_ptr, e_ptr, codes_ptr, gzq_ptr, gloss_ptr, gz_ptr, ge_acc_ptr,
    N, D, stride_zn, stride_ek, stride_gqn, coeff_z, coeff_e,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, ROW_ALIGN: tl.constexpr,
    HAS_GZQ: tl.constexpr, HAS_GLOSS: tl.constexpr, WRITE_GZ: tl.constexpr, SCATTER: tl.constexpr,
    INTERPRET_BF16: tl.constexpr,
):
    """One program owns ``BLOCK_N`` rows and walks D in chunks of ``BLOCK_D``: every tile is
    ``[BLOCK_N, BLOCK_D]`` whatever D, so D = 256 needs no more registers than D = 32."""
    pid = tl.program_id(0)
    # ROW_ALIGN divides D and the strides (see row_align): rows start aligned and the dim mask
    # is constant over ROW_ALIGN elements, so short rows still load as vectors.
    D = D // ROW_ALIGN * ROW_ALIGN
    stride_zn = stride_zn // ROW_ALIGN * ROW_ALIGN
    stride_ek = stride_ek // ROW_ALIGN * ROW_ALIGN
    stride_gqn = stride_gqn // ROW_ALIGN * ROW_ALIGN
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    codes = tl.load(codes_ptr + rows, mask=row_ok, other=0)
    if HAS_GLOSS:
        g = tl.load(gloss_ptr).to(tl.float32)
    else:
        g = 0.0
    z_rows = z_ptr + rows[:, None] * stride_zn
    e_rows = e_ptr + codes[:, None] * stride_ek
    gzq_rows = gzq_ptr + rows[:, None] * stride_gqn
    gz_rows = gz_ptr + rows[:, None] * D
    ge_rows = ge_acc_ptr + codes[:, None] * D
    for d0 in range(0, D, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D)
        mask = row_ok[:, None] & (dims < D)[None, :]
        z = tl.load(z_rows + dims[None, :], mask=mask, other=0.0).to(tl.float32)
        e = tl.load(e_rows + dims[None, :], mask=mask, other=0.0).to(tl.float32)
        diff = z - e
        if WRITE_GZ:
            gz = g * coeff_z * diff
            if HAS_GZQ:
                gz += tl.load(gzq_rows + dims[None, :], mask=mask, other=0.0).to(tl.float32)
            tl.store(gz_rows + dims[None, :], round_bf16(gz, INTERPRET_BF16), mask=mask)
        if SCATTER:
            tl.atomic_add(ge_rows + dims[None, :], -(g * coeff_e) * diff, mask=mask, sem="relaxed")


@triton.jit
def _vq_codebook_grad_segments_kernel(
    z_ptr, e_ptr, order_ptr, starts_ptr, gloss_ptr, ge_ptr,
    D, stride_zn, stride_ek, coeff_e,
    BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr, INTERPRET_BF16: tl.constexpr,
):
    code = tl.program_id(0)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < D
    start = tl.load(starts_ptr + code)
    end = tl.load(starts_ptr + code + 1)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for r0 in range(start, end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_ok = r < end
        src = tl.load(order_ptr + r, mask=r_ok, other=0)
        acc += tl.load(z_ptr + src[:, None] * stride_zn + dims[None, :],
                       mask=r_ok[:, None] & dim_ok[None, :], other=0.0).to(tl.float32)
    z_sum = tl.sum(acc, axis=0)
    e = tl.load(e_ptr + code.to(tl.int64) * stride_ek + dims, mask=dim_ok, other=0.0).to(tl.float32)
    g = tl.load(gloss_ptr).to(tl.float32)
    count = (end - start).to(tl.float32)
    ge = g * coeff_e * (count * e - z_sum)
    tl.store(ge_ptr + code.to(tl.int64) * D + dims, round_bf16(ge, INTERPRET_BF16), mask=dim_ok)


def block_d(dim: int) -> int:
    """The padded feature tile: a power of two, at least 16 (the smallest ``tl.dot`` operand)."""
    return max(16, triton.next_power_of_2(dim))


def dot_features(dtype: torch.dtype, feature_tile: int) -> int:
    """Features per ``tl.dot`` of the forward for ``z`` of ``dtype`` and ``BLOCK_D = feature_tile``:
    the whole tile, except fp32 past ``FP32_MAX_DOT_D``, which walks D in chunks of
    ``FP32_DOT_CHUNK`` (three tf32 passes need z's tile in registers twice over: whole, D = 256
    spilled hundreds of registers on sm_80 and sm_90, D = 64 a few on sm_80)."""
    if dtype == torch.float32 and feature_tile > FP32_MAX_DOT_D:
        return FP32_DOT_CHUNK
    return feature_tile


def row_align(*values: int) -> int:
    """The largest power of two, up to 16, dividing every one of ``values`` (D, row strides).

    Kernels take it as ``ROW_ALIGN`` and rewrite each such integer ``x`` as
    ``x // ROW_ALIGN * ROW_ALIGN`` (the same value): the product by a constant tells the compiler
    that rows start at multiples of it and that the ``dims < D`` mask is constant over it, so rows
    shorter than 16 elements (D = 8) still load as vectors. (``tl.multiple_of`` on a scalar
    argument is dropped by Triton 3.8: it carries no hint.)"""
    align = 16
    for v in values:
        while v % align:
            align //= 2
    return align


def _n_bucket(n: int) -> int:
    # Autotune once per power-of-two batch size, not per exact N.
    return triton.next_power_of_2(max(n, 1))


def _sm_count(device: torch.device) -> int:
    return _sm_count_of(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _sm_count_of(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def auto_codes_per_split(n: int, k: int, sm_count: int) -> int:
    """Codes per codebook range for ``n`` rows and ``k`` codes on a GPU with ``sm_count`` SMs.

    Returns ``k`` (no split) when the row blocks alone give ``PROGRAMS_PER_SM`` programs per SM
    at the largest ``BLOCK_N``; otherwise enough ranges to get there, each a multiple of
    ``SPLIT_ALIGN`` codes. SEED's N = 8192, K = 8192 on 132 SMs: 64 row blocks, 5 ranges of 1792.
    A split stops near ``2 · PROGRAMS_PER_SM · sm_count`` programs, so the partial (min, argmin)
    buffers, ranges × N, stay O(N + SMs) and the forward's memory O(N + K).
    """
    row_blocks = triton.cdiv(max(n, 1), _LARGEST_BLOCK_N)
    want = triton.cdiv(PROGRAMS_PER_SM * sm_count, row_blocks)
    splits = min(want, triton.cdiv(k, SPLIT_ALIGN))
    if splits <= 1:
        return k
    return triton.cdiv(triton.cdiv(k, splits), SPLIT_ALIGN) * SPLIT_ALIGN


def code_norms(codebook: torch.Tensor) -> torch.Tensor:
    """``‖e‖²`` of every code, fp32 ``[K]``, summed in fp32 from ``codebook [K, D]`` (unit stride in D)."""
    k, d = codebook.shape
    norms = torch.empty(k, dtype=torch.float32, device=codebook.device)
    if k:
        bd = triton.next_power_of_2(d)  # no tl.dot here: no 16-wide minimum
        block_k = min(NORMS_TILE // bd, 1024)
        _vq_code_norms_kernel[(triton.cdiv(k, block_k),)](
            codebook, norms, k, d, codebook.stride(0),
            BLOCK_D=bd, BLOCK_K=block_k, ROW_ALIGN=row_align(d, codebook.stride(0)),
        )
    return norms


def vq_forward(
    z: torch.Tensor,
    codebook: torch.Tensor,
    *,
    write_zq: bool,
    write_loss: bool,
    write_counts: bool,
    codes_per_split: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the fused forward on ``z [N, D]`` (unit stride in D) and ``codebook [K, D]``.

    ``codes_per_split`` sets the size of the codebook ranges searched by separate programs and
    merged afterwards (``>= K``: one range); ``None`` picks it from N, K and the GPU's SM count
    (:func:`auto_codes_per_split`; one range off the GPU). The codes do not depend on it.

    Returns ``(codes int64 [N], z_q [N, D] or empty, loss_sum fp32 0-d or empty,
    counts int32 [K] or empty)``; ``loss_sum`` is Σ (e_code − z)² over all elements.
    """
    n, d = z.shape
    k = codebook.shape[0]
    assert z.stride(1) == 1 and codebook.stride(1) == 1, "unit stride in D required"
    assert d <= MAX_DIM, f"D={d} exceeds the kernel's MAX_DIM={MAX_DIM}"
    if codes_per_split is not None and (isinstance(codes_per_split, bool) or not isinstance(codes_per_split, int)
                                        or codes_per_split < 1):
        raise ValueError(f"codes_per_split must be a positive int or None, got {codes_per_split!r}")
    dev = z.device
    codes = torch.empty(n, dtype=torch.int64, device=dev)
    zq = torch.empty((n, d) if write_zq else (0, d), dtype=z.dtype, device=dev)
    counts = torch.zeros(k if write_counts else 0, dtype=torch.int32, device=dev)
    if n == 0:
        return codes, zq, torch.zeros((), dtype=torch.float32, device=dev), counts
    if codes_per_split is None:
        codes_per_split = auto_codes_per_split(n, k, _sm_count(dev)) if dev.type == "cuda" else k
    k_split = min(codes_per_split, k)
    n_split = triton.cdiv(k, k_split)
    norms = code_norms(codebook)
    # Sized for the smallest BLOCK_N any config (and the merge) uses, so every program owns one slot.
    loss_part = torch.zeros(triton.cdiv(n, 32) if write_loss else 1, dtype=torch.float32, device=dev)
    partial = n_split > 1
    part_stride = triton.cdiv(n, 16) * 16
    part_min = torch.empty((n_split, part_stride) if partial else 0, dtype=torch.float32, device=dev)
    part_idx = torch.empty((n_split, part_stride) if partial else 0, dtype=torch.int32, device=dev)
    zq_stride = zq.stride(0) if write_zq else d
    align = row_align(d, z.stride(0), codebook.stride(0), zq_stride)

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]), n_split)

    _vq_forward_kernel[grid](
        z, codebook, norms, codes, zq, loss_part, counts, part_min, part_idx,
        n, k, d, k_split, z.stride(0), codebook.stride(0), zq_stride, part_stride,
        _n_bucket(n),
        BLOCK_D=block_d(d),
        WRITE_ZQ=write_zq, WRITE_LOSS=write_loss, WRITE_COUNTS=write_counts, PARTIAL=partial,
        INTERPRET_BF16=interpret_bf16(z.dtype), PRECISION=fp32_dot_precision(z.dtype),
        ROW_ALIGN=align, WRITE_D=min(block_d(d), FWD_WRITE_D), DOT_D=dot_features(z.dtype, block_d(d)),
    )
    if partial:
        _vq_merge_kernel[(triton.cdiv(n, MERGE_BLOCK_N),)](
            z, codebook, part_min, part_idx, codes, zq, loss_part, counts,
            n, d, n_split, z.stride(0), codebook.stride(0), zq_stride, part_stride,
            BLOCK_N=MERGE_BLOCK_N, ROW_ALIGN=align, WRITE_D=min(triton.next_power_of_2(d), MERGE_WRITE_D),
            WRITE_ZQ=write_zq, WRITE_LOSS=write_loss, WRITE_COUNTS=write_counts,
        )
    loss_sum = loss_part.sum() if write_loss else loss_part.new_zeros(())
    return codes, zq, loss_sum, counts


def vq_backward(
    z: torch.Tensor,
    codebook: torch.Tensor,
    codes: torch.Tensor,
    grad_zq: torch.Tensor | None,
    grad_loss: torch.Tensor | None,
    coeff_z: float,
    coeff_e: float,
    *,
    need_grad_z: bool,
    need_grad_codebook: bool,
    deterministic: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``loss = mean((sg(e)−z)²) + β·mean((e−sg(z))²)`` and of the straight-through ``z_q``.

    ``grad_z = grad_zq + grad_loss · coeff_z · (z − e)`` and
    ``grad_e[k] = grad_loss · coeff_e · Σ_{n: code n = k} (e_k − z_n)``.
    """
    n, d = z.shape
    k = codebook.shape[0]
    dev = z.device
    grad_z = torch.empty((n, d), dtype=z.dtype, device=dev) if need_grad_z else None
    scatter = need_grad_codebook and grad_loss is not None and not deterministic
    ge_acc = torch.zeros((k, d), dtype=torch.float32, device=dev) if scatter else None
    gloss = grad_loss if grad_loss is not None else z.new_zeros((), dtype=torch.float32)
    if grad_zq is not None and grad_zq.stride(1) != 1:
        grad_zq = grad_zq.contiguous()  # e.g. the stride-0 gradient of a .sum()
    gzq = grad_zq if grad_zq is not None else z
    if n > 0 and (need_grad_z or scatter):
        chunk = min(triton.next_power_of_2(d), BACKWARD_CHUNK_D)
        block_n = max(32, min(BACKWARD_TILE // chunk, 256))
        _vq_backward_kernel[(triton.cdiv(n, block_n),)](
            z, codebook, codes, gzq, gloss, grad_z if grad_z is not None else z,
            ge_acc if ge_acc is not None else z,
            n, d, z.stride(0), codebook.stride(0), gzq.stride(0), coeff_z, coeff_e,
            BLOCK_D=chunk, BLOCK_N=block_n, ROW_ALIGN=row_align(d, z.stride(0), codebook.stride(0), gzq.stride(0)),
            HAS_GZQ=grad_zq is not None, HAS_GLOSS=grad_loss is not None,
            WRITE_GZ=need_grad_z, SCATTER=scatter, INTERPRET_BF16=interpret_bf16(z.dtype),
        )
    if not need_grad_codebook:
        return grad_z, None
    if grad_loss is None:
        return grad_z, torch.zeros_like(codebook)
    if scatter:
        return grad_z, ge_acc.to(codebook.dtype)
    return grad_z, vq_codebook_grad_segments(z, codebook, codes, grad_loss, coeff_e)


def vq_codebook_grad_segments(
    z: torch.Tensor, codebook: torch.Tensor, codes: torch.Tensor, grad_loss: torch.Tensor, coeff_e: float
) -> torch.Tensor:
    """Deterministic codebook gradient: rows grouped by code with a stable sort, each code's
    rows summed in index order by one program, so every run adds in the same order."""
    n, d = z.shape
    k = codebook.shape[0]
    order = torch.sort(codes, stable=True).indices
    counts = torch.bincount(codes, minlength=k)
    starts = torch.zeros(k + 1, dtype=torch.int64, device=z.device)
    torch.cumsum(counts, 0, out=starts[1:])
    ge = torch.empty((k, d), dtype=codebook.dtype, device=z.device)
    _vq_codebook_grad_segments_kernel[(k,)](
        z, codebook, order, starts, grad_loss, ge,
        d, z.stride(0), codebook.stride(0), coeff_e,
        BLOCK_D=block_d(d), BLOCK_R=32, INTERPRET_BF16=interpret_bf16(codebook.dtype),
    )
    return ge
