"""vq_quantize / nearest_code: the Triton kernel (interpreted on CPU) against the torch
reference and a float64 oracle."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from seedfast.kernels import vq as kvq
from seedfast.ops import nearest_code, nearest_code_reference, vq_loss_reference, vq_quantize, vq_quantize_reference
from tests.accuracy import assert_within_baseline
from tests.aot import aot_compile

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Distances are accumulated in fp32 from inputs that fp32 represents exactly; a code may only
# differ from the oracle's where the two distances are this close (relative to ‖z‖² + ‖e‖²).
CODE_TIE_TOL = 2e-6


def _inputs(n, k, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g).to(device=device, dtype=dtype)
    codebook = torch.randn(k, d, generator=g).to(device=device, dtype=dtype)
    return z, codebook


def _distances64(z, codebook):
    z64, e64 = z.double().reshape(-1, z.shape[-1]), codebook.double()
    return (z64[:, None, :] - e64[None, :, :]).pow(2).sum(-1) if z64.shape[0] * e64.shape[0] < 2e6 else (
        z64.pow(2).sum(1, keepdim=True) + e64.pow(2).sum(1) - 2 * z64 @ e64.t()
    )


def assert_codes_nearest(codes, z, codebook):
    """Every code is the nearest one up to rounding: its distance is within tolerance of the minimum."""
    d = _distances64(z, codebook)
    flat = codes.reshape(-1).cpu()
    assert flat.dtype == torch.int64
    assert ((flat >= 0) & (flat < codebook.shape[0])).all()
    chosen = d.gather(1, flat[:, None]).squeeze(1)
    best = d.min(1).values
    scale = z.double().reshape(-1, z.shape[-1]).pow(2).sum(1) + codebook.double().pow(2).sum(1).max()
    gap = (chosen - best) / scale
    assert (gap <= CODE_TIE_TOL).all(), f"codes not nearest: worst gap {gap.max().item():.3e}"
    exact = (flat == d.argmin(1)).float().mean().item()
    assert exact >= 0.99, f"only {exact:.3f} of codes equal the float64 argmin"


def _oracle_grads(z, codebook, codes, beta, g_zq, w_loss):
    """Loss and gradients in float64 for the given codes (so near-tie choices cannot matter)."""
    z64 = z.detach().cpu().double().requires_grad_()
    e64 = codebook.detach().cpu().double().requires_grad_()
    e = e64[codes.reshape(-1).cpu()].reshape(z64.shape)
    z_q = e.detach() + (z64 - z64.detach())
    loss = vq_loss_reference(z64, e, beta)
    gz, ge = torch.autograd.grad((z_q * g_zq.cpu().double()).sum() + w_loss * loss, (z64, e64))
    return loss.detach(), gz, ge


def _baseline_grads(z, codebook, codes, beta, g_zq, w_loss):
    """The same in the inputs' precision, through plain torch autograd."""
    z_ = z.detach().cpu().requires_grad_()
    e_ = codebook.detach().cpu().requires_grad_()
    e = torch.nn.functional.embedding(codes.cpu(), e_)
    z_q = e.detach() + (z_ - z_.detach())
    loss = vq_loss_reference(z_, e, beta)
    gz, ge = torch.autograd.grad((z_q * g_zq.cpu().to(z.dtype)).sum() + w_loss * loss, (z_, e_))
    return loss.detach(), gz, ge


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("d", [16, 32, 64])
@pytest.mark.parametrize("k", [1, 17, 1000, 8192])
@pytest.mark.parametrize("n", [1, 7, 32, 1000, 4097])
def test_forward_backward_matches_oracle(n, k, d, dtype, device):
    z, codebook = _inputs(n, k, d, dtype, device, seed=n * 7 + k + d)
    _assert_forward_backward_match_oracle(z, codebook)


