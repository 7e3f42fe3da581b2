"""The decode benchmark suite: every case builds and runs once on CPU (tiny config), the
transformers peer reads seedfast's own weight tensors, and the derived numbers are right."""
from __future__ import annotations

import torch

from seedfast.benchmarks import decode
from seedfast.benchmarks.harness import Measurement, PeerUnavailable, RunResult
from seedfast.generation import SamplingParams
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
            if case.mode == "decode":
                # Decode steps alone: the new_tokens tokens after the prefill's first one.
                assert out.shape == (1, case.params["new_tokens"])
            elif case.mode == "image-gen" and impl.name.startswith("seedfast"):
                assert len(out) == case.params["batch"]
                assert all(len(o.token_ids) == 33 and o.image_codes.shape == (1, 32) for o in out)
            elif case.mode == "image-gen":
                assert out.shape == (case.params["batch"], case.params["prompt"] + 33)
            elif case.mode == "prefill":
                assert out.reshape(-1, 322).shape[0] == 1


def test_decode_rows_time_steps_alone_and_agree_with_generate():
    """The decode closures start after the prefill: every call decodes the same tokens (the state
    is restored), which are greedy generate's tokens after its first, for seedfast (whose sampler
    keeps text rows to text ids) and for transformers (unconstrained)."""
    case = next(c for c in decode.cases(quick=True, device=CPU) if c.mode == "decode")
    model, hf = decode._models("cpu")
    _, _, _, vocab = decode._setup(CPU)
    new = case.params["new_tokens"]
    prompts = decode._prompts(case, vocab, force_image=False)
    (expected,) = decode.generate(model, prompts, SamplingParams.greedy(new + 1), vocab=vocab, ignore_eos=True)
    ids = torch.tensor(prompts)
    with torch.no_grad():
        hf_expected = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new + 1,
                                  min_new_tokens=new + 1, do_sample=False, pad_token_id=0)[0, ids.shape[1] + 1:]
    by_impl = {}
    for impl in decode.impls:
        run = impl.build(case, CPU)
        first = run().clone()
        assert torch.equal(run(), first), impl.name
        by_impl[impl.name] = first[0].tolist()
    assert by_impl["seedfast"] == by_impl["seedfast-eager"] == expected.token_ids[1:]
    assert by_impl["hf-static"] == hf_expected.tolist()


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
    # The calculation beside the row: MB per token (weights + KV when the case names them), GB/s, copy GB/s.
    assert "13500.000 MB read per token × tokens/s = 2700 GB/s of the 3000 GB/s copy · seedfast: " in lines[1]
    batch1_row = Measurement("decode", "decode", batch1.params, "seedfast", True, median_ms=500.0, gbps=2700.0)
    result.measurements[1:] = [batch1_row]
    line = decode.summarize(result)[1]
    assert f"({batch1.params['weights_MB']:.3f} weights + {batch1.params['kv_MB_per_token']:.3f} KV)" in line
    assert batch1.params["weights_MB"] == round(weights / 1e6, 3)

