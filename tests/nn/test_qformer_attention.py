"""QFormerAttention against torch.nn.MultiheadAttention with the same weights (plain torch),
forward and gradients, in float64."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from seedfast.nn import QFormerAttention


def _twin(module: QFormerAttention) -> nn.MultiheadAttention:
    """An nn.MultiheadAttention holding ``module``'s weights."""
    dim, kv = module.dim, module.kv_dim
    mha = nn.MultiheadAttention(dim, module.num_heads, kdim=kv, vdim=kv, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        if mha._qkv_same_embed_dim:
            mha.in_proj_weight.copy_(torch.cat([module.q_proj.weight, module.k_proj.weight, module.v_proj.weight]))
        else:
            mha.q_proj_weight.copy_(module.q_proj.weight)
            mha.k_proj_weight.copy_(module.k_proj.weight)
            mha.v_proj_weight.copy_(module.v_proj.weight)
        mha.in_proj_bias.copy_(torch.cat([module.q_proj.bias, module.k_proj.bias, module.v_proj.bias]))
        mha.out_proj.weight.copy_(module.out_proj.weight)
        mha.out_proj.bias.copy_(module.out_proj.bias)
    return mha


def _twin_grads(mha: nn.MultiheadAttention) -> list[torch.Tensor]:
    if mha._qkv_same_embed_dim:
        q, k, v = mha.in_proj_weight.grad.chunk(3)
    else:
        q, k, v = mha.q_proj_weight.grad, mha.k_proj_weight.grad, mha.v_proj_weight.grad
    bq, bk, bv = mha.in_proj_bias.grad.chunk(3)
    return [q, bq, k, bk, v, bv, mha.out_proj.weight.grad, mha.out_proj.bias.grad]


@pytest.mark.parametrize(
    "kv_dim, lq, lk, causal, lens",
    [
        (None, 7, 7, True, None),  # SEED's causal query self-attention
        (None, 7, 7, False, [7, 3, 5]),  # padded text, bidirectional
        (None, 6, 6, True, [6, 2, 4]),  # causal and padded
        (12, 5, 9, False, None),  # cross-attention to wider image tokens
        (12, 5, 9, False, [9, 1, 4]),  # cross-attention to padded keys
    ],
)
def test_matches_multihead_attention(kv_dim, lq, lk, causal, lens):
    torch.manual_seed(0)
    ours = QFormerAttention(16, 4, kv_dim=kv_dim, causal=causal, dtype=torch.float64)
    mha = _twin(ours)
    b = 3
    x = torch.randn(b, lq, 16, dtype=torch.float64, requires_grad=True)
    ctx = torch.randn(b, lk, ours.kv_dim, dtype=torch.float64, requires_grad=True) if kv_dim else None
    kv_lens = torch.tensor(lens) if lens is not None else None

    out = ours(x, ctx, kv_lens=kv_lens)
    source = ctx if ctx is not None else x
    attn_mask = torch.ones(lq, lk, dtype=torch.bool).triu(1) if causal else None
    pad = torch.arange(lk)[None, :] >= kv_lens[:, None] if kv_lens is not None else None
    ref, _ = mha(x, source, source, attn_mask=attn_mask, key_padding_mask=pad, need_weights=False)
    assert out.shape == (b, lq, 16)
    assert torch.allclose(out, ref, atol=1e-12)

    g = torch.randn_like(out)
    inputs = [x] + ([ctx] if ctx is not None else [])
    params = [ours.q_proj.weight, ours.q_proj.bias, ours.k_proj.weight, ours.k_proj.bias,
              ours.v_proj.weight, ours.v_proj.bias, ours.out_proj.weight, ours.out_proj.bias]
    grads = torch.autograd.grad((out * g).sum(), inputs + params)
    ref_inputs = torch.autograd.grad((ref * g).sum(), inputs, retain_graph=True)
    (ref * g).sum().backward()
    for a, r in zip(grads, list(ref_inputs) + _twin_grads(mha)):
        assert torch.allclose(a, r, atol=1e-11), (a - r).abs().max()


def test_causal_default_and_override():
    torch.manual_seed(1)
    attn = QFormerAttention(8, 2, causal=True)
    x = torch.randn(2, 5, 8)
    causal = attn(x)
    # Query 0 sees only key 0: changing later positions leaves it unchanged.
    x2 = x.clone()
    x2[:, 1:] += 1.0
    assert torch.allclose(attn(x2)[:, 0], causal[:, 0], atol=1e-6)
    assert not torch.allclose(attn(x2, causal=False)[:, 0], attn(x, causal=False)[:, 0], atol=1e-3)
    assert torch.allclose(attn(x, causal=True), causal)


def test_row_that_sees_no_key_outputs_the_bias():
    torch.manual_seed(2)
    attn = QFormerAttention(8, 2, kv_dim=6)
    out = attn(torch.randn(2, 3, 8), torch.randn(2, 4, 6), kv_lens=torch.tensor([0, 4]))
    assert torch.allclose(out[0], attn.out_proj.bias.expand(3, 8))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(dim=10, num_heads=3), ValueError, "num_heads (3) must divide dim (10)"),
        (dict(dim=0, num_heads=1), ValueError, "dim must be >= 1, got 0"),
        (dict(dim=8, num_heads=2.0), TypeError, "num_heads must be an int, got float"),
        (dict(dim=8, num_heads=2, kv_dim=0), ValueError, "kv_dim must be >= 1, got 0"),
        (dict(dim=8, num_heads=2, backend="flash"), ValueError, "backend must be one of"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, words):
    with pytest.raises(exc) as info:
        QFormerAttention(**kwargs)
    assert words in str(info.value) and "QFormerAttention" in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda a: a(torch.randn(2, 3, 7), torch.randn(2, 4, 6)), ValueError,
         "x must have shape [B, L, 8], got (2, 3, 7)"),
        (lambda a: a(torch.randn(2, 3, 8), torch.randn(2, 4, 8)), ValueError, "context must have shape [B, L, 6]"),
        (lambda a: a(torch.randn(2, 3, 8), torch.randn(3, 4, 6)), ValueError,
         "context batch (3) must equal x's batch (2)"),
        (lambda a: a(torch.randn(2, 3, 8)), ValueError, "built for cross-attention (kv_dim=6); pass context"),
        (lambda a: a([1.0]), TypeError, "x must be a torch.Tensor, got list"),
        (lambda a: a(torch.randn(2, 3, 8), torch.randn(2, 4, 6), kv_lens=torch.tensor([1.0, 2.0])), TypeError,
         "kv_lens must have dtype"),
    ],
)
def test_bad_forward_inputs(call, exc, words):
    attn = QFormerAttention(8, 2, kv_dim=6)
    with pytest.raises(exc) as info:
        call(attn)
    assert words in str(info.value), str(info.value)


def test_triton_backend_matches_torch_backend(device):
    torch.manual_seed(3)

    def block(backend):
        return nn.ModuleList([QFormerAttention(32, 4, causal=True, backend=backend),
                              QFormerAttention(32, 4, kv_dim=24, backend=backend)]).to(device)

    ref_block, tri_block = block("torch"), block("triton")
    tri_block.load_state_dict(ref_block.state_dict())
    x = torch.randn(2, 6, 32, device=device)
    ctx = torch.randn(2, 9, 24, device=device)
    lens = torch.tensor([9, 5], device=device)
    outs, grads = [], []
    for self_attn, cross_attn in (ref_block, tri_block):
        xi = x.clone().requires_grad_()
        h = xi + self_attn(xi)
        out = h + cross_attn(h, ctx, kv_lens=lens)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), [xi, *self_attn.parameters(), *cross_attn.parameters()]))
    assert torch.allclose(outs[1], outs[0], atol=1e-5)
    for a, b in zip(grads[1], grads[0]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
