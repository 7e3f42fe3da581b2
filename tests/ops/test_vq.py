"""vq_quantize / nearest_code: the Triton kernel (interpreted on CPU) against the torch
reference and a float64 oracle."""
from __future__ import annotations

import os

import pytest
import torch

from seedfast.ops import nearest_code, nearest_code_reference, vq_loss_reference, vq_quantize, vq_quantize_reference
from tests.accuracy import assert_within_baseline, rel_err
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


@pytest.mark.skipif(os.environ.get("SEEDFAST_SKIP_AOT") == "1", reason="AOT compile disabled")
def test_kernels_compile_for_sm80_and_sm90():
    specs = []
    for dt in ("fp32", "fp16", "bf16"):
        for write in (True, False):
            specs.append({
                "module": "seedfast.kernels.vq", "kernel": "_vq_forward_kernel",
                "signature": {
                    "z_ptr": f"*{dt}", "e_ptr": f"*{dt}", "codes_ptr": "*i64", "zq_ptr": f"*{dt}",
                    "loss_part_ptr": "*fp32", "counts_ptr": "*i32", "N": "i32", "K": "i32", "D": "i32",
                    "stride_zn": "i32", "stride_ek": "i32", "stride_qn": "i32", "N_BUCKET": "i32",
                },
                "constexprs": {"BLOCK_D": 32, "WRITE_ZQ": write, "WRITE_LOSS": write, "WRITE_COUNTS": write,
                               "INTERPRET_BF16": False, "PRECISION": "tf32x3" if dt == "fp32" else "ieee"},
            })
        specs.append({
            "module": "seedfast.kernels.vq", "kernel": "_vq_backward_kernel",
            "signature": {
                "z_ptr": f"*{dt}", "e_ptr": f"*{dt}", "codes_ptr": "*i64", "gzq_ptr": f"*{dt}", "gloss_ptr": "*fp32",
                "gz_ptr": f"*{dt}", "ge_acc_ptr": "*fp32", "N": "i32", "D": "i32", "stride_zn": "i32",
                "stride_ek": "i32", "stride_gqn": "i32", "coeff_z": "fp32", "coeff_e": "fp32",
            },
            "constexprs": {"BLOCK_D": 32, "BLOCK_N": 64, "HAS_GZQ": True, "HAS_GLOSS": True, "WRITE_GZ": True,
                           "SCATTER": True, "INTERPRET_BF16": False},
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
    assert result["compiled"] == 3 * (2 * 5 + 2) * 2
