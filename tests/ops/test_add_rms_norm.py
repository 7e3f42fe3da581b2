"""add_rms_norm: the Triton kernel (interpreted on CPU) against the torch reference (residual add,
then ``F.rms_norm``) and a float64 oracle."""
from __future__ import annotations

import os

import pytest
import torch

from seedfast.ops import add_rms_norm, add_rms_norm_reference
from tests.accuracy import assert_within_baseline
from tests.aot import aot_compile

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _inputs(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    residual = (3 * torch.randn(shape, generator=g)).to(device=device, dtype=dtype)
    weight = (1 + 0.1 * torch.randn(shape[-1], generator=g)).to(device=device, dtype=dtype)
    return x, residual, weight


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("shape", [(1, 1), (3, 64), (2, 5, 88), (7, 320), (1, 4096), (2, 5120)])
def test_kernel_matches_reference_and_oracle(shape, dtype, device):
    x, r, w = _inputs(shape, dtype, device, seed=sum(shape))
    eps = 1e-5
    normed, summed = add_rms_norm(x, r, w, eps, backend="triton")
    normed_ref, summed_ref = add_rms_norm_reference(x, r, w, eps)
    assert normed.shape == summed.shape == x.shape and normed.dtype == summed.dtype == dtype
    # The sum is one rounding of the same exact value on both paths.
    assert torch.equal(summed, summed_ref)
    s64 = summed_ref.double()
    oracle = s64 * torch.rsqrt(s64.pow(2).mean(-1, keepdim=True) + eps) * w.double()
    assert_within_baseline(normed.cpu(), normed_ref.cpu(), oracle.cpu(), floor=1e-6, what="normed")


def test_strided_rows_and_row_views(device):
    """Rows with a row stride (a slice of a wider buffer) and a residual of another layout."""
    x_wide, r, w = _inputs((6, 96), torch.float32, device, seed=3)
    x = x_wide[:, :64]
    r = r[:, :64].contiguous()
    out, s = add_rms_norm(x, r, w[:64], 1e-6, backend="triton")
    ref_out, ref_s = add_rms_norm_reference(x, r, w[:64], 1e-6)
    assert torch.equal(s, ref_s)
    torch.testing.assert_close(out, ref_out, rtol=2e-6, atol=2e-6)


def test_auto_is_the_reference_on_cpu_and_with_mixed_dtypes(device):
    x, r, w = _inputs((3, 32), torch.bfloat16, "cpu")
    for got, want in zip(add_rms_norm(x, r, w, 1e-5), add_rms_norm_reference(x, r, w, 1e-5)):
        assert torch.equal(got, want)
    # Autocast-style mixed inputs (bf16 sublayer output, fp32 residual and weight) promote as torch does.
    normed, summed = add_rms_norm(x.to(device), r.float().to(device), w.float().to(device), 1e-5)
    assert summed.dtype == torch.float32 and normed.dtype == torch.float32
    with pytest.raises(TypeError, match="one dtype"):
        add_rms_norm(x.to(device), r.float().to(device), w.float().to(device), 1e-5, backend="triton")


def test_no_backward_on_triton_and_auto_falls_back_when_grad_is_needed(device):
    x, r, w = _inputs((3, 32), torch.float32, device)
    w.requires_grad_()
    with pytest.raises(ValueError, match="no backward"):
        add_rms_norm(x, r, w, 1e-5, backend="triton")
    normed, _ = add_rms_norm(x, r, w, 1e-5)
    (g,) = torch.autograd.grad(normed.sum(), w)
    assert g.shape == w.shape


def test_custom_op_passes_opcheck(device):
    x, r, w = _inputs((4, 48), torch.float32, device)
    torch.library.opcheck(torch.ops.seedfast.add_rms_norm.default, (x, r, w, 1e-5))


@pytest.mark.parametrize("change, error, match", [
    (dict(x=None), TypeError, "x must be a torch.Tensor"),
    (dict(x=torch.zeros(3, 32, dtype=torch.int32)), TypeError, "x must have dtype"),
    (dict(residual=torch.zeros(3, 31)), ValueError, "residual must have the shape of x"),
    (dict(weight=torch.ones(31)), ValueError, r"weight must have shape \[N\] = \[32\]"),
    (dict(weight=torch.ones(1, 32)), ValueError, "weight must have 1 dimensions"),
    (dict(eps=0.0), ValueError, "eps must be a number > 0"),
    (dict(eps="1e-5"), ValueError, "eps must be a number > 0"),
    (dict(backend="fast"), ValueError, "backend must be one of"),
])
def test_bad_inputs_are_named(change, error, match):
    x, r, w = _inputs((3, 32), torch.float32, "cpu")
    args = dict(x=x, residual=r, weight=w, eps=1e-5, backend="torch")
    args.update(change)
    backend = args.pop("backend")
    with pytest.raises(error, match=match):
        add_rms_norm(*args.values(), backend=backend)


@pytest.mark.skipif(os.environ.get("SEEDFAST_SKIP_AOT") == "1", reason="AOT compile disabled")
def test_kernel_compiles_for_sm80_and_sm90():
    from seedfast.kernels.add_rms_norm import launch_config

    specs = []
    for dt in ("fp32", "fp16", "bf16"):
        for n in (4096, 5120):
            cfg = launch_config(n)
            specs.append({
                "module": "seedfast.kernels.add_rms_norm", "kernel": "_add_rms_norm_kernel",
                "num_warps": cfg["num_warps"],
                "signature": {
                    "x_ptr": f"*{dt}", "r_ptr": f"*{dt}", "w_ptr": f"*{dt}", "out_ptr": f"*{dt}", "sum_ptr": f"*{dt}",
                    "stride_x": "i32", "stride_r": "i32", "stride_out": "i32", "stride_sum": "i32", "N": "i32",
                    "eps": "fp32",
                },
                "constexprs": {"BLOCK_N": cfg["BLOCK_N"], "INTERPRET_BF16": False},
            })
    result = aot_compile(specs)
    assert not result["failures"], "\n".join(result["failures"])
    assert result["compiled"] == 3 * 2 * 2