def _assert_forward_backward_match_oracle(z, codebook):
    """vq_quantize's codes, z_q, counts, loss and both gradients against the float64 oracle,
    each within the error of plain torch in the inputs' precision."""
    n, k, dtype, device = z.shape[0], codebook.shape[0], z.dtype, z.device
    z.requires_grad_()
    codebook.requires_grad_()
    beta = 0.25
    out = vq_quantize(z, codebook, beta, backend="triton", return_counts=True)

    assert out.z_q.shape == z.shape and out.z_q.dtype == dtype
    assert out.codes.shape == (n,) and out.loss.shape == () and out.loss.dtype == torch.float32
    assert_codes_nearest(out.codes, z.detach(), codebook.detach())
    assert torch.equal(out.z_q.detach(), codebook.detach()[out.codes])
    assert torch.equal(out.counts.cpu(), torch.bincount(out.codes.cpu(), minlength=k))

    g_zq = torch.randn(z.shape, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    w_loss = 3.0
    gz, ge = torch.autograd.grad((out.z_q * g_zq).sum() + w_loss * out.loss, (z, codebook))
    o_loss, o_gz, o_ge = _oracle_grads(z, codebook, out.codes, beta, g_zq, w_loss)
    b_loss, b_gz, b_ge = _baseline_grads(z, codebook, out.codes, beta, g_zq, w_loss)
    assert_within_baseline(out.loss, b_loss, o_loss, floor=1e-6, what="loss")
    assert gz.dtype == dtype and ge.dtype == dtype
    assert_within_baseline(gz, b_gz, o_gz, floor=1e-6, what="grad z")
    assert_within_baseline(ge, b_ge, o_ge, floor=1e-6, what="grad codebook")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
def test_nearest_code_matches_reference(dtype, device):
    z, codebook = _inputs(3 * 32 * 4, 8192, 32, dtype, device, seed=3)
    z = z.reshape(3, 4, 32, 32)
    codes = nearest_code(z, codebook, backend="triton")
    assert codes.shape == (3, 4, 32) and codes.dtype == torch.int64
    assert_codes_nearest(codes, z, codebook)
    ref = nearest_code_reference(z, codebook)
    assert (codes == ref).float().mean() >= 0.99
    assert torch.equal(codes, vq_quantize(z, codebook, backend="triton").codes)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_ties_go_to_lowest_index(backend, device):
    z, base = _inputs(300, 400, 32, torch.float32, device, seed=5)
    # Code j and code j + 400 are equal, and the second copies sit in another codebook tile.
    codebook = torch.cat([base, base])
    codes = nearest_code(z, codebook, backend=backend)
    assert (codes < 400).all()
    assert torch.equal(codes, torch.cdist(z.double(), base.double()).argmin(1))
    # All codes equal: every row picks code 0.
    same = base[:1].expand(500, 32).contiguous()
    assert (nearest_code(z, same, backend=backend) == 0).all()


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_non_finite_policy(backend, device):
    z, codebook = _inputs(64, 100, 32, torch.float32, device, seed=6)
    clean = nearest_code(z, codebook, backend=backend)
    nearest_of_row_3 = clean[3].item()
    z[5, 7] = float("nan")
    z[9, 0] = float("inf")
    z[11, 2] = -float("inf")
    codebook[nearest_of_row_3, 4] = float("nan")
    codebook[17, 0] = float("inf")
    out = vq_quantize(z, codebook, backend=backend)
    assert out.codes[5] == 0 and out.codes[9] == 0 and out.codes[11] == 0
    assert out.codes[3] != nearest_of_row_3
    bad_codes = {nearest_of_row_3, 17}
    assert not any(c in bad_codes for c in out.codes.tolist())
    assert torch.isnan(out.loss)
    # Rows untouched by the edits keep their codes unless their nearest code was poisoned.
    keep = torch.tensor([i not in (5, 9, 11) and clean[i].item() not in bad_codes for i in range(64)])
    assert torch.equal(out.codes[keep], clean[keep])


def test_reference_and_kernel_agree_on_non_finite(device):
    z, codebook = _inputs(40, 50, 16, torch.float32, device, seed=7)
    z[::5, 3] = float("nan")
    codebook[::7, 1] = -float("inf")
    assert torch.equal(nearest_code(z, codebook, backend="triton"), nearest_code(z, codebook, backend="torch"))


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_empty_batch(backend, device):
    z = torch.randn(0, 32, device=device, requires_grad=True)
    codebook = torch.randn(8192, 32, device=device, requires_grad=True)
    out = vq_quantize(z, codebook, backend=backend, return_counts=True)
    assert out.z_q.shape == (0, 32) and out.codes.shape == (0,)
    assert torch.isnan(out.loss)
    assert out.counts.sum() == 0
    gz, = torch.autograd.grad(out.z_q.sum(), (z,))
    assert gz.shape == (0, 32)
    assert nearest_code(z, codebook, backend=backend).shape == (0,)


def test_non_contiguous_inputs(device):
    wide = torch.randn(8192, 48, device=device)
    codebook = wide[:, 8:40]  # row stride 48, unit stride in D
    zt = torch.randn(32, 70, device=device)[:, 3:67].t()  # [64, 32], column-major view
    assert not zt.is_contiguous() and not codebook.is_contiguous()
    zt = zt.requires_grad_()
    out = vq_quantize(zt, codebook, backend="triton")
    ref = vq_quantize_reference(zt, codebook)
    assert_codes_nearest(out.codes, zt.detach(), codebook)
    assert torch.equal(out.codes, ref.codes)
    assert torch.allclose(out.loss, ref.loss, rtol=1e-5)
    g1, = torch.autograd.grad(out.loss + out.z_q.sum(), (zt,))
    g2, = torch.autograd.grad(ref.loss + ref.z_q.sum(), (zt,))
    assert torch.allclose(g1, g2, rtol=1e-5, atol=1e-7)


def test_batch_dims_and_mixed_dtypes(device):
    z = torch.randn(4, 32, 32, device=device, dtype=torch.bfloat16, requires_grad=True)
    codebook = torch.randn(8192, 32, device=device, requires_grad=True)  # fp32, as a Parameter under autocast
    out = vq_quantize(z, codebook, backend="triton")
    assert out.codes.shape == (4, 32) and out.z_q.shape == (4, 32, 32)
    assert out.z_q.dtype == torch.float32  # promoted
    out.loss.backward()
    assert z.grad.dtype == torch.bfloat16 and codebook.grad.dtype == torch.float32
    assert_codes_nearest(out.codes, z.detach().float(), codebook.detach())


def test_deterministic_codebook_gradient(device):
    z, codebook = _inputs(4097, 300, 32, torch.float32, device, seed=8)
    z.requires_grad_()
    codebook.requires_grad_()
    grads = []
    for deterministic in (True, True, False):
        out = vq_quantize(z, codebook, deterministic=deterministic, backend="triton")
        grads.append(torch.autograd.grad(out.loss, (codebook,))[0])
    assert torch.equal(grads[0], grads[1])
    assert torch.allclose(grads[0], grads[2], rtol=1e-5, atol=1e-9)
    # The global switch selects the fixed-order path too.
    torch.use_deterministic_algorithms(True)
    try:
        out = vq_quantize(z, codebook, backend="triton")
        assert torch.equal(torch.autograd.grad(out.loss, (codebook,))[0], grads[0])
    finally:
        torch.use_deterministic_algorithms(False)


def test_seeded_runs_are_identical(device):
    results = []
    for _ in range(2):
        torch.manual_seed(123)
        z = torch.randn(1000, 32, device=device, requires_grad=True)
        codebook = torch.randn(1000, 32, device=device)
        out = vq_quantize(z, codebook, backend="triton")
        results.append((out.codes, out.loss, torch.autograd.grad(out.loss, (z,))[0]))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_grads_only_where_needed(device):
    z, codebook = _inputs(100, 64, 32, torch.float32, device)
    z.requires_grad_()
    out = vq_quantize(z, codebook, backend="triton")
    out.loss.backward()
    assert codebook.grad is None and z.grad is not None
    z2, cb2 = _inputs(100, 64, 32, torch.float32, device)
    cb2.requires_grad_()
    out = vq_quantize(z2, cb2, backend="triton")
    # Only z_q is used: the straight-through path sends no gradient to the codebook.
    out.z_q.sum().backward()
    assert torch.count_nonzero(cb2.grad) == 0


def test_reference_gradcheck():
    """gradcheck where finite differences can see the gradient: stop-gradients make the VQ
    surrogate differ from the loss value's derivative, but with beta = 0 the z-gradient is the
    derivative of the loss, and the beta-term alone carries the codebook gradient."""
    z = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    codebook = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    beta = 0.25
    assert torch.autograd.gradcheck(lambda z: vq_quantize_reference(z, codebook.detach(), 0.0).loss, (z,))

    def codebook_term(codebook):
        with_beta = vq_quantize_reference(z.detach(), codebook, beta).loss
        return with_beta - vq_quantize_reference(z.detach(), codebook, 0.0).loss

    assert torch.autograd.gradcheck(codebook_term, (codebook,))


def test_reference_loss_is_the_legacy_formula():
    z = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    codebook = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    out = vq_quantize_reference(z, codebook, 0.25)
    gz, ge = torch.autograd.grad(out.loss, (z, codebook))
    e = codebook.detach()[out.codes]
    m = z.numel()
    assert torch.allclose(gz, 2 * (z.detach() - e) / m)  # commitment term, weight 1
    expected = torch.zeros_like(codebook).index_add_(0, out.codes, 0.25 * 2 * (e - z.detach()) / m)
    assert torch.allclose(ge, expected)  # codebook term, weight beta
    assert torch.allclose(out.loss, 1.25 * (e - z.detach()).pow(2).mean())


def test_auto_backend_uses_reference_on_cpu():
    z, codebook = torch.randn(10, 32), torch.randn(100, 32)
    assert torch.equal(nearest_code(z, codebook), nearest_code_reference(z, codebook))
    out = vq_quantize(z.double(), codebook.double())  # fp64 has no kernel: reference
    assert out.loss.dtype == torch.float64


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda: vq_quantize(torch.randn(4, 16), torch.randn(8, 32)), ValueError, "last dimension (16)"),
        (lambda: vq_quantize(torch.randn(4, 16), torch.randn(0, 16)), ValueError, "at least one code"),
        (lambda: vq_quantize(torch.randint(0, 3, (4, 16)), torch.randn(8, 16)), TypeError, "z must have dtype"),
        (lambda: vq_quantize(torch.randn(4, 16), torch.randn(8, 16).long()), TypeError, "codebook must have dtype"),
        (lambda: vq_quantize(torch.randn(4, 16), torch.randn(2, 8, 16)), ValueError, "codebook must have 2 dimensions"),
        (lambda: vq_quantize([1.0], torch.randn(8, 16)), TypeError, "z must be a torch.Tensor"),
        (lambda: vq_quantize(torch.randn(4, 16), torch.randn(8, 16, device="meta")), ValueError, "one device"),
        (lambda: vq_quantize(torch.randn(4, 16), torch.randn(8, 16), beta=-1.0), ValueError, "beta"),
        (lambda: vq_quantize(torch.randn(4, 16), torch.randn(8, 16), backend="fast"), ValueError, "backend must be"),
        (lambda: vq_quantize(torch.randn(4, 16), torch.randn(8, 16), backend="cuda"), ValueError, "no CUDA C++"),
        (lambda: nearest_code(torch.randn(4, 300), torch.randn(8, 300), backend="triton"), ValueError, "D <= 256"),
        (lambda: nearest_code(torch.randn(4, 8).double(), torch.randn(8, 8).double(), backend="triton"), ValueError,
         "float64"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, exc, words):
    with pytest.raises(exc, match=None) as info:
        call()
    assert words in str(info.value), str(info.value)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        nearest_code(torch.randn(4, 16), torch.randn(8, 16), backend="triton")


