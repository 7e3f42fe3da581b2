"""Fused vector quantisation: nearest code, straight-through output, VQ loss and usage counts.

One forward pass per block of ``BLOCK_N`` rows of ``z`` walks the codebook in tiles of
``BLOCK_K`` codes. Each tile's distances ``‖e‖² − 2 z·e`` come from one ``tl.dot`` (fp32
accumulation) and are folded into a running (min, argmin) kept in registers, so no N×K
distance matrix ever exists. ``‖z‖²`` is constant per row and is left out of the argmin.

Distances that are NaN or +inf are clamped to FLT_MAX with ``tl.minimum`` (which returns its
non-NaN operand): such codes are never chosen over a finite one, and ties (also among
clamped ones) go to the lowest index, as ``torch.argmin``. A row of ``z`` with a non-finite
value gets code 0.

The backward kernel writes ``grad_z`` (straight-through gradient plus the VQ-loss term) and,
unless the caller asks for the deterministic path, scatters the codebook gradient with
atomics; ``vq_codebook_grad_segments`` is the deterministic alternative over codes sorted by
value.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from seedfast.kernels._common import round_bf16
from seedfast.kernels._config import autotune_configs, fp32_dot_precision, interpret_bf16

FLT_MAX = tl.constexpr(3.4028234663852886e38)
MAX_DIM = 256


def _fwd_configs() -> list[triton.Config]:
    gpu = [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bn, bk, w, s in [
            (128, 128, 8, 3),
            (128, 64, 4, 4),
            (64, 128, 4, 4),
            (64, 64, 4, 3),
            (32, 128, 4, 3),
        ]
    ]
    return autotune_configs(gpu, triton.Config({"BLOCK_N": 128, "BLOCK_K": 256}))


@triton.autotune(configs=_fwd_configs(), key=["K", "BLOCK_D", "N_BUCKET"], reset_to_zero=["counts_ptr"])
@triton.jit
def _vq_forward_kernel(
    z_ptr, e_ptr, codes_ptr, zq_ptr, loss_part_ptr, counts_ptr,
    N, K, D, stride_zn, stride_ek, stride_qn,
    N_BUCKET,
    BLOCK_D: tl.constexpr,
    WRITE_ZQ: tl.constexpr, WRITE_LOSS: tl.constexpr, WRITE_COUNTS: tl.constexpr,
    INTERPRET_BF16: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    dim_ok = dims < D
    z = tl.load(z_ptr + rows[:, None] * stride_zn + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    if INTERPRET_BF16:
        z = z.to(tl.float32)
    # inf * 0 and nan * 0 are nan: one reduction flags rows with a non-finite entry.
    row_finite = tl.sum(z.to(tl.float32) * 0.0, axis=1) == 0.0

    best = tl.full([BLOCK_N], FLT_MAX, tl.float32)
    best_idx = tl.zeros([BLOCK_N], tl.int32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        # The codebook tile is loaded transposed, [BLOCK_D, BLOCK_K], ready for the dot.
        e_t = tl.load(e_ptr + cols[None, :].to(tl.int64) * stride_ek + dims[:, None],
                      mask=dim_ok[:, None] & col_ok[None, :], other=0.0)
        if INTERPRET_BF16:
            e_t = e_t.to(tl.float32)
        e32 = e_t.to(tl.float32)
        e_sq = tl.sum(e32 * e32, axis=0)
        # Padded columns get +inf, which the clamp below turns into FLT_MAX: they lose every tie
        # against real codes because they carry the highest indices.
        e_sq = tl.where(col_ok, e_sq, float("inf"))
        dot = tl.dot(z, e_t, input_precision=PRECISION)
        dist = tl.minimum(e_sq[None, :] - 2.0 * dot, FLT_MAX)
        tile_min, tile_idx = tl.min(dist, axis=1, return_indices=True)
        better = tile_min < best
        best = tl.where(better, tile_min, best)
        best_idx = tl.where(better, tile_idx + k0, best_idx)

    best_idx = tl.where(row_finite, best_idx, 0)
    tl.store(codes_ptr + rows, best_idx.to(tl.int64), mask=row_ok)
    if WRITE_COUNTS:
        tl.atomic_add(counts_ptr + best_idx, 1, mask=row_ok)
    if WRITE_ZQ or WRITE_LOSS:
        e_rows = tl.load(e_ptr + best_idx[:, None].to(tl.int64) * stride_ek + dims[None, :],
                         mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
        if WRITE_ZQ:
            tl.store(zq_ptr + rows[:, None] * stride_qn + dims[None, :], e_rows,
                     mask=row_ok[:, None] & dim_ok[None, :])
        if WRITE_LOSS:
            diff = e_rows.to(tl.float32) - z.to(tl.float32)
            tl.store(loss_part_ptr + pid, tl.sum(tl.sum(diff * diff, axis=1), axis=0))


@triton.jit
def _vq_backward_kernel(
    z_ptr, e_ptr, codes_ptr, gzq_ptr, gloss_ptr, gz_ptr, ge_acc_ptr,
    N, D, stride_zn, stride_ek, stride_gqn, coeff_z, coeff_e,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_GZQ: tl.constexpr, HAS_GLOSS: tl.constexpr, WRITE_GZ: tl.constexpr, SCATTER: tl.constexpr,
    INTERPRET_BF16: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    mask = row_ok[:, None] & (dims < D)[None, :]
    codes = tl.load(codes_ptr + rows, mask=row_ok, other=0)
    z = tl.load(z_ptr + rows[:, None] * stride_zn + dims[None, :], mask=mask, other=0.0).to(tl.float32)
    e = tl.load(e_ptr + codes[:, None] * stride_ek + dims[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_GLOSS:
        g = tl.load(gloss_ptr).to(tl.float32)
    else:
        g = 0.0
    diff = z - e
    if WRITE_GZ:
        gz = g * coeff_z * diff
        if HAS_GZQ:
            gz += tl.load(gzq_ptr + rows[:, None] * stride_gqn + dims[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(gz_ptr + rows[:, None] * D + dims[None, :], round_bf16(gz, INTERPRET_BF16), mask=mask)
    if SCATTER:
        tl.atomic_add(ge_acc_ptr + codes[:, None] * D + dims[None, :], -(g * coeff_e) * diff, mask=mask)


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


def _n_bucket(n: int) -> int:
    # Autotune once per power-of-two batch size, not per exact N.
    return triton.next_power_of_2(max(n, 1))


def vq_forward(
    z: torch.Tensor, codebook: torch.Tensor, *, write_zq: bool, write_loss: bool, write_counts: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the fused forward on ``z [N, D]`` (unit stride in D) and ``codebook [K, D]``.

    Returns ``(codes int64 [N], z_q [N, D] or empty, loss_sum fp32 0-d or empty,
    counts int32 [K] or empty)``; ``loss_sum`` is Σ (e_code − z)² over all elements.
    """
    n, d = z.shape
    k = codebook.shape[0]
    assert z.stride(1) == 1 and codebook.stride(1) == 1, "unit stride in D required"
    assert d <= MAX_DIM, f"D={d} exceeds the kernel's MAX_DIM={MAX_DIM}"
    dev = z.device
    codes = torch.empty(n, dtype=torch.int64, device=dev)
    zq = torch.empty((n, d) if write_zq else (0, d), dtype=z.dtype, device=dev)
    counts = torch.zeros(k if write_counts else 0, dtype=torch.int32, device=dev)
    if n == 0:
        return codes, zq, torch.zeros((), dtype=torch.float32, device=dev), counts
    # Sized for the smallest BLOCK_N any config uses, so every program owns one slot.
    loss_part = torch.zeros(triton.cdiv(n, 32) if write_loss else 1, dtype=torch.float32, device=dev)

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]),)

    _vq_forward_kernel[grid](
        z, codebook, codes, zq, loss_part, counts,
        n, k, d, z.stride(0), codebook.stride(0), zq.stride(0) if write_zq else d,
        _n_bucket(n),
        BLOCK_D=block_d(d),
        WRITE_ZQ=write_zq, WRITE_LOSS=write_loss, WRITE_COUNTS=write_counts,
        INTERPRET_BF16=interpret_bf16(z.dtype), PRECISION=fp32_dot_precision(z.dtype),
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
    bd = block_d(d)
    dev = z.device
    grad_z = torch.empty((n, d), dtype=z.dtype, device=dev) if need_grad_z else None
    scatter = need_grad_codebook and grad_loss is not None and not deterministic
    ge_acc = torch.zeros((k, d), dtype=torch.float32, device=dev) if scatter else None
    gloss = grad_loss if grad_loss is not None else z.new_zeros((), dtype=torch.float32)
    if grad_zq is not None and grad_zq.stride(1) != 1:
        grad_zq = grad_zq.contiguous()  # e.g. the stride-0 gradient of a .sum()
    gzq = grad_zq if grad_zq is not None else z
    if n > 0 and (need_grad_z or scatter):
        block_n = 64
        _vq_backward_kernel[(triton.cdiv(n, block_n),)](
            z, codebook, codes, gzq, gloss, grad_z if grad_z is not None else z,
            ge_acc if ge_acc is not None else z,
            n, d, z.stride(0), codebook.stride(0), gzq.stride(0), coeff_z, coeff_e,
            BLOCK_D=bd, BLOCK_N=block_n,
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
