"""QFormerAttention's additions for BERT-named Q-Formers (SEED's): the "bert" layout, a
swappable attention function, and queries shared across the batch."""
from __future__ import annotations

import pytest
import torch

from seedfast.nn import QFormerAttention
from seedfast.ops import qformer_attention_reference


def _pair(kv_dim=None):
    torch.manual_seed(0)
    plain = QFormerAttention(16, 4, kv_dim=kv_dim, dtype=torch.float64)
    bert = QFormerAttention(16, 4, kv_dim=kv_dim, layout="bert", dtype=torch.float64)
    with torch.no_grad():
        for src, dst in zip(plain.projections[:3], bert.projections[:3]):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    return plain, bert


def test_bert_layout_names_and_output():
    plain, bert = _pair(kv_dim=12)
    assert set(bert.state_dict()) == {f"{p}.{w}" for p in ("query", "key", "value") for w in ("weight", "bias")}
    assert bert.projections[3] is None and plain.projections[3] is plain.out_proj
    assert "layout='bert'" in repr(bert)
    x, ctx = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 7, 12, dtype=torch.float64)
    lens = torch.tensor([7, 3])
    # The bert layout stops before the output projection (BERT's output.dense belongs to the caller).
    torch.testing.assert_close(plain.out_proj(bert(x, ctx, kv_lens=lens)), plain(x, ctx, kv_lens=lens))
    with pytest.raises(ValueError, match="layout must be one of"):
        QFormerAttention(16, 4, layout="hf")


def test_attention_function_is_swappable():
    _, attn = _pair()
    calls = []

    def spy(q, k, v, *, causal, kv_lens):
        calls.append((tuple(q.shape), causal, kv_lens))
        return qformer_attention_reference(q, k, v, causal=causal, kv_lens=kv_lens)

    x = torch.randn(2, 5, 16, dtype=torch.float64)
    want = attn(x, causal=True)
    attn.attend = spy
    torch.testing.assert_close(attn(x, causal=True), want)
    assert calls == [((2, 4, 5, 4), True, None)]
    built = QFormerAttention(16, 4, attention=spy)
    assert built.attend is spy


def test_queries_of_batch_one_are_shared():
    plain, _ = _pair(kv_dim=12)
    q, ctx = torch.randn(1, 5, 16, dtype=torch.float64), torch.randn(3, 7, 12, dtype=torch.float64)
    shared = plain(q, ctx)
    assert shared.shape == (3, 5, 16)
    torch.testing.assert_close(shared, plain(q.expand(3, -1, -1), ctx))
    with pytest.raises(ValueError, match=r"context batch \(3\) must equal x's batch \(2\)"):
        plain(torch.randn(2, 5, 16, dtype=torch.float64), ctx)