def test_custom_ops_pass_opcheck(device):
    z, codebook = _inputs(70, 50, 32, torch.float32, device)
    z.requires_grad_()
    codebook.requires_grad_()
    torch.library.opcheck(torch.ops.seedfast.vq_quantize.default, (z, codebook, 0.25, True, False))
    torch.library.opcheck(torch.ops.seedfast.nearest_code.default, (z.detach(), codebook.detach()))


def test_torch_compile_fullgraph_matches_eager(device):
    z, codebook = _inputs(64, 100, 32, torch.float32, device)
    z.requires_grad_()
    codebook.requires_grad_()

    def step(z, codebook):
        out = vq_quantize(z, codebook, backend="triton")
        return out.z_q.square().sum() + out.loss

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    eager_loss = step(z, codebook)
    compiled_loss = compiled(z, codebook)
    assert torch.allclose(eager_loss, compiled_loss)
    g_eager = torch.autograd.grad(eager_loss, (z, codebook))
    g_compiled = torch.autograd.grad(compiled_loss, (z, codebook))
    for a, b in zip(g_eager, g_compiled):
        assert torch.allclose(a, b)


def _strided(x, pad, seed):
    """``x`` copied into a view with row stride ``D + pad`` that starts ``pad // 2`` elements in:
    rows start unaligned whenever ``D + pad`` is odd."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(x.shape[0], x.shape[1] + pad, generator=g).to(device=x.device, dtype=x.dtype)
    view = wide[:, pad // 2:pad // 2 + x.shape[1]]
    view.copy_(x)
    return view


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("n, k, d, pad", [
    (129, 300, 8, 0),    # D = 8: rows 16-byte aligned in bf16, backward rows of 128
    (37, 70, 24, 0),     # a dim mask inside the tile, rows 8 elements aligned
    (33, 65, 100, 0),    # the backward's second D chunk ends inside it; fp32 walks its dot in 7 chunks
    (40, 257, 256, 0),   # four backward chunks, 16 dot chunks in fp32, eight write chunks
    (31, 50, 8, 3),      # row stride 11: nothing aligned
    (19, 40, 256, 1),    # row stride 257
])
def test_forward_backward_walk_features_in_chunks(n, k, d, pad, dtype, device):
    """The kernels that walk D in chunks (backward, the forward's z_q/loss writes, fp32's dot
    past 32 features) and the row alignment they are told, against the oracle."""
    z, codebook = _inputs(n, k, d, dtype, device, seed=n + k + d + pad)
    if pad:
        z, codebook = _strided(z, pad, 1), _strided(codebook, pad + 2, 2)
        assert kvq.row_align(d, z.stride(0), codebook.stride(0)) == 1
    _assert_forward_backward_match_oracle(z.detach(), codebook.detach())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("k, d, pad", [(1, 8, 0), (1000, 8, 0), (513, 24, 0), (77, 256, 0), (300, 13, 0),
                                       (70, 8, 3), (65, 32, 8)])
def test_code_norms_match_torch(k, d, pad, dtype, device):
    """‖e‖² of every code, fp32, for K not a multiple of the tile, D = 8 (vector rows), D not a
    power of two, and row strides that align rows to 16, 8 or 1 elements."""
    _, codebook = _inputs(1, k, d, dtype, device, seed=k + d)
    if pad:
        codebook = _strided(codebook, pad, 3)
    norms = kvq.code_norms(codebook)
    assert norms.shape == (k,) and norms.dtype == torch.float32
    expected = codebook.double().pow(2).sum(1)
    assert torch.allclose(norms.double(), expected, rtol=2e-6, atol=0), (norms - expected).abs().max()


def test_row_align():
    assert kvq.row_align(8) == 8 and kvq.row_align(32, 32) == 16 and kvq.row_align(256, 512, 48) == 16
    assert kvq.row_align(24, 32) == 8 and kvq.row_align(8, 11) == 1 and kvq.row_align(100, 100) == 4
    assert kvq.row_align(8, 0) == 8  # a stride of 0 (an unused tensor) constrains nothing


def test_dot_features():
    """fp32 keeps whole feature tiles up to 32 and walks larger ones in 16-feature chunks;
    bf16/fp16 always dot the whole tile."""
    assert kvq.dot_features(torch.float32, 16) == 16 and kvq.dot_features(torch.float32, 32) == 32
    assert kvq.dot_features(torch.float32, 64) == 16 and kvq.dot_features(torch.float32, 256) == 16
    assert kvq.dot_features(torch.bfloat16, 256) == 256 and kvq.dot_features(torch.float16, 128) == 128


# ---------------------------------------------------------------------------------------------
# The forward kernel's internals: codebook splits, large codebooks, ties, compiled code.


def _forward_signature(dt):
    return {
        "z_ptr": f"*{dt}", "e_ptr": f"*{dt}", "norms_ptr": "*fp32", "codes_ptr": "*i64", "zq_ptr": f"*{dt}",
        "loss_part_ptr": "*fp32", "counts_ptr": "*i32", "part_min_ptr": "*fp32", "part_idx_ptr": "*i32",
        "N": "i32", "K": "i32", "D": "i32", "K_SPLIT": "i32", "stride_zn": "i32", "stride_ek": "i32",
        "stride_qn": "i32", "stride_part": "i32", "N_BUCKET": "i32",
    }


def _fused_forward(z, codebook, codes_per_split):
    return kvq.vq_forward(z, codebook, write_zq=True, write_loss=True, write_counts=True,
                          codes_per_split=codes_per_split)


def _assert_same_forward(split, whole):
    codes, z_q, loss, counts = split
    assert torch.equal(codes, whole[0])
    assert torch.equal(z_q, whole[1])
    assert torch.equal(counts, whole[3])
    # The merge kernel sums the loss over other row blocks: same terms, another order.
    assert torch.allclose(loss, whole[2], rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("n, k, d, per_split", [
    (1, 17, 16, 5),       # ranges smaller than a tile
    (37, 1000, 8, 300),   # ranges that end inside a tile
    (5, 4097, 32, 256),   # one code in the last range
    (70, 777, 256, 100),  # the largest D
    (129, 2048, 32, 1024),
    (300, 700, 24, 256),  # two merge blocks, the second partial; D not a power of two
])
def test_codebook_split_gives_the_same_result(n, k, d, per_split, dtype, device):
    z, codebook = _inputs(n, k, d, dtype, device, seed=n + k + d)
    whole = _fused_forward(z, codebook, k)
    split = _fused_forward(z, codebook, per_split)
    assert_codes_nearest(whole[0], z, codebook)
    _assert_same_forward(split, whole)
    assert torch.equal(kvq.vq_forward(z, codebook, write_zq=False, write_loss=False, write_counts=False,
                                      codes_per_split=per_split)[0], whole[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("d", [8, 32, 256])
def test_large_codebook(d, dtype, device):
    n, k = 31, 65533  # odd sizes: neither is a multiple of a tile
    z, codebook = _inputs(n, k, d, dtype, device, seed=d)
    whole = _fused_forward(z, codebook, k)
    assert_codes_nearest(whole[0], z, codebook)
    assert torch.equal(whole[1], codebook[whole[0]])
    assert torch.equal(whole[3].long(), torch.bincount(whole[0], minlength=k))
    _assert_same_forward(_fused_forward(z, codebook, 8192 + 256), whole)


@pytest.mark.parametrize("per_split", [None, 700, 256, 100])
def test_ties_go_to_lowest_index_within_lanes_across_lanes_and_ranges(per_split, device):
    z, base = _inputs(60, 256, 32, torch.float32, device, seed=11)
    expected = torch.cdist(z.double(), base.double()).argmin(1)
    # Copies 256 codes apart share a lane of the interpreter's 256-code tile (a tie within a
    # lane across tiles); copies 300 apart sit in other lanes; ranges of 100 or 256 codes put
    # the copies in other ranges too.
    for codebook in (torch.cat([base, base, base]), torch.cat([base, base[:44], base])):
        codes = _fused_forward(z, codebook, per_split)[0]
        assert torch.equal(codes, expected)
    same = base[:1].expand(701, 32).contiguous()
    assert (_fused_forward(z, same, per_split)[0] == 0).all()


def test_codebook_split_keeps_the_non_finite_policy(device):
    z, codebook = _inputs(64, 600, 32, torch.float32, device, seed=6)
    z[5, 7] = float("nan")
    z[9, 0] = float("inf")
    z[11, 2] = -float("inf")
    codebook[3, 4] = float("nan")
    codebook[17, 0] = float("inf")
    codebook[450, 1] = -float("inf")
    whole = _fused_forward(z, codebook, 600)
    assert whole[0][5] == 0 and whole[0][9] == 0 and whole[0][11] == 0
    assert not any(c in (3, 17, 450) for c in whole[0].tolist())
    for per_split in (300, 128, 7):
        _assert_same_forward(_fused_forward(z, codebook, per_split), whole)
    # A codebook whose every code is poisoned: every row gets the lowest index, 0.
    poisoned = codebook.clone()
    poisoned[:, 0] = float("nan")
    for per_split in (600, 128):
        assert (_fused_forward(z, poisoned, per_split)[0] == 0).all()


def test_automatic_codebook_split():
    # SEED's N = 8192 on an H100's 132 SMs: 64 row blocks of 128 become 64 × 5 programs.
    assert kvq.auto_codes_per_split(8192, 8192, 132) == 1792
    # Enough row blocks already: one range.
    assert kvq.auto_codes_per_split(262144, 8192, 132) == 8192
    # One row: as many ranges as SPLIT_ALIGN allows.
    assert kvq.auto_codes_per_split(1, 8192, 132) == kvq.SPLIT_ALIGN
    # A codebook of one aligned range or less is never split.
    assert kvq.auto_codes_per_split(1, 100, 132) == 100
    assert kvq.auto_codes_per_split(1, 256, 132) == 256
    for n in (1, 100, 8192, 20000, 40000):
        for k in (257, 8192, 65536, 262144):
            per = kvq.auto_codes_per_split(n, k, 132)
            assert per == k or per % kvq.SPLIT_ALIGN == 0
            row_blocks, splits = -(-n // 128), -(-k // per)
            # The partial buffers (splits × N) stay O(N + SMs): about 2 programs per SM at most.
            assert splits == 1 or splits * row_blocks <= 2 * kvq.PROGRAMS_PER_SM * 132


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_codes_per_split_must_be_a_positive_int(bad, device):
    z, codebook = _inputs(4, 16, 16, torch.float32, device)
    with pytest.raises(ValueError, match="codes_per_split must be a positive int"):
        kvq.vq_forward(z, codebook, write_zq=False, write_loss=False, write_counts=False, codes_per_split=bad)


def test_forward_autotunes_per_output_set_and_split():
    """nearest_code (codes only), vq_quantize (codes, z_q, loss, counts) and split launches
    tune separately: the WRITE_* flags and the split are in the autotune key."""
    assert {"WRITE_ZQ", "WRITE_LOSS", "WRITE_COUNTS", "PARTIAL", "K_SPLIT"} <= set(kvq._vq_forward_kernel.keys)


def test_forward_configs_are_pruned_per_dtype_and_feature_tile():
    """fp32 (three tf32 passes) gets the 16-element-per-thread tiles, bf16/fp16 the 32-element
    ones, and D > 64 no 128-code tiles (the compiled-code test holds D = 32 spill-free)."""
    configs = kvq._fwd_gpu_configs()

    def picked(dtype, block_d):
        z = torch.empty(0, dtype=dtype)
        return {(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages)
                for c in kvq._prune_fwd_configs(configs, {"z_ptr": z}, BLOCK_D=block_d)}

    assert picked(torch.float32, 32) == {(128, 32, 8, 3), (64, 32, 4, 3)}
    assert picked(torch.bfloat16, 32) == picked(torch.float16, 32) == {
        (128, 64, 8, 3), (128, 64, 8, 4), (64, 128, 8, 3), (64, 64, 4, 3), (64, 64, 4, 4)}
    assert picked(torch.bfloat16, 256) == {(128, 64, 8, 3), (128, 64, 8, 4), (64, 64, 4, 3), (64, 64, 4, 4)}
    # The interpreter's single config is never pruned away.
    assert kvq._prune_fwd_configs(configs[:1], {"z_ptr": torch.empty(0)}, BLOCK_D=256) == configs[:1]


_INSPECT = textwrap.dedent(
    """
    import json, os, subprocess, sys, tempfile
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from seedfast.kernels import vq

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    out = []
    for spec in json.loads(sys.argv[1]):
        kernel = getattr(vq, spec["kernel"])
        # "options": None compiles at every config the autotuner would try on a GPU for this case.
        if spec["options"] is None:
            dtype = getattr(torch, spec["dtype"])
            variants = [(dict(spec["constexprs"], **c.kwargs), {"num_warps": c.num_warps, "num_stages": c.num_stages})
                        for c in kernel.configs if vq.fwd_config_fits(c, dtype, spec["constexprs"]["BLOCK_D"])]
        else:
            variants = [(spec["constexprs"], spec["options"])]
        for constexprs, options in variants:
            signature = dict(spec["signature"], **{k: "constexpr" for k in constexprs})
            jit = kernel.fn if hasattr(kernel, "configs") else kernel  # an Autotuner wraps its JITFunction
            src = triton.compiler.ASTSource(fn=jit, signature=signature,
                                            constexprs=constexprs)
            compiled = triton.compile(src, target=GPUTarget("cuda", spec["cc"], 32), options=options)
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(compiled.asm["cubin"])
                f.flush()
                res = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
                sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
            out.append({"spec": dict(spec, constexprs=constexprs, options=options),
                        "ptx": compiled.asm["ptx"], "sass": sass, "res": res})
    print(json.dumps(out))
    """
)


def _compiled_code(specs):
    """PTX, SASS and ``cuobjdump -res-usage`` of each spec (and config), compiled ahead of time
    (no GPU); each result carries the spec it was compiled from."""
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run([sys.executable, "-c", _INSPECT, json.dumps(specs)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _sass_loops(sass):
    """``(start, end)`` addresses of every backward branch's loop in a SASS listing."""
    loops = []
    for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?BRA[.A-Z0-9]*\s[^;]*?(0x[0-9a-f]+)", sass):
        if int(m.group(2), 16) < int(m.group(1), 16):
            loops.append((int(m.group(2), 16), int(m.group(1), 16)))
    return loops


