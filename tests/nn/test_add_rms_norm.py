"""AddRMSNorm against the op, its torch reference and torch's own RMSNorm: forward, the Triton
kernel (interpreted on CPU), gradients while training, bad arguments and state-dict names."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seedfast.models.llama import Llama, LlamaConfig
from seedfast.nn import AddRMSNorm
from seedfast.ops import add_rms_norm, add_rms_norm_reference


def _inputs(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype), (3 * torch.randn(shape, generator=g)).to(dtype)


def _module(dim, dtype=torch.float32, eps=1e-5, **kw):
    norm = AddRMSNorm(dim, eps, dtype=dtype, **kw)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(dim, generator=torch.Generator().manual_seed(7)))
    return norm


@pytest.mark.parametrize("shape", [(3, 64), (2, 5, 88), (1, 4096)])
def test_matches_the_op_and_the_reference(shape):
    norm = _module(shape[-1])
    x, r = _inputs(shape)
    with torch.no_grad():
        got = norm(x, r)
        op = add_rms_norm(x, r, norm.weight, norm.eps)
        ref = add_rms_norm_reference(x, r, norm.weight, norm.eps)
    for g, o, want in zip(got, op, ref):
        assert g.shape == shape and torch.equal(g, o) and torch.equal(g, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_backend_matches_the_reference(dtype, device):
    norm = _module(96, dtype, backend="triton").to(device)
    x, r = (t.to(device) for t in _inputs((4, 96), dtype, seed=1))
    with torch.no_grad():
        normed, summed = norm(x, r)
        ref_normed, ref_summed = norm(x, r, backend="torch")
    assert torch.equal(summed, ref_summed)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(normed, ref_normed, rtol=tol, atol=tol)


def test_without_residual_it_is_torchs_rmsnorm():
    norm = _module(32)
    twin = nn.RMSNorm(32, eps=norm.eps)
    twin.load_state_dict(norm.state_dict())
    x, _ = _inputs((5, 32))
    normed, stream = norm(x)
    assert stream is x
    torch.testing.assert_close(normed, twin(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(normed, F.rms_norm(x, (32,), norm.weight, norm.eps), rtol=0, atol=0)


def test_gradients_while_training_are_the_references():
    """With a gradient to record, "auto" takes the differentiable reference on any device."""
    norm = _module(48)
    twin = _module(48)
    x, r = (t.requires_grad_() for t in _inputs((6, 48), seed=2))
    x2, r2 = (t.detach().clone().requires_grad_() for t in (x, r))
    up = torch.randn(6, 48, generator=torch.Generator().manual_seed(3))
    normed, summed = norm(x, r)
    ((normed * up).sum() + summed.pow(2).sum()).backward()
    s = r2 + x2
    want = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + twin.eps) * twin.weight
    ((want * up).sum() + s.pow(2).sum()).backward()
    for got, expected in ((x.grad, x2.grad), (r.grad, r2.grad), (norm.weight.grad, twin.weight.grad)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_triton_refuses_to_record_a_gradient(device):
    norm = _module(16, backend="triton").to(device)
    x, r = (t.to(device) for t in _inputs((2, 16)))
    with pytest.raises(ValueError, match="add_rms_norm: backend='triton' has no backward"):
        norm(x, r)


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"dim": 4.0}, TypeError, "AddRMSNorm: dim must be an int, got float"),
    ({"dim": 0}, ValueError, "AddRMSNorm: dim must be >= 1, got 0"),
    ({"dim": 8, "eps": 0.0}, ValueError, "AddRMSNorm: eps must be a number > 0, got 0.0"),
    ({"dim": 8, "eps": True}, ValueError, "AddRMSNorm: eps must be a number > 0, got True"),
    ({"dim": 8, "backend": "cuda"}, ValueError, r"AddRMSNorm: backend must be one of \('auto', 'triton', 'torch'\)"),
])
def test_bad_constructor_arguments(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        AddRMSNorm(**kwargs)


def test_bad_inputs():
    norm = AddRMSNorm(8)
    x, r = _inputs((2, 8))
    with pytest.raises(TypeError, match="AddRMSNorm: x must be a torch.Tensor, got list"):
        norm([1.0] * 8, r)
    with pytest.raises(ValueError, match=r"AddRMSNorm: x must have shape \[\.\.\., 8\], got \(2, 9\)"):
        norm(torch.zeros(2, 9))
    with pytest.raises(ValueError, match=r"add_rms_norm: residual must have the shape of x \(2, 8\), got \(3, 8\)"):
        norm(x, torch.zeros(3, 8))
    with pytest.raises(TypeError, match="add_rms_norm: residual must be a torch.Tensor"):
        norm(x, 1.0)
    with pytest.raises(ValueError, match="AddRMSNorm: backend must be one of"):
        norm(x, r, backend="fused")


def test_state_dict_names_and_factory_arguments():
    norm = AddRMSNorm(16, 1e-6, dtype=torch.bfloat16, device="meta")
    assert list(norm.state_dict()) == ["weight"] and norm.weight.dtype == torch.bfloat16
    assert norm.weight.is_meta and repr(norm) == "AddRMSNorm(16, eps=1e-06)"
    assert "backend='torch'" in repr(AddRMSNorm(16, backend="torch"))


def test_llama_norms_are_add_rms_norms_under_their_old_names():
    model = Llama(LlamaConfig.tiny())
    names = {n for n, m in model.named_modules() if isinstance(m, AddRMSNorm)}
    assert names == {"norm", *(f"layers.{i}.{n}" for i in range(len(model.layers))
                               for n in ("attention_norm", "ffn_norm"))}
    assert {n + ".weight" for n in names} <= set(model.state_dict())


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_compiles_fullgraph(backend, device):
    norm = _module(64, backend=backend).to(device)
    compiled = torch.compile(norm, backend="aot_eager", fullgraph=True)
    x, r = (t.to(device) for t in _inputs((3, 64), seed=5))
    with torch.no_grad():
        for got, want in zip(compiled(x, r), norm(x, r)):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
