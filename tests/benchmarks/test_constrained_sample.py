"""The constrained_sample benchmark suite: its closures run on CPU, and its CUDA-graph check
(fresh randomness on every replay, the grammar kept) passes on a GPU and refuses a CPU."""
from __future__ import annotations

import pytest
import torch

from seedfast.benchmarks import constrained_sample as sampling_suite
from seedfast.benchmarks.harness import Case, PeerUnavailable


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_cuda_graph_replays_with_new_randomness(backend):
    report = sampling_suite.graph_capture_check(torch.device("cuda"), backend=backend)
    assert report["changed_fraction"] > 0.5 and report["replay_matches_eager"] and report["grammar_ok"]


def test_graph_capture_check_needs_cuda():
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        sampling_suite.graph_capture_check(torch.device("cpu"))


@pytest.mark.parametrize("mode", ["sample", "greedy"])
def test_benchmark_closures_run_on_cpu(mode):
    case = Case("constrained_sample", mode, {"B": 4, "V": 40194, "dtype": "fp32"})
    ran = []
    for impl in sampling_suite.impls:
        try:
            fn = impl.build(case, torch.device("cpu"))
        except PeerUnavailable:
            continue
        out = fn()
        tokens = out[0] if isinstance(out, tuple) else out
        assert tokens.shape == (4,)
        ran.append(impl.name)
    assert {"seedfast", "torch-sort"} <= set(ran)
    assert [c.params["B"] for c in sampling_suite.cases(quick=True, device=torch.device("cpu"))] == [1, 8]
