"""RopeKVWrite against the op and its torch reference: rotated queries and cache writes, the Triton
kernel (interpreted on CPU), gradients while training, the table it holds (never copied, cast or
saved) and bad arguments."""
from __future__ import annotations

import pytest
import torch

from seedfast.models.llama import LlamaConfig, rope_table
from seedfast.nn import RopeKVWrite
from seedfast.ops import rope_kv_write, rope_kv_write_reference

CONFIG = LlamaConfig.tiny()


def _step(b=3, h=4, hkv=2, d=16, s=12, dtype=torch.float32, seed=0):
    """``qkv``, ``positions`` and random caches for one decode step."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, (h + 2 * hkv) * d, generator=g).to(dtype)
    positions = torch.randint(0, s, (b,), generator=g, dtype=torch.int64).to(torch.int32)
    k_cache, v_cache = (torch.randn(b + 1, s, hkv, d, generator=g).to(dtype) for _ in range(2))
    return qkv, positions, k_cache, v_cache


def _table(length=12):
    """The tiny model's table (head dim 16), as Llama.decode gets it."""
    return rope_table(CONFIG, length, "cpu")


def test_matches_the_op_and_the_reference():
    cos, sin = _table()
    module = RopeKVWrite(cos, sin)
    qkv, positions, k_cache, v_cache = _step()
    caches = [(k_cache.clone(), v_cache.clone()) for _ in range(3)]
    got = module(qkv, positions, *caches[0])
    op = rope_kv_write(qkv, cos, sin, positions, *caches[1])
    ref = rope_kv_write_reference(qkv, cos, sin, positions, *caches[2])
    assert got.shape == (3, 4, 16) and torch.equal(got, op) and torch.equal(got, ref)
    for other in caches[1:]:
        assert torch.equal(caches[0][0], other[0]) and torch.equal(caches[0][1], other[1])
    # Row b's slot changed, the spare row not at all.
    assert not torch.equal(caches[0][0][:3], k_cache[:3]) and torch.equal(caches[0][0][3], k_cache[3])


def test_rope_table_of_the_model_and_its_dims():
    cos, sin = rope_table(CONFIG, 20, "cpu")
    module = RopeKVWrite(cos, sin)
    assert (module.max_positions, module.head_dim) == (20, CONFIG.head_dim)
    assert repr(module) == f"RopeKVWrite(max_positions=20, head_dim={CONFIG.head_dim})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_backend_matches_the_reference(dtype, device):
    cos, sin = (t.to(device) for t in _table())
    module = RopeKVWrite(cos, sin, backend="triton")
    qkv, positions, k_cache, v_cache = (t.to(device) for t in _step(dtype=dtype, seed=2))
    k2, v2 = k_cache.clone(), v_cache.clone()
    got = module(qkv, positions, k_cache, v_cache)
    want = module(qkv, positions, k2, v2, backend="torch")
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for a, b in ((got, want), (k_cache, k2), (v_cache, v2)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_gradients_while_training_are_the_references():
    """A qkv that records gradients takes the differentiable reference under "auto"."""
    cos, sin = _table()
    module = RopeKVWrite(cos, sin)
    qkv, positions, k_cache, v_cache = _step(seed=3)
    qkv.requires_grad_()
    qkv2 = qkv.detach().clone().requires_grad_()
    k2, v2 = k_cache.clone(), v_cache.clone()
    q = module(qkv, positions, k_cache, v_cache)
    (q.pow(2).sum() + k_cache.pow(3).sum() + v_cache.sum()).backward()
    q_ref = rope_kv_write_reference(qkv2, cos, sin, positions, k2, v2)
    (q_ref.pow(2).sum() + k2.pow(3).sum() + v2.sum()).backward()
    assert qkv.grad is not None and qkv.grad.abs().sum() > 0
    torch.testing.assert_close(qkv.grad, qkv2.grad, rtol=1e-6, atol=1e-6)


def test_triton_refuses_to_record_a_gradient(device):
    cos, sin = (t.to(device) for t in _table())
    qkv, positions, k_cache, v_cache = (t.to(device) for t in _step())
    with pytest.raises(ValueError, match="rope_kv_write: backend='triton' has no backward"):
        RopeKVWrite(cos, sin, backend="triton")(qkv.requires_grad_(), positions, k_cache, v_cache)


def test_the_table_stays_the_callers():
    cos, sin = _table()
    module = RopeKVWrite(cos, sin).to(torch.float16)
    module.half()
    assert module.cos is cos and module.sin is sin and cos.dtype == torch.float32
    assert module.state_dict() == {} and list(module.buffers()) == [] and list(module.parameters()) == []


@pytest.mark.parametrize("make, exc, words", [
    (lambda c, s: RopeKVWrite(c.numpy(), s), TypeError, "RopeKVWrite: cos must be a torch.Tensor, got ndarray"),
    (lambda c, s: RopeKVWrite(c, s.double()), TypeError, "RopeKVWrite: sin must be float32 .*got torch.float64"),
    (lambda c, s: RopeKVWrite(c[0], s[0]), ValueError, r"RopeKVWrite: cos must be a non-empty \[L, D\] table"),
    (lambda c, s: RopeKVWrite(c[:0], s[:0]), ValueError, r"RopeKVWrite: cos must be a non-empty \[L, D\] table"),
    (lambda c, s: RopeKVWrite(c, s[:5]), ValueError,
     r"RopeKVWrite: sin must have cos's shape \(12, 16\), got \(5, 16\)"),
    (lambda c, s: RopeKVWrite(c, s.to("meta")), ValueError, "RopeKVWrite: cos and sin must be on one device"),
    (lambda c, s: RopeKVWrite(c[:, :15], s[:, :15]), ValueError,
     r"RopeKVWrite: the head dim D \(cos.shape\[1\]\) must be even"),
    (lambda c, s: RopeKVWrite(c, s, backend="cuda"), ValueError,
     r"RopeKVWrite: backend must be one of \('auto', 'triton', 'torch'\), got 'cuda'"),
])
def test_bad_constructor_arguments(make, exc, words):
    with pytest.raises(exc, match=words):
        make(*_table())


def test_bad_inputs():
    module = RopeKVWrite(*_table())
    qkv, positions, k_cache, v_cache = _step()
    with pytest.raises(ValueError, match="RopeKVWrite: backend must be one of"):
        module(qkv, positions, k_cache, v_cache, backend="fused")
    with pytest.raises(ValueError, match=r"rope_kv_write: cos and sin must both be \[L, D = 8\]"):
        module(qkv, positions, k_cache[..., :8], v_cache[..., :8])  # caches of another head dim than the table
    with pytest.raises(TypeError, match="rope_kv_write: k_cache must have the dtype of qkv"):
        module(qkv, positions, k_cache.double(), v_cache)
    with pytest.raises(ValueError, match=r"rope_kv_write: positions must have shape \[B\] = \[3\]"):
        module(qkv, positions[:2], k_cache, v_cache)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_compiles_fullgraph_and_writes_the_caches(backend, device):
    module = RopeKVWrite(*(t.to(device) for t in _table()), backend=backend)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    qkv, positions, k_cache, v_cache = (t.to(device) for t in _step(seed=7))
    k2, v2 = k_cache.clone(), v_cache.clone()
    with torch.no_grad():
        got, want = compiled(qkv, positions, k_cache, v_cache), module(qkv, positions, k2, v2)
    for a, b in ((got, want), (k_cache, k2), (v_cache, v2)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
