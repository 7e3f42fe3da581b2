"""Helpers of the training tests: tiny configs, run logs, weights, subprocess environment."""
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from seedfast.train.config_sources import build_config, read_preset

REPO = Path(__file__).resolve().parents[2]


def tiny(stage: int, *overrides: str):
    """The tiny preset for ``stage`` with ``section.key=value`` overrides."""
    return build_config(stage, [read_preset("tiny")], list(overrides))


def steps_of(out: Path) -> list[dict]:
    """The per-step records of a run's log.jsonl."""
    lines = (Path(out) / "log.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def weights(out: Path, step: int, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    """A checkpoint file's tensors."""
    return load_file(str(Path(out) / "checkpoints" / f"step-{step:08d}" / name))


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def subprocess_env() -> dict[str, str]:
    """One thread per process (2 ranks on a 2-core runner) and the repo importable."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def seedfast_cmd(*args: str) -> list[str]:
    """The ``seedfast`` command as a subprocess command line."""
    return [sys.executable, "-m", "seedfast", *args]
