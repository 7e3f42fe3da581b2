"""The rope_kv_write benchmark suite: SEED-LLaMA's decode head layouts with the bytes each call
moves, and its closures on CPU (writing each row's cache slot; the compiled peer needs CUDA)."""
from __future__ import annotations

import pytest
import torch

from seedfast.benchmarks import rope_kv_write as suite
from seedfast.benchmarks.harness import PeerUnavailable
from seedfast.ops import rope_kv_write, rope_kv_write_reference

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def test_cuda_cases_are_seed_llama_decode_steps():
    full = suite.cases(quick=False, device=CUDA)
    assert {(c.params["model"], c.params["H"], c.params["Hkv"], c.params["D"], c.params["B"]) for c in full} == {
        (m, h, h, 128, b) for m, h in (("8b", 32), ("14b", 40)) for b in (1, 64, 256)}
    assert {c.params["dtype"] for c in full} == {"bf16"} and {c.mode for c in full} == {"decode"}
    quick = suite.cases(quick=True, device=CUDA)
    assert 0 < len(quick) < len(full) and {c.params["B"] for c in quick} == {1, 256}
    assert {c.params["dtype"] for c in suite.cases(quick=False, device=CPU)} == {"fp32"}


def test_bytes_count_qkv_both_ways_and_the_table_rows():
    b, h, d = 64, 32, 128
    # qkv [B, 3·H·D] read; q [B, H, D] and k, v [B, H, D] written; cos, sin rows (fp32) and int32 positions.
    assert suite.case_for(b, "8b", "bf16").bytes == 2 * (3 * b * h * d) * 2 + b * (2 * d * 4 + 4)


def test_closures_agree_on_cpu_and_write_each_rows_slot():
    case = suite.case_for(3, "8b", "fp32")
    by_name = {impl.name: impl for impl in suite.impls}
    x = suite.make_inputs(case, CPU)
    assert x["positions"].dtype == torch.int32 and x["cos"].shape == (suite.CACHE_LEN, 128)
    want_k, want_v = x["k_cache"].clone(), x["v_cache"].clone()
    want = rope_kv_write_reference(x["qkv"], x["cos"], x["sin"], x["positions"], want_k, want_v)
    for name in ("seedfast", "torch"):
        got = by_name[name].build(case, CPU)()
        assert got.shape == (3, 32, 128) and torch.equal(got, want)
    rows = torch.arange(3)
    pos = x["positions"].long()
    v = x["qkv"].view(3, 96, 128)[:, 64:]
    assert torch.equal(want_v[rows, pos], v) and want_k[rows, pos].abs().sum() > 0
    for cache in (want_k, want_v):
        cache[rows, pos] = 0
        assert not cache.any()  # nothing else written
    with pytest.raises(PeerUnavailable):
        by_name["torch-compile"].build(case, CPU)


def test_inputs_fit_the_kernel(device):
    """The smallest GPU case's inputs through the Triton kernel (interpreted on CPU)."""
    case = suite.cases(quick=True, device=CUDA)[0]
    x = suite.make_inputs(case, torch.device(device))
    ref = {k: v.clone() for k, v in x.items()}
    with torch.no_grad():
        got = rope_kv_write(**x, backend="triton")
    want = rope_kv_write_reference(**ref)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    for name in ("k_cache", "v_cache"):
        torch.testing.assert_close(x[name].float(), ref[name].float(), rtol=2e-2, atol=2e-2)
