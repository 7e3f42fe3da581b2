"""The tokenizer benchmark suite: its peers compute the same thing, and a quick CPU run works."""
from __future__ import annotations

import pytest
import torch

from seedfast.benchmarks import tokenizer as suite
from seedfast.benchmarks.harness import run_suites
from seedfast.models.tokenizer_config import SeedTokenizerConfig
from seedfast.ops import qformer_attention_reference


@pytest.mark.parametrize("causal,lens", [(True, None), (False, [5, 2]), (False, None)])
def test_eager_attention_matches_reference(causal, lens):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g, dtype=torch.float64) for _ in range(3))
    kv_lens = torch.tensor(lens) if lens else None
    got = suite.eager_attention(q, k, v, causal=causal, kv_lens=kv_lens)
    torch.testing.assert_close(got, qformer_attention_reference(q, k, v, causal=causal, kv_lens=kv_lens))


def test_implementations_agree_and_run():
    case = suite.cases(quick=True, device=torch.device("cpu"))[0]
    assert case.mode == "encode" and case.params["config"] == "tiny"
    codes = [impl.build(case, torch.device("cpu"))() for impl in suite.impls]
    assert all(torch.equal(c, codes[0]) for c in codes)
    result = run_suites([suite], quick=True, device=torch.device("cpu"), budget_ms=5.0)
    assert len(result.measurements) == 2 * len(suite.impls)
    assert all(m.error is None and m.median_ms > 0 for m in result.measurements)


def test_flop_counts():
    cfg = SeedTokenizerConfig.official()
    # ViT-g/14 at 224 is ≈ 0.5 TFLOP per image for 39 blocks; the Q-Former ≈ 13 GFLOP, about
    # half of it the image key/value projections of the 6 cross-attention layers.
    assert 0.45e12 < suite.encode_flops(cfg) < 0.55e12
    assert 12e9 < suite.qformer_flops(cfg) < 13.5e9
    kv = 6 * 4 * 257 * 1408 * 768
    assert 0.5 < kv / suite.qformer_flops(cfg) < 0.55
