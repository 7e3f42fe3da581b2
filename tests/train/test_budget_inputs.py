"""``compute_budget`` validates its inputs for library callers (issue 15, item 3): nothing negative,
zero or non-finite turns into a projection."""
import math

import pytest

from seedfast.train import budget as B

GOOD = B.Measurement("stage2-online", 1e-3, 1e9, "NVIDIA H100 80GB HBM3", "test")


@pytest.mark.parametrize("kwargs, message", [
    ({"pairs": -1}, r"pairs must be a positive integer, got -1"),
    ({"pairs": 0}, r"pairs must be a positive integer, got 0"),
    ({"pairs": 2.5}, r"pairs must be a positive integer, got 2\.5"),
    ({"pairs": True}, r"pairs must be a positive integer, got True"),
    ({"epochs": (-1, 500)}, r"epochs must be two non-negative integers \(stage 1, stage 2\), not both 0, "
                            r"got \(-1, 500\)"),
    ({"epochs": (0, 0)}, r"epochs must be two non-negative integers .* got \(0, 0\)"),
    ({"epochs": (10,)}, r"epochs must be two non-negative integers .* got \(10,\)"),
    ({"peak": -1.0}, r"peak must be a positive finite TFLOP/s, got -1\.0"),
    ({"peak": 0.0}, r"peak must be a positive finite TFLOP/s, got 0\.0"),
    ({"peak": math.nan}, r"peak must be a positive finite TFLOP/s, got nan"),
    ({"peak": math.inf}, r"peak must be a positive finite TFLOP/s, got inf"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        B.compute_budget([GOOD], **kwargs)


@pytest.mark.parametrize("seconds, flops", [(-1e-3, 1e9), (0.0, 1e9), (math.nan, 1e9), (1e-3, -1.0),
                                            (1e-3, math.inf)])
def test_measurements_must_be_positive_and_finite(seconds, flops):
    bad = B.Measurement("stage1-online", seconds, flops, GOOD.device, "bad.json")
    with pytest.raises(ValueError, match=r"^bad\.json: stage1-online measured .* expected positive finite numbers"):
        B.compute_budget([GOOD, bad])
    with pytest.raises(ValueError, match=r"^bad\.json: stage1-online measured"):
        B.compute_budget([GOOD], reference=[bad])


def test_zero_epochs_of_one_stage_is_a_budget():
    b = B.compute_budget([GOOD], pairs=1000, epochs=(0, 2), peak=989.4)
    assert b.plans[0].phases[0][1] == 0 and b.plans[0].gpu_days > 0
    assert "stage 1 0 epochs" in B.format_budget(b)


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\xff\xfe", r"not a text file \(expected a run's log\.jsonl\)"),
    (b'{"event": "start"}\n{"step": 1, "step_ti', r"line 2 is not JSON \(Unterminated string"),
    (b"[1, 2]\n", r"line 1 is not a JSON object"),
    (b'{"event": "start", "stage": 2}\n' + b'{"step_time_s": 1.0}\n' * 5,
     r"the start record lacks a usable field \(KeyError\('config'\)\)"),
])
def test_from_log_names_the_file_and_the_problem(tmp_path, content, message):
    log = tmp_path / "log.jsonl"
    log.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'log.jsonl'}: {message}"):
        B.from_log(log)