def _sass_addresses(sass, opcode):
    pattern = rf"/\*([0-9a-f]{{4,}})\*/\s+(?:@!?U?P[T0-9]+\s+)?{opcode}\b"
    return [int(m.group(1), 16) for m in re.finditer(pattern, sass)]


pytest_aot = pytest.mark.skipif(os.environ.get("SEEDFAST_SKIP_AOT") == "1", reason="AOT compile disabled")


@pytest_aot
def test_atomics_are_relaxed_without_fences():
    """The codebook-gradient scatter and the usage counts compile to relaxed atomics: no
    acq_rel/sc fence in the PTX and no GPU-scope ``MEMBAR`` or ``CCTL.IVALL`` in the SASS
    (acq_rel wrapped every ``ATOMG`` in ``MEMBAR.ALL.GPU`` … ``CCTL.IVALL``)."""
    specs = []
    for cc in (80, 90):
        specs.append({
            "kernel": "_vq_backward_kernel", "cc": cc, "options": {"num_warps": 4},
            "signature": {
                "z_ptr": "*bf16", "e_ptr": "*bf16", "codes_ptr": "*i64", "gzq_ptr": "*bf16", "gloss_ptr": "*fp32",
                "gz_ptr": "*bf16", "ge_acc_ptr": "*fp32", "N": "i32", "D": "i32", "stride_zn": "i32",
                "stride_ek": "i32", "stride_gqn": "i32", "coeff_z": "fp32", "coeff_e": "fp32",
            },
            "constexprs": {"BLOCK_D": 32, "BLOCK_N": 32, "ROW_ALIGN": 16, "HAS_GZQ": True, "HAS_GLOSS": True,
                           "WRITE_GZ": True, "SCATTER": True, "INTERPRET_BF16": False},
        })
        specs.append({
            "kernel": "_vq_forward_kernel", "cc": cc, "options": {"num_warps": 4, "num_stages": 3},
            "signature": _forward_signature("bf16"),
            "constexprs": {"BLOCK_D": 32, "WRITE_ZQ": True, "WRITE_LOSS": True, "WRITE_COUNTS": True,
                           "PARTIAL": False, "INTERPRET_BF16": False, "PRECISION": "ieee",
                           "ROW_ALIGN": 16, "WRITE_D": 32, "DOT_D": 32, "BLOCK_N": 64, "BLOCK_K": 64},
        })
        specs.append({
            "kernel": "_vq_merge_kernel", "cc": cc, "options": {"num_warps": 4},
            "signature": {
                "z_ptr": "*bf16", "e_ptr": "*bf16", "part_min_ptr": "*fp32", "part_idx_ptr": "*i32",
                "codes_ptr": "*i64", "zq_ptr": "*bf16", "loss_part_ptr": "*fp32", "counts_ptr": "*i32",
                "N": "i32", "D": "i32", "N_SPLIT": "i32", "stride_zn": "i32", "stride_ek": "i32", "stride_qn": "i32",
                "stride_part": "i32",
            },
            "constexprs": {"BLOCK_N": 256, "ROW_ALIGN": 16, "WRITE_D": 16, "WRITE_ZQ": True, "WRITE_LOSS": True,
                           "WRITE_COUNTS": True},
        })
    for code in _compiled_code(specs):
        spec = code["spec"]
        what = f"{spec['kernel']} sm_{spec['cc']}"
        atomics = [line for line in code["ptx"].splitlines() if re.search(r"\b(atom|red)\.", line)]
        assert atomics, f"{what}: no atomics in the PTX"
        assert all(".relaxed" in line for line in atomics), f"{what}: not relaxed: {atomics[:3]}"
        # The forward's wgmma keeps its shared-memory proxy fences (fence.proxy.async, a CTA
        # MEMBAR): those order the dot's operands, not global memory.
        assert not re.search(r"\bfence\.(acq_rel|sc|acquire|release)\b|\bmembar\.(gl|sys)\b", code["ptx"]), \
            f"{what}: a global memory fence in the PTX"
        assert not re.search(r"MEMBAR\.[A-Z.]*(GPU|SYS)|CCTL\.IVALL", code["sass"]), f"{what}: a GPU fence in the SASS"
        assert re.search(r"\b(ATOMG|REDG|RED|ATOM)\.", code["sass"]), f"{what}: no global atomics in the SASS"


