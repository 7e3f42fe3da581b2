"""FLOP counts (checked against torch's FlopCounterMode), MFU, and ``seedfast budget``'s arithmetic."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from seedfast.benchmarks.harness import Case, Measurement, RunResult, write_result
from seedfast.benchmarks.train_step import from_results
from seedfast.models.llama import LlamaConfig
from seedfast.models.seed_tokenizer import SeedTokenizer
from seedfast.models.tokenizer_config import SeedTokenizerConfig
from seedfast.train import budget as B
from seedfast.train.metrics import (
    GpuMonitor,
    _attention,
    codebook_stats,
    llm_step_flops,
    mfu,
    peak_tflops,
    tokenizer_step_flops,
    vit_flops,
)
from seedfast.train.stages import LlmObjective, TokenizerObjective, build_llm

from seedfast.cli import main
from .helpers import tiny

OFFICIAL = SeedTokenizerConfig.official(training_heads=True, qformer_attention="sdpa")


@pytest.mark.parametrize("config", [OFFICIAL, SeedTokenizerConfig.tiny(training_heads=True, qformer_attention="sdpa")],
                         ids=["official", "tiny"])
def test_tokenizer_flops_match_flop_counter(config):
    """Forward + backward of each stage counted by torch on a storage-free (meta) model."""
    with torch.device("meta"):
        model = SeedTokenizer(config)
        images = torch.randn(2, 3, config.image_size, config.image_size)
        inputs = {"images": images, "text_ids": torch.zeros(2, 16, dtype=torch.long),
                  "text_lengths": torch.full((2,), 5), "target": torch.randn(2, config.generation_embed_dim)}
    for stage in (1, 2):
        model.set_trainable(stage)
        counter = FlopCounterMode(display=False)
        with counter:
            TokenizerObjective(model, stage)(inputs)["loss"].backward()
        assert tokenizer_step_flops(config, stage, text_length=16) == pytest.approx(
            counter.get_total_flops() / 2, rel=0.01)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.visual_encoder(images[:1])
    assert vit_flops(config) == counter.get_total_flops()


def test_official_sizes_flops():
    # EVA ViT-g/14 forward is ~0.52 TFLOP per image, 95 % of a stage-2 step.
    assert vit_flops(OFFICIAL) == pytest.approx(5.207e11, rel=1e-3)
    assert vit_flops(OFFICIAL) > 0.95 * tokenizer_step_flops(OFFICIAL, 2)
    assert tokenizer_step_flops(OFFICIAL, 2, features="causal") < 0.025 * tokenizer_step_flops(OFFICIAL, 2)
    # 6N per token for the 8B model's matmuls (N without the embedding table), plus causal attention.
    c = LlamaConfig.seed_llama_8b()
    n = c.n_layers * (4 * c.dim * c.dim + 3 * c.dim * c.intermediate_size) + c.dim * c.vocab_size
    attention = c.n_layers * 6 * 200 * c.dim  # 4·L·d per token forward, halved (causal), ×3 with backward
    assert llm_step_flops(c, 200, lora=False) == pytest.approx(200 * (6 * n + attention), rel=1e-9)


@pytest.mark.parametrize("lora", [False, True])
def test_llm_matmul_flops_match_flop_counter(lora):
    """The CPU flop counter sees the projections' matmuls (SDPA's are not counted there)."""
    cfg = tiny(3, f"lora.enabled={str(lora).lower()}", "lora.dropout=0.0")
    objective = LlmObjective(build_llm(cfg))
    c, s = LlamaConfig.tiny(), 40
    counter = FlopCounterMode(display=False)
    with counter:
        objective({"tokens": torch.randint(0, 322, (2, s)), "lengths": torch.full((2,), s)})["loss"].backward()
    attention = c.n_layers * _attention(s, s, c.n_heads * c.head_dim, backward=True, causal=True)
    expected = llm_step_flops(c, s, lora=lora, lora_r=cfg.lora.r) - attention
    assert counter.get_total_flops() / 2 == pytest.approx(expected, rel=1e-9)


def test_peaks_mfu_and_codebook_stats():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("Tesla V100-SXM2-32GB") == 125.0
    assert peak_tflops("NVIDIA L40S") == 362.0 and peak_tflops("NVIDIA L4") == 121.0
    assert peak_tflops("AMD EPYC 7B13") is None
    assert mfu(989.4e12, 2.0, 2, 989.4) == pytest.approx(0.25)
    assert mfu(1e12, 1.0, 1, None) is None
    stats = codebook_stats(torch.tensor([2, 2, 0, 0]))
    assert (stats.used, stats.size, stats.perplexity) == (2, 4, pytest.approx(2.0))
    note = GpuMonitor(torch.device("cpu"))
    assert note.note == "no GPU (CPU run)"
    assert note.sample() == {"gpu_util": None, "gpu_mem_gib": None, "peak_mem_gib": None}


def test_gpu_monitor_says_why_without_nvml(monkeypatch):
    import pynvml

    def missing():
        raise pynvml.NVMLError_LibraryNotFound()

    monkeypatch.setattr(pynvml, "nvmlInit", missing)
    monitor = GpuMonitor(torch.device("cuda", 0))
    assert monitor.handle is None and monitor.note.startswith("no NVIDIA GPU (NVML: ")


def _results(tmp_path, device: str, ms_per_sample: dict[str, float], name: str):
    result = RunResult(date="2026-01-01", device=device, quick=False, env={"versions": {}})
    for mode, ms in ms_per_sample.items():
        case = Case("train", mode, {"batch": 256, "config": "official", "dtype": "bf16", "text_length": 32})
        result.measurements.append(Measurement(op="train", mode=mode, case=case.params, impl="seedfast", ours=True,
                                               median_ms=ms * 256, reps=5))
    return write_result(result, tmp_path / name)


def test_budget_arithmetic_on_fixed_measurements(tmp_path):
    h100 = _results(tmp_path, "NVIDIA H100 80GB HBM3", {"stage1-online": 1.0, "stage1-vit": 0.1,
                                                        "stage2-online": 1.0, "stage2-causal": 0.02}, "h100")
    v100 = _results(tmp_path, "Tesla V100-SXM2-32GB", {"stage1-online": 8.0, "stage1-vit": 0.8,
                                                       "stage2-online": 8.0, "stage2-causal": 0.16}, "v100")
    b = B.compute_budget(from_results(h100), reference=from_results(v100))
    online, cached = b.plans
    # 5e6 pairs: 10 epochs × 1 ms + 500 epochs × 1 ms
    assert online.seconds == pytest.approx(5e6 * 10 * 1e-3 + 5e6 * 500 * 1e-3)
    assert online.gpu_days == pytest.approx(2.55e6 / 86400)
    # ViT once (1 − 0.1 ms) + 10 × 0.1 ms + causal once (1 − 0.02 ms) + 500 × 0.02 ms
    assert cached.seconds == pytest.approx(5e6 * (0.9e-3 + 10 * 1e-4 + 0.98e-3 + 500 * 2e-5))
    assert b.v100_days_by_peak(online) == pytest.approx(2.55e6 / 86400 * 989.4 / 125)
    assert b.v100_days_by_peak(cached) == pytest.approx(64400 / 86400 * 989.4 / 125)
    assert [p.gpu_days for p in b.reference] == pytest.approx([8 * online.gpu_days, 8 * cached.gpu_days])
    assert b.notes == []
    assert b.paper_implied_mfu == pytest.approx(b.paper_flops / (364.8 * 86400 * 125e12))
    text = B.format_budget(b)
    assert "364.8 V100-days" in text and "5,000,000 image-text pairs" in text
    assert "meets the <= 0.25 goal" in text and "misses the <= 0.25 goal" in text
    assert f"{8 * online.gpu_days:.1f} V100-days" in text
    rate = B.mode_flops(OFFICIAL, "stage2-online") / 1e-3
    assert f"stage2-online  (official) 1.0000 ms/sample, {rate / 1e12:.2f} TFLOP/s, " \
           f"MFU {100 * rate / 989.4e12:.1f}%" in text


def test_unmeasured_modes_are_derived_at_the_measured_flop_rate(tmp_path):
    only = _results(tmp_path, "NVIDIA H100 80GB HBM3", {"stage2-online": 1.0}, "h100")
    b = B.compute_budget(from_results(only), pairs=1000, epochs=(1, 2))
    rate = B.mode_flops(OFFICIAL, "stage2-online") / 1e-3
    online = b.plans[0]
    assert online.phases[0][2] == pytest.approx(B.mode_flops(OFFICIAL, "stage1-online") / rate)
    assert online.seconds == pytest.approx(1000 * (online.phases[0][2] + 2 * 1e-3))
    assert len(b.notes) == 3 and all("derived from stage2-online" in n for n in b.notes)


def test_budget_from_a_run_log(tmp_path):
    cfg = tiny(2)
    log = tmp_path / "log.jsonl"
    records = [{"event": "start", "stage": 2, "device": "NVIDIA H100 80GB HBM3", "world_size": 2,
                "features": "causal", "config": cfg.flat()}]
    records += [{"step": i + 1, "loss": 1.0, "step_time_s": t} for i, t in enumerate([9, 9, 9, 0.4, 0.5, 0.6])]
    log.write_text("\n".join(map(json.dumps, records)) + "\n")
    (m,) = B.from_log(log)
    assert m.mode == "stage2-causal" and m.device == "NVIDIA H100 80GB HBM3"
    assert m.seconds_per_sample == pytest.approx(0.5 * 2 / 32)  # median step × world size / global batch
    assert m.flops_per_sample == B.mode_flops(SeedTokenizerConfig.tiny(training_heads=True, qformer_dropout=0.0),
                                              "stage2-causal")
    assert m.config == "tiny"
    b = B.compute_budget([m])
    assert any("measured at the tiny config's sizes" in n for n in b.notes)


def test_budget_command(tmp_path, capsys):
    path = _results(tmp_path, "NVIDIA H100 80GB HBM3", {"stage2-online": 0.5}, "h100")
    assert main(["budget", "--results", str(path), "--pairs", "1000"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("assumptions:") and "data: 1,000 image-text pairs" in out and "plan cached" in out
    assert main(["budget", "--results", str(tmp_path / "missing.json")]) == 2
    assert "seedfast budget: error:" in capsys.readouterr().err
