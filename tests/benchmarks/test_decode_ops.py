"""What the fused decode ops' suites share (seedfast/benchmarks/decode_ops.py): the case list and
a quick CPU run of each suite in which every peer is measured or says why it is unavailable."""
from __future__ import annotations

import pytest
import torch

from seedfast.benchmarks import add_rms_norm, rope_kv_write, silu_mul
from seedfast.benchmarks.decode_ops import decode_cases, element_size, flashinfer
from seedfast.benchmarks.harness import Case, PeerUnavailable, run_suites

CPU = torch.device("cpu")


@pytest.mark.parametrize("suite", [add_rms_norm, silu_mul, rope_kv_write], ids=lambda s: s.NAME)
def test_quick_cpu_run_measures_or_explains_every_peer(suite):
    result = run_suites([suite], quick=True, device=CPU, budget_ms=5.0)
    assert len(result.measurements) == len(suite.cases(quick=True, device=CPU)) * len(suite.impls)
    for m in result.measurements:
        if m.impl in ("seedfast", "torch"):
            assert m.error is None and m.median_ms > 0 and m.gbps > 0, m
        else:
            assert m.error.startswith("unavailable:"), m


def test_decode_cases_and_peers():
    def case_for(b, model, dt):
        return Case("toy", "decode", {"B": b, "model": model, "dtype": dt}, bytes=float(b * element_size(dt)))

    full = decode_cases(case_for, quick=False, device=torch.device("cuda"))
    assert [(c.params["model"], c.params["B"]) for c in full] == [
        (m, b) for m in ("8b", "14b") for b in (1, 64, 256)]
    assert {c.params["dtype"] for c in full} == {"bf16"} and full[2].bytes == 512
    cpu = decode_cases(case_for, quick=True, device=CPU)
    assert [(c.params["model"], c.params["B"], c.params["dtype"]) for c in cpu] == [
        ("8b", 1, "fp32"), ("8b", 64, "fp32")]
    with pytest.raises(PeerUnavailable, match="CUDA only"):
        flashinfer("flashinfer.norm", "fused_add_rmsnorm", lambda case, device: ())(full[0], CPU)
    missing = flashinfer("no_such_module_here", "fn", lambda case, device: ())
    with pytest.raises(PeerUnavailable, match="not installed"):
        missing(full[0], torch.device("cuda"))
