"""silu_mul: the Triton kernel (interpreted on CPU) against the torch reference
(``F.silu(gate) * up``) and a float64 oracle."""
from __future__ import annotations

import os

import pytest
import torch

from seedfast.ops import silu_mul, silu_mul_reference
from tests.accuracy import assert_within_baseline
from tests.aot import aot_compile

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _input(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (4 * torch.randn(shape, generator=g)).to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("shape", [(1, 2), (3, 320), (2, 5, 2 * 88), (4, 2 * 1100), (1, 2 * 11008)])
def test_kernel_matches_reference_and_oracle(shape, dtype, device):
    x = _input(shape, dtype, device, seed=sum(shape))
    out = silu_mul(x, backend="triton")
    ref = silu_mul_reference(x)
    assert out.shape == ref.shape == (*shape[:-1], shape[-1] // 2) and out.dtype == dtype
    gate, up = x.double().cpu().chunk(2, -1)
    oracle = gate * torch.sigmoid(gate) * up
    assert_within_baseline(out.cpu(), ref.cpu(), oracle, floor=1e-6, what="silu_mul")


def test_strided_rows(device):
    x = _input((5, 3, 64), torch.float32, device)[:, 1]
    torch.testing.assert_close(silu_mul(x, backend="triton"), silu_mul_reference(x), rtol=1e-6, atol=1e-6)


def test_auto_is_the_reference_on_cpu_and_float64():
    x = _input((3, 40), torch.bfloat16, "cpu")
    assert torch.equal(silu_mul(x), silu_mul_reference(x))
    assert silu_mul(x.double()).dtype == torch.float64


def test_no_backward_on_triton_and_auto_falls_back_when_grad_is_needed(device):
    x = _input((3, 40), torch.float32, device).requires_grad_()
    with pytest.raises(ValueError, match="no backward"):
        silu_mul(x, backend="triton")
    (g,) = torch.autograd.grad(silu_mul(x).sum(), x)
    assert g.shape == x.shape


def test_custom_op_passes_opcheck(device):
    torch.library.opcheck(torch.ops.seedfast.silu_mul.default, (_input((4, 96), torch.float32, device),))


@pytest.mark.parametrize("x, error, match", [
    ([1.0, 2.0], TypeError, "x must be a torch.Tensor"),
    (torch.zeros(3, 4, dtype=torch.int64), TypeError, "x must have dtype"),
    (torch.zeros(3, 5), ValueError, "last dim must be 2·I"),
    (torch.zeros(3, 0), ValueError, "last dim must be 2·I"),
    (torch.zeros(()), ValueError, "at least 1 dimension"),
])
def test_bad_inputs_are_named(x, error, match):
    with pytest.raises(error, match=match):
        silu_mul(x, backend="torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        silu_mul(torch.zeros(2, 4), backend="cuda")


@pytest.mark.skipif(os.environ.get("SEEDFAST_SKIP_AOT") == "1", reason="AOT compile disabled")
def test_kernel_compiles_for_sm80_and_sm90():
    from seedfast.kernels.silu_mul import launch_config

    cfg = launch_config(11008)
    specs = [{
        "module": "seedfast.kernels.silu_mul", "kernel": "_silu_mul_kernel", "num_warps": cfg["num_warps"],
        "signature": {"x_ptr": f"*{dt}", "out_ptr": f"*{dt}", "stride_x": "i32", "stride_out": "i32", "I": "i32"},
        "constexprs": {"BLOCK": cfg["BLOCK"], "INTERPRET_BF16": False},
    } for dt in ("fp32", "fp16", "bf16")]
    result = aot_compile(specs)
    assert not result["failures"], "\n".join(result["failures"])
    assert result["compiled"] == 3 * 2
