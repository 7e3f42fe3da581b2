"""The attention benchmark suite: SEED's cases, and peers run the way a user would run them at
their best (SDPA with ``is_causal`` or a precomputed additive mask, FlexAttention tiles)."""
from __future__ import annotations

import torch

from seedfast.benchmarks import qformer_attention as suite
from seedfast.benchmarks.harness import run_suites
from seedfast.ops import qformer_attention_reference

CPU = torch.device("cpu")


def test_cases_cover_seed_shapes_batches_and_dtypes():
    full = suite.cases(quick=False, device=torch.device("cuda"))
    keys = {(c.params["shape"], c.params["B"], c.params["dtype"], c.mode) for c in full}
    assert keys == {(s, b, dt, m) for s in ("self", "joint", "cross", "eva") for b in (1, 32, 256)
                    for dt in ("fp16", "bf16") for m in ("fwd", "fwd+bwd")}
    eva = next(c for c in full if c.params["shape"] == "eva")
    assert (eva.params["Lq"], eva.params["Lk"], eva.params["D"], eva.params["H"]) == (257, 257, 88, 16)
    quick = suite.cases(quick=True, device=torch.device("cuda"))
    assert 0 < len(quick) < len(full) and {c.params["B"] for c in quick} == {32}
    assert {c.params["dtype"] for c in suite.cases(quick=True, device=CPU)} == {"fp32"}


def test_sdpa_peer_at_its_best(monkeypatch):
    real = torch.nn.functional.scaled_dot_product_attention
    calls = []

    def recording(q, k, v, **kw):
        calls.append(kw)
        return real(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    for case in suite.cases(quick=True, device=CPU):
        if case.mode != "fwd":
            continue
        calls.clear()
        got = suite._build_sdpa(case, CPU)()
        (kw,) = calls
        q, k, v, _ = suite._inputs(case, CPU, layout="bhld")
        p = case.params
        want = qformer_attention_reference(q, k, v, causal=p["causal"], kv_lens=suite._kv_lens(p, CPU))
        torch.testing.assert_close(got, want)
        if p["shape"] == "self":
            # Unpadded causal self-attention: no mask tensor, so SDPA may pick its flash backend.
            assert kw == {"is_causal": True}
        elif p["shape"] == "joint":
            # A float mask added as it is, never a boolean one converted on every call.
            assert kw["attn_mask"].dtype == q.dtype and not kw.get("is_causal")
        else:
            assert kw == {}


def test_quick_cpu_run_measures_or_explains_every_peer():
    result = run_suites([suite], quick=True, device=CPU, budget_ms=5.0)
    by_impl = {}
    for m in result.measurements:
        by_impl.setdefault(m.impl, []).append(m)
    assert set(by_impl) == {impl.name for impl in suite.impls}
    for name in ("seedfast", "sdpa"):
        assert all(m.error is None and m.median_ms > 0 for m in by_impl[name]), name
    for name in ("xformers", "flash-attn"):
        assert all(m.error and m.error.startswith("unavailable:") for m in by_impl[name]), name
