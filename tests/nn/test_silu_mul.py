"""SiluMul and SwiGLU against the op, its torch reference and transformers' LlamaMLP with the same
weights: forward, the Triton kernel (interpreted on CPU), gradients while training, bad arguments
and state-dict names."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seedfast.models.llama import Llama, LlamaConfig
from seedfast.nn import SiluMul, SwiGLU
from seedfast.ops import silu_mul, silu_mul_reference


def _x(shape, dtype=torch.float32, seed=0):
    return (2 * torch.randn(shape, generator=torch.Generator().manual_seed(seed))).to(dtype)


@pytest.mark.parametrize("shape", [(3, 64), (2, 5, 22), (1, 2 * 11008)])
def test_silu_mul_matches_the_op_and_the_reference(shape):
    x = _x(shape)
    got = SiluMul()(x)
    assert got.shape == (*shape[:-1], shape[-1] // 2)
    assert torch.equal(got, silu_mul(x)) and torch.equal(got, silu_mul_reference(x))
    gate, up = x.chunk(2, -1)
    torch.testing.assert_close(got, F.silu(gate) * up, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_backend_matches_the_reference(dtype, device):
    x = _x((4, 2 * 40), dtype, seed=1).to(device)
    act = SiluMul(backend="triton")
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(act(x), act(x, backend="torch"), rtol=tol, atol=tol)
    mlp = SwiGLU(24, 40, dtype=dtype, backend="triton").to(device)
    y = _x((3, 24), dtype, seed=2).to(device)
    with torch.no_grad():
        torch.testing.assert_close(mlp(y), mlp(y, backend="torch"), rtol=tol, atol=tol)


def test_swiglu_is_transformers_llama_mlp():
    from transformers import LlamaConfig as HFConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    torch.manual_seed(0)
    hf = LlamaMLP(HFConfig(hidden_size=32, intermediate_size=80, hidden_act="silu", mlp_bias=False))
    ours = SwiGLU(32, 80)
    ours.load_state_dict({"w13.weight": torch.cat([hf.gate_proj.weight, hf.up_proj.weight]),
                          "w2.weight": hf.down_proj.weight})
    x = _x((2, 7, 32), seed=3)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x), rtol=1e-6, atol=1e-6)


def test_gradients_while_training_are_the_references():
    """Parameters record gradients, so "auto" takes the differentiable reference on any device."""
    torch.manual_seed(0)
    mlp = SwiGLU(16, 24, bias=True)
    x = _x((5, 16), seed=4).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    mlp(x).pow(2).sum().backward()
    params = {n: p.detach().clone().requires_grad_() for n, p in mlp.named_parameters()}
    gate, up = F.linear(x2, params["w13.weight"], params["w13.bias"]).chunk(2, -1)
    F.linear(F.silu(gate) * up, params["w2.weight"], params["w2.bias"]).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    for name, p in mlp.named_parameters():
        torch.testing.assert_close(p.grad, params[name].grad, rtol=1e-5, atol=1e-5)


def test_triton_refuses_to_record_a_gradient(device):
    mlp = SwiGLU(8, 12, backend="triton").to(device)
    with pytest.raises(ValueError, match="silu_mul: backend='triton' has no backward"):
        mlp(_x((2, 8)).to(device))
    with pytest.raises(ValueError, match="silu_mul: backend='triton' has no backward"):
        SiluMul(backend="triton")(_x((2, 8)).to(device).requires_grad_())


@pytest.mark.parametrize("make, exc, words", [
    (lambda: SwiGLU(16.0, 32), TypeError, "SwiGLU: dim must be an int, got float"),
    (lambda: SwiGLU(16, 0), ValueError, "SwiGLU: hidden_dim must be >= 1, got 0"),
    (lambda: SwiGLU(16, 32, backend="cuda"), ValueError,
     r"SwiGLU: backend must be one of \('auto', 'triton', 'torch'\), got 'cuda'"),
    (lambda: SiluMul(backend=None), ValueError, "SiluMul: backend must be one of"),
])
def test_bad_constructor_arguments(make, exc, words):
    with pytest.raises(exc, match=words):
        make()


def test_bad_inputs():
    mlp, act = SwiGLU(8, 12), SiluMul()
    with pytest.raises(TypeError, match="SwiGLU: x must be a torch.Tensor, got ndarray"):
        mlp(_x((2, 8)).numpy())
    with pytest.raises(ValueError, match=r"SwiGLU: x must have shape \[\.\.\., 8\], got \(2, 12\)"):
        mlp(_x((2, 12)))
    with pytest.raises(ValueError, match="silu_mul: x's last dim must be 2·I"):
        act(_x((2, 7)))
    with pytest.raises(TypeError, match="silu_mul: x must be a torch.Tensor"):
        act("x")
    with pytest.raises(ValueError, match="SiluMul: backend must be one of"):
        act(_x((2, 8)), backend="cuda")


def test_state_dict_names_and_factory_arguments():
    assert list(SwiGLU(8, 12).state_dict()) == ["w13.weight", "w2.weight"]
    assert list(SwiGLU(8, 12, bias=True).state_dict()) == ["w13.weight", "w13.bias", "w2.weight", "w2.bias"]
    mlp = SwiGLU(8, 12, dtype=torch.bfloat16, device="meta")
    assert mlp.w13.weight.shape == (24, 8) and mlp.w2.weight.shape == (8, 12)
    assert mlp.w13.weight.dtype == torch.bfloat16 and mlp.w2.weight.is_meta
    assert list(SiluMul().state_dict()) == [] and "backend='torch'" in repr(SiluMul(backend="torch"))
    assert "dim=8, hidden_dim=12" in repr(mlp)


def test_llama_feed_forwards_are_swiglus_under_their_old_names():
    config = LlamaConfig.tiny()
    model = Llama(config)
    for i, layer in enumerate(model.layers):
        assert isinstance(layer.feed_forward, SwiGLU)
        assert (layer.feed_forward.dim, layer.feed_forward.hidden_dim) == (config.dim, config.intermediate_size)
        assert {f"layers.{i}.feed_forward.w13.weight", f"layers.{i}.feed_forward.w2.weight"} <= set(model.state_dict())


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_compiles_fullgraph(backend, device):
    torch.manual_seed(0)
    mlp = SwiGLU(16, 24, backend=backend).to(device)
    compiled = torch.compile(mlp, backend="aot_eager", fullgraph=True)
    x = _x((3, 16), seed=6).to(device)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), mlp(x), rtol=1e-6, atol=1e-6)
