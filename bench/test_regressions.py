"""Regression timings at fixed small sizes, through the same closures ``seedfast bench`` times.

On CPU these time the torch reference paths (what ``backend="auto"`` runs there); on a GPU,
the Triton kernels. Compare runs with ``pytest bench --benchmark-enable --benchmark-compare``.
"""
import pytest
import torch

from seedfast.benchmarks import vq as vq_suite
from seedfast.benchmarks.harness import Case

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("mode", ["codes", "fwd", "fwd+bwd"])
def test_vq(benchmark, mode):
    case = Case("vq", mode, {"N": 2048, "K": 8192, "D": 32, "dtype": "fp32"})
    run = vq_suite._build_seedfast(case, DEVICE)
    result = benchmark(run)
    if mode == "codes":
        assert result.shape == (64, 32) and result.dtype == torch.int64


def test_sampling(benchmark):
    from seedfast.benchmarks import constrained_sample as sampling_suite

    case = Case("constrained_sample", "sample", {"B": 64, "V": 40194, "dtype": "fp32"})
    tokens = benchmark(sampling_suite._build_seedfast("auto")(case, DEVICE))
    assert tokens is not None


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_attention(benchmark, mode):
    from seedfast.benchmarks import qformer_attention as attention_suite

    params = {"B": 4, "H": 12, "Lq": 32, "Lk": 257, "D": 64, "shape": "cross", "causal": False,
              "kv_lens": True, "dtype": "fp32"}
    benchmark(attention_suite._build_seedfast(Case("qformer_attention", mode, params), DEVICE))
