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


def test_cuda_cases_cover_every_batch_vocabulary_and_filter():
    cuda = sampling_suite.cases(quick=False, device=torch.device("cuda"))
    seen = {(c.mode, c.params["B"], c.params["V"]) for c in cuda if c.params["dtype"] == "bf16"}
    for mode in ("top_k", "top_p", "sample"):
        for b in (1, 8, 64, 256):
            for v in (40194, 152064):
                assert (mode, b, v) in seen
    assert {c.params["dtype"] for c in cuda if c.mode == "sample"} == {"fp32", "bf16"}


@pytest.mark.parametrize("mode, top_k, top_p", [("top_k", 50, 1.0), ("top_p", 0, 0.9), ("sample", 50, 0.9)])
def test_each_mode_sets_its_filters(mode, top_k, top_p):
    case = Case("constrained_sample", mode, {"B": 2, "V": 40194, "dtype": "fp32"})
    x = sampling_suite.make_inputs(case, torch.device("cpu"))
    assert x["top_k"].tolist() == [top_k] * 2 and x["top_p"].tolist() == pytest.approx([top_p] * 2)
    assert x["temperature"].tolist() == [1.0, 1.0]
    tokens = sampling_suite.impls[0].build(case, torch.device("cpu"))()[0]
    assert tokens.shape == (2,)


def test_peers_that_cannot_run_are_recorded_as_unavailable():
    case = Case("constrained_sample", "top_p", {"B": 2, "V": 40194, "dtype": "fp32"})
    by_name = {impl.name: impl for impl in sampling_suite.impls}
    for name in ("torch-sort-compiled", "flashinfer", "seedfast-cuda"):
        with pytest.raises(PeerUnavailable):
            by_name[name].build(case, torch.device("cpu"))
