"""Training steps timed for ``seedfast budget --measure``: synthetic inputs, a measurement on this
CPU written and read back, and results files without training steps refused."""
import json

import numpy as np
import pytest
import torch

from seedfast.benchmarks.harness import Measurement, RunResult, write_result
from seedfast.benchmarks.train_step import SyntheticSource, from_results
from seedfast.cli import main
from seedfast.models.tokenizer_config import NUM_QUERY_TOKENS, SeedTokenizerConfig
from tests.generation.tiny import one_thread  # noqa: F401 (fixture)


@pytest.mark.parametrize("kind", [None, "vit", "causal"])
def test_synthetic_source_shapes_and_repeats(kind):
    c = SeedTokenizerConfig.tiny(training_heads=True)
    source = SyntheticSource(c, kind, size=10)
    raw = source.read(np.array([3, 4]))
    assert len(source) == 10 and raw.target.shape == (2, c.generation_embed_dim)
    if kind is None:
        assert raw.images.shape == (2, 3, c.image_size, c.image_size) and raw.images.dtype == torch.uint8
    else:
        tokens, width = (c.num_patches + 1, c.vit_width) if kind == "vit" else (NUM_QUERY_TOKENS, c.qformer_hidden)
        assert raw.features.shape == (2, tokens, width)
    again = source.read(np.array([3, 4]))
    assert torch.equal(raw.target, again.target)


def test_budget_measures_this_device(tmp_path, capsys):
    code = main(["budget", "--measure", "--device", "cpu", "--preset", "tiny", "--mode", "stage2-online",
                 "--mode", "stage2-causal", "--batch", "8", "--time-ms", "300", "--out", str(tmp_path)])
    assert code == 0
    (written,) = tmp_path.glob("*.json")
    data = json.loads(written.read_text())
    assert [m["mode"] for m in data["measurements"]] == ["stage2-online", "stage2-causal"]
    assert all(m["median_ms"] > 0 and m["tflops"] > 0 for m in data["measurements"])
    assert "plan online on" in capsys.readouterr().out
    measured = from_results(written)
    assert [m.mode for m in measured] == ["stage2-online", "stage2-causal"]
    assert all(m.config == "tiny" and m.seconds_per_sample > 0 for m in measured)


def test_results_without_training_steps_are_refused(tmp_path):
    result = RunResult(date="2026-01-01", device="cpu", quick=True, env={"versions": {}}, measurements=[
        Measurement("vq", "fwd", {"N": 1}, "seedfast", True, median_ms=1.0),
        Measurement("train", "stage2-online", {"batch": 8}, "seedfast", True, error="out of memory"),
    ])
    with pytest.raises(ValueError, match="no 'train' measurement"):
        from_results(write_result(result, tmp_path))
