"""The decode benchmark suite: every case builds and runs once on CPU (tiny config), the
transformers peer reads seedfast's own weight tensors, and the derived numbers are right."""
from __future__ import annotations

import torch

from seedfast.benchmarks import decode
from seedfast.benchmarks.harness import Measurement, PeerUnavailable, RunResult
from seedfast.models.llama import LlamaConfig, parameter_count
from tests.generation.tiny import one_thread  # noqa: F401 (fixture)

CPU = torch.device("cpu")


def test_every_case_runs_once_for_every_implementation():
    cases = decode.cases(quick=True, device=CPU)
    assert [c.mode for c in cases] == ["hbm-copy", "decode", "image-gen", "prefill"]
    for case in cases:
        for impl in [*decode.impls, decode.HF_COMPILE]:
            try:
                fn = impl.build(case, CPU)
            except PeerUnavailable:
                assert impl.name in ("seedfast-eager", "hf-static", "hf-compile")
                continue
            out = fn()
            if case.mode == "decode" and impl.name.startswith("seedfast"):
                assert [len(o.token_ids) for o in out] == [case.params["new_tokens"]]
            elif case.mode == "image-gen" and impl.name.startswith("seedfast"):
                assert len(out) == case.params["batch"]
                assert all(len(o.token_ids) == 33 and o.image_codes.shape == (1, 32) for o in out)
            elif case.mode == "image-gen":
                assert out.shape == (case.params["batch"], case.params["prompt"] + 33)
            elif case.mode == "prefill":
                assert out.reshape(-1, 322).shape[0] == 1


def test_transformers_peer_shares_the_weights():
    model, hf = decode._models("cpu")
    assert hf.lm_head.weight.data_ptr() == model.output.weight.data_ptr()
    x = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max() < 1e-4


def test_bytes_and_summary():
    config = LlamaConfig.seed_llama_8b()
    weights = decode._weight_bytes(config, torch.bfloat16)
    assert weights == 2 * (parameter_count(config) - config.vocab_size * config.dim)
    cases = decode.cases(quick=True, device=torch.device("cuda"))  # sizes only: nothing is allocated
    batch1 = next(c for c in cases if c.mode == "decode")
    assert batch1.params["batch"] == 1 and batch1.bytes > batch1.params["new_tokens"] * weights
    assert sorted(c.params["batch"] for c in cases if c.mode == "image-gen") == [64, 256]
    assert sorted(c.params["prompt"] for c in cases if c.mode == "prefill") == [1024, 4096]
    result = RunResult(date="d", device="x", quick=True, env={}, measurements=[
        Measurement("decode", "hbm-copy", {"MiB": 1}, "seedfast", True, median_ms=1.0, gbps=3000.0),
        Measurement("decode", "decode", {"batch": 1, "tokens": 100}, "seedfast", True, median_ms=500.0, gbps=2700.0),
        Measurement("decode", "decode", {"batch": 1, "tokens": 100}, "hf-static", False, error="unavailable: x"),
    ])
    lines = decode.summarize(result)
    assert lines[0] == "decode: copy bandwidth 3000 GB/s (read + write)"
    assert lines[1].endswith("seedfast: 200.0 tokens/s, 90.0% of the HBM roofline") and len(lines) == 2

