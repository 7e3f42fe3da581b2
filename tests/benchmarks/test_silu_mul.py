"""The silu_mul benchmark suite: SEED-LLaMA's decode shapes with the bytes each call moves, and its
closures on CPU (the peers that need CUDA are recorded as unavailable)."""
from __future__ import annotations

import pytest
import torch

from seedfast.benchmarks import silu_mul as suite
from seedfast.benchmarks.harness import PeerUnavailable
from seedfast.ops import silu_mul, silu_mul_reference

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def test_cuda_cases_are_seed_llama_decode_steps():
    full = suite.cases(quick=False, device=CUDA)
    assert {(c.params["model"], c.params["I"], c.params["B"]) for c in full} == {
        (m, i, b) for m, i in (("8b", 11008), ("14b", 13824)) for b in (1, 64, 256)}
    assert {c.params["dtype"] for c in full} == {"bf16"} and {c.mode for c in full} == {"decode"}
    quick = suite.cases(quick=True, device=CUDA)
    assert 0 < len(quick) < len(full) and {c.params["B"] for c in quick} == {1, 256}
    assert {c.params["dtype"] for c in suite.cases(quick=False, device=CPU)} == {"fp32"}


def test_bytes_count_the_input_read_and_the_half_width_output_written():
    assert suite.case_for(256, "8b", "bf16").bytes == 2 * (256 * 2 * 11008 + 256 * 11008)
    assert suite.case_for(1, "14b", "fp32").bytes == 4 * 3 * 13824


def test_closures_agree_on_cpu():
    case = suite.case_for(3, "8b", "fp32")
    by_name = {impl.name: impl for impl in suite.impls}
    want = silu_mul_reference(suite.make_inputs(case, CPU))
    for name in ("seedfast", "torch"):
        got = by_name[name].build(case, CPU)()
        assert got.shape == (3, 11008) and torch.equal(got, want)
    for name in ("torch-compile", "flashinfer"):
        with pytest.raises(PeerUnavailable):
            by_name[name].build(case, CPU)


def test_inputs_fit_the_kernel(device):
    """The smallest GPU case's input through the Triton kernel (interpreted on CPU)."""
    case = suite.cases(quick=True, device=CUDA)[0]
    x = suite.make_inputs(case, torch.device(device))
    with torch.no_grad():
        got = silu_mul(x, backend="triton")
    torch.testing.assert_close(got.float(), silu_mul_reference(x).float(), rtol=2e-2, atol=2e-2)
