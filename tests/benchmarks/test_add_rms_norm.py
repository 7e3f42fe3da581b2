"""The add_rms_norm benchmark suite: SEED-LLaMA's decode shapes with the bytes each call moves, and
its closures on CPU (the peers that need CUDA are recorded as unavailable)."""
from __future__ import annotations

import pytest
import torch

from seedfast.benchmarks import add_rms_norm as suite
from seedfast.benchmarks.harness import PeerUnavailable
from seedfast.ops import add_rms_norm, add_rms_norm_reference

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def test_cuda_cases_are_seed_llama_decode_steps():
    full = suite.cases(quick=False, device=CUDA)
    assert {(c.params["model"], c.params["N"], c.params["B"]) for c in full} == {
        (m, n, b) for m, n in (("8b", 4096), ("14b", 5120)) for b in (1, 64, 256)}
    assert {c.params["dtype"] for c in full} == {"bf16"} and {c.mode for c in full} == {"decode"}
    quick = suite.cases(quick=True, device=CUDA)
    assert 0 < len(quick) < len(full) and {c.params["B"] for c in quick} == {1, 256}
    assert {c.params["dtype"] for c in suite.cases(quick=False, device=CPU)} == {"fp32"}


def test_bytes_count_two_reads_two_writes_and_the_weight():
    case = suite.case_for(64, "14b", "bf16")
    assert case.bytes == 2 * (4 * 64 * 5120 + 5120) and case.size == 64 and case.flops == 0
    assert suite.case_for(1, "8b", "fp32").bytes == 4 * (4 * 4096 + 4096)


def test_closures_agree_on_cpu():
    case = suite.case_for(4, "8b", "fp32")
    by_name = {impl.name: impl for impl in suite.impls}
    x, residual, weight, eps = suite.make_inputs(case, CPU)
    want = add_rms_norm_reference(x, residual, weight, eps)
    for name in ("seedfast", "torch"):
        for got, expected in zip(by_name[name].build(case, CPU)(), want):
            assert got.shape == (4, 4096) and torch.equal(got, expected)
    for name in ("torch-compile", "flashinfer"):
        with pytest.raises(PeerUnavailable):
            by_name[name].build(case, CPU)


def test_inputs_fit_the_kernel(device):
    """The smallest GPU case's inputs through the Triton kernel (interpreted on CPU)."""
    case = suite.cases(quick=True, device=CUDA)[0]
    x, residual, weight, eps = suite.make_inputs(case, torch.device(device))
    with torch.no_grad():
        got = add_rms_norm(x, residual, weight, eps, backend="triton")
    want = add_rms_norm_reference(x, residual, weight, eps)
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0].float(), want[0].float(), rtol=2e-2, atol=2e-2)