@pytest_aot
@pytest.mark.parametrize("cc", [80, 90])
def test_forward_hot_loop_uses_tensor_cores_without_spills(cc):
    """At every config the autotuner can pick, for SEED's D = 32 in every dtype, with and
    without the z_q/loss/count writes, the forward's codebook loop issues tensor-core
    instructions (HGMMA on sm_90, HMMA on sm_80) and the kernel spills nothing to local memory."""
    cases = [(dt, 32) for dt in ("bfloat16", "float16", "float32")]
    names = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
    specs = [
        {
            "kernel": "_vq_forward_kernel", "cc": cc, "options": None, "dtype": dt,
            "signature": _forward_signature(names[dt]),
            "constexprs": {"BLOCK_D": bd, "WRITE_ZQ": write, "WRITE_LOSS": write, "WRITE_COUNTS": write,
                           "PARTIAL": not write, "INTERPRET_BF16": False,
                           "PRECISION": "tf32x3" if dt == "float32" else "ieee", "ROW_ALIGN": 16,
                           "WRITE_D": min(bd, kvq.FWD_WRITE_D), "DOT_D": kvq.dot_features(getattr(torch, dt), bd)},
        }
        for dt, bd in cases
        for write in (True, False)
    ]
    expected = sum(kvq.fwd_config_fits(c, getattr(torch, spec["dtype"]), spec["constexprs"]["BLOCK_D"])
                   for spec in specs for c in kvq._fwd_gpu_configs())
    tensor_core = "HGMMA" if cc == 90 else "HMMA"
    results = _compiled_code(specs)
    assert len(results) == expected
    for code in results:
        spec = code["spec"]
        what = f"sm_{cc} {spec['signature']['z_ptr']} {spec['constexprs']} {spec['options']}"
        local = re.search(r"LOCAL:(\d+)", code["res"])
        assert local and int(local.group(1)) == 0, f"{what}: local memory {code['res']}"
        assert "STL" not in code["sass"], f"{what}: spill stores"
        loops = _sass_loops(code["sass"])
        mma = _sass_addresses(code["sass"], tensor_core)
        assert any(lo <= a <= hi for a in mma for lo, hi in loops), f"{what}: no {tensor_core} in a loop"


_LAUNCHED = textwrap.dedent(
    """
    import json, re, sys
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction, create_function_from_signature
    from seedfast.benchmarks.compiled_code import read_cubin
    from seedfast.kernels import vq

    launches = []
    JITFunction.run = lambda self, *args, grid, warmup, **kw: launches.append((self, None, args, kw))
    Autotuner.run = lambda self, *args, grid=None, warmup=False, **kw: launches.append((self.fn, self, args, kw))
    target = GPUTarget("cuda", int(sys.argv[2]), 32)
    backend = make_backend(target)
    kernel_of = {"norms": "_vq_code_norms_kernel", "codes": "_vq_forward_kernel", "fwd": "_vq_forward_kernel",
                 "merge": "_vq_merge_kernel", "bwd": "_vq_backward_kernel"}
    out = []
    for what, dt, d, n, k in json.loads(sys.argv[1]):
        dtype = getattr(torch, dt)
        z, e = torch.randn(n, d).to(dtype), torch.randn(k, d).to(dtype)
        launches.clear()
        # Launches are recorded, not run: the launchers pick their real arguments and constexprs.
        if what == "norms":
            vq.code_norms(e)
        elif what == "bwd":
            vq.vq_backward(z, e, torch.randint(0, k, (n,)), torch.randn(n, d).to(dtype), torch.ones(()), 1.0, 0.25,
                           need_grad_z=True, need_grad_codebook=True, deterministic=False)
        else:
            write = what != "codes"
            vq.vq_forward(z, e, write_zq=write, write_loss=write, write_counts=write,
                          codes_per_split=256 if what == "merge" else k)
        for jit, tuner, args, kw in launches:
            if jit.fn.__name__ != kernel_of[what]:
                continue
            if tuner is None:
                configs = [triton.Config({}, num_warps=kw.get("num_warps", 4), num_stages=kw.get("num_stages", 3))]
            else:
                configs = [c for c in tuner.configs if vq.fwd_config_fits(c, dtype, kw["BLOCK_D"])]
            for config in configs:
                kwargs = dict(kw, **config.all_kwargs())
                binder = create_function_from_signature(jit.signature, jit.params, backend)
                bound, spec, opts = binder(*args, **kwargs)
                options, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound, spec, opts)
                compiled = triton.compile(ASTSource(jit, signature, constexprs, attrs), target=target,
                                          options=options.__dict__)
                atomics = [l for l in compiled.asm["ptx"].splitlines() if re.search(r"\\b(atom|red)\\.", l)]
                out.append(dict(read_cubin(compiled.asm["cubin"]), what=what, dtype=dt, d=d, n=n, config=str(config),
                                atomics=len(atomics), relaxed=sum(".relaxed" in l for l in atomics)))
    print(json.dumps(out))
    """
)


def _launched_code(cases, cc):
    """Compiled-code statistics (:func:`seedfast.benchmarks.compiled_code.read_cubin`) of the
    kernels the launchers start for each ``(what, dtype, D, N, K)``, bound through Triton's own binder
    from real arguments (so pointer alignment and integer divisibility are specialised as on a
    GPU) and compiled for ``sm_{cc}`` at every config the autotuner may try."""
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run([sys.executable, "-c", _LAUNCHED, json.dumps(cases), str(cc)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest_aot
@pytest.mark.parametrize("cc", [80, 90])
def test_launched_kernels_have_no_spills_and_vector_loads(cc):
    """What the launchers start at D = 8, 32 and 256 compiles without spills in every dtype:
    the ‖e‖² pre-pass and the backward load whole vectors even for D = 8 rows (8 scalar loads
    per thread before), the backward walks D in chunks (100 spill stores at D = 256 before) with
    relaxed atomics, the forward's z_q/loss writes walk D in chunks (27 spill stores on sm_80 at
    D = 256 before) and fp32's dot past 32 features too (hundreds before)."""
    # SEED's N = K = 8192 (divisible by 16, as the benchmarks' sizes: Triton specialises on it),
    # and odd N and K for the merge, whose partials are padded to keep vector loads.
    seed = (8192, 8192)
    cases = ([("norms", dt, d, *seed) for dt in ("bfloat16", "float32") for d in (8, 256)]
             + [("bwd", dt, d, *seed) for dt in ("bfloat16", "float16", "float32") for d in (8, 32, 256)]
             + [(what, dt, d, *seed) for what in ("codes", "fwd") for dt in ("bfloat16", "float16", "float32")
                for d in (8, 256)]
             + [("merge", "bfloat16", d, 200, 1000) for d in (8, 256)])
    results = _launched_code(cases, cc)
    assert {(r["what"], r["dtype"], r["d"]) for r in results} == {c[:3] for c in cases}
    for r in results:
        what = f"sm_{cc} {r['what']} {r['dtype']} D={r['d']} N={r['n']} {r['config']}"
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{what}: spills {r}"
        loads = (r["hot_vector_loads"], r["hot_wide2_loads"], r["hot_scalar_loads"])
        assert loads[0] + loads[1] > 0, f"{what}: scalar-only loads in the hot loop {loads}"
        if r["what"] in ("norms", "bwd"):
            assert loads[0] > 0 and loads[2] == 0, f"{what}: hot-loop loads not all vectors {loads}"
        if r["what"] == "bwd":
            assert r["atomics"] > 0 and r["relaxed"] == r["atomics"], f"{what}: atomics not all relaxed {r}"
        if r["what"] in ("codes", "fwd"):
            assert r["tensor_core_insns"] > 0, f"{what}: no tensor-core instructions"


@pytest.mark.skipif(os.environ.get("SEEDFAST_SKIP_AOT") == "1", reason="AOT compile disabled")
def test_kernels_compile_for_sm80_and_sm90():
    specs = []
    for dt in ("fp32", "fp16", "bf16"):
        for write in (True, False):
            specs.append({
                "module": "seedfast.kernels.vq", "kernel": "_vq_forward_kernel",
                "signature": _forward_signature(dt),
                "constexprs": {"BLOCK_D": 32, "WRITE_ZQ": write, "WRITE_LOSS": write, "WRITE_COUNTS": write,
                               "PARTIAL": not write, "INTERPRET_BF16": False,
                               "PRECISION": "tf32x3" if dt == "fp32" else "ieee",
                               "ROW_ALIGN": 16, "WRITE_D": 32, "DOT_D": 32},
            })
        specs.append({
            "module": "seedfast.kernels.vq", "kernel": "_vq_merge_kernel",
            "signature": {
                "z_ptr": f"*{dt}", "e_ptr": f"*{dt}", "part_min_ptr": "*fp32", "part_idx_ptr": "*i32",
                "codes_ptr": "*i64", "zq_ptr": f"*{dt}", "loss_part_ptr": "*fp32", "counts_ptr": "*i32",
                "N": "i32", "D": "i32", "N_SPLIT": "i32", "stride_zn": "i32", "stride_ek": "i32", "stride_qn": "i32",
                "stride_part": "i32",
            },
            "constexprs": {"BLOCK_N": 256, "ROW_ALIGN": 16, "WRITE_D": 16, "WRITE_ZQ": True, "WRITE_LOSS": True,
                           "WRITE_COUNTS": True},
        })
        specs.append({
            "module": "seedfast.kernels.vq", "kernel": "_vq_code_norms_kernel",
            "signature": {"e_ptr": f"*{dt}", "norms_ptr": "*fp32", "K": "i32", "D": "i32", "stride_ek": "i32"},
            "constexprs": {"BLOCK_D": 32, "BLOCK_K": 128, "ROW_ALIGN": 16},
        })
        specs.append({
            "module": "seedfast.kernels.vq", "kernel": "_vq_backward_kernel",
            "signature": {
                "z_ptr": f"*{dt}", "e_ptr": f"*{dt}", "codes_ptr": "*i64", "gzq_ptr": f"*{dt}", "gloss_ptr": "*fp32",
                "gz_ptr": f"*{dt}", "ge_acc_ptr": "*fp32", "N": "i32", "D": "i32", "stride_zn": "i32",
                "stride_ek": "i32", "stride_gqn": "i32", "coeff_z": "fp32", "coeff_e": "fp32",
            },
            "constexprs": {"BLOCK_D": 32, "BLOCK_N": 32, "ROW_ALIGN": 16, "HAS_GZQ": True, "HAS_GLOSS": True,
                           "WRITE_GZ": True, "SCATTER": True, "INTERPRET_BF16": False},
        })
        specs.append({
            "module": "seedfast.kernels.vq", "kernel": "_vq_codebook_grad_segments_kernel",
            "signature": {
                "z_ptr": f"*{dt}", "e_ptr": f"*{dt}", "order_ptr": "*i64", "starts_ptr": "*i64", "gloss_ptr": "*fp32",
                "ge_ptr": f"*{dt}", "D": "i32", "stride_zn": "i32", "stride_ek": "i32", "coeff_e": "fp32",
            },
            "constexprs": {"BLOCK_D": 32, "BLOCK_R": 32, "INTERPRET_BF16": False},
        })
    result = aot_compile(specs)
    assert not result["failures"], "\n".join(result["failures"])
    # Per dtype: 2 forward variants × 7 configs, backward, segments, merge, norms; two targets each.
    assert result["compiled"] == 3 * (2 * 7 + 2 + 2) * 2


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_non_finite_rows_give_z_q_equal_to_their_code(backend, device):
    """A row with NaN or ±inf gets code 0 and z_q = codebook[0] exactly (not NaN), on every backend;
    the straight-through gradient to the finite rows stays the identity."""
    z, codebook = _inputs(12, 50, 16, torch.float32, device, seed=8)
    z[1, 3] = float("nan")
    z[4, 0] = float("inf")
    z[7, 15] = -float("inf")
    z.requires_grad_()
    out = vq_quantize(z, codebook, backend=backend)
    assert out.codes[1] == 0 and out.codes[4] == 0 and out.codes[7] == 0
    assert torch.equal(out.z_q.detach(), codebook[out.codes])
    gz, = torch.autograd.grad(out.z_q.sum(), (z,))
    finite_rows = torch.isfinite(z.detach()).all(1)
    assert torch.equal(gz[finite_rows], torch.ones_like(gz[finite_rows]))


@pytest.mark.parametrize("scale", [1e5, 1e6, 1e17, 1e30])
def test_reference_codes_stay_right_for_large_z(scale):
    """The reference (the CPU path and the oracle) must not lose the code differences to ‖z‖²:
    with codes of norm ≈ 1 and |z| up to 1e30 its codes equal the float64 argmin."""
    z, codebook = _inputs(2000, 1000, 32, torch.float32, "cpu", seed=9)
    z = z * scale
    e64 = codebook.double()
    expected = (e64.pow(2).sum(1) - 2 * z.double() @ e64.t()).argmin(1)
    assert torch.equal(nearest_code_reference(z, codebook), expected)
    assert torch.equal(vq_quantize(z, codebook, backend="torch").codes, expected)


@pytest.mark.parametrize("op", [vq_quantize, nearest_code])
def test_zero_code_dimension_is_a_clear_error(op):
    with pytest.raises(ValueError, match=r"code dimension D >= 1, got shape \(8, 0\)"):
        op(torch.randn(4, 0), torch.randn(8, 0))
    with pytest.raises(ValueError, match="last dimension"):
        op(torch.randn(4, 0), torch.randn(8, 16))
