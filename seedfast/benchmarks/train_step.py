"""Training steps timed on this device, for ``seedfast budget --measure``: real steps of the loop
(:func:`seedfast.train.loop.train_step`) on synthetic batches, one result per budget mode, written
as a results JSON; and that JSON read back as the budget's measurements.

Synthetic batches: random images (or random features of the right shape), a fixed caption and
random stage-2 targets, so neither data loading nor the CLIP-H target model is timed. Not a
``seedfast bench`` suite: it has no peers, and its sizes come from a training config.
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seedfast.benchmarks.harness import Case, Impl, RunResult, load_result, measure
from seedfast.env import collect
from seedfast.models.tokenizer_config import NUM_QUERY_TOKENS
from seedfast.train import budget
from seedfast.train import distributed as D
from seedfast.train.budget import MODES, TEXT_LENGTH, mode_flops, tokenizer_config
from seedfast.train.config import model_config
from seedfast.train.config_sources import build_config
from seedfast.train.data import RawBatch
from seedfast.train.precision import compute_dtype

CAPTION = "a small red circle to the left of a large blue square"


class SyntheticSource:
    """Random inputs of the right shapes for a tokenizer config; sample ``i`` is always the same.

    Parameters
    ----------
    config : SeedTokenizerConfig
    kind : {None, "vit", "causal"}
        Images, ViT features or causal features.
    size : int
        Nominal number of samples.
    """

    def __init__(self, config: Any, kind: str | None, size: int = 1 << 16) -> None:
        self.config, self.kind, self.size = config, kind, size

    def __len__(self) -> int:
        return self.size

    def read(self, indices: np.ndarray) -> RawBatch:
        c, b = self.config, len(indices)
        g = torch.Generator().manual_seed(int(indices[0]))
        images = features = None
        if self.kind is None:
            images = torch.randint(0, 256, (b, 3, c.image_size, c.image_size), dtype=torch.uint8, generator=g)
        elif self.kind == "vit":
            features = torch.randn(b, c.num_patches + 1, c.vit_width, generator=g)
        else:
            features = torch.randn(b, NUM_QUERY_TOKENS, c.qformer_hidden, generator=g)
        target = torch.randn(b, c.generation_embed_dim, generator=g)
        return RawBatch(indices=indices, captions=[CAPTION] * b, images=images, features=features, target=target)


def measure_modes(tables: Sequence[dict], overrides: Sequence[str], *, modes: Sequence[str] = MODES,
                  batch: int | None = None, device: str | None = None, budget_ms: float = 2000.0,
                  progress: Callable[[str], None] | None = None) -> RunResult:
    """Time one training step per mode on this device (one process).

    Parameters
    ----------
    tables, overrides : the config (as for ``seedfast train``)
    modes : subset of :data:`seedfast.train.budget.MODES`
    batch : samples per step (default: the config's ``train.micro_batch``, else ``global_batch``)
    device : {"cpu", "cuda"}
    budget_ms : timing budget per mode (at least 5 steps after warm-up)

    Returns
    -------
    RunResult with one ``op="train"`` measurement per mode.
    """
    from seedfast.train.inputs import MicroBatch
    from seedfast.train.loop import train_step
    from seedfast.train.run import build_run

    info = D.setup(device)
    env = collect()
    name = torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else env.cpu
    result = RunResult(date=_dt.date.today().isoformat(), device=name, quick=False, env=env.as_dict())
    result.notes.append("seedfast budget --measure: training steps on synthetic batches (no data loading, "
                        "stage-2 targets given)")
    for mode in modes:
        stage, kind = int(mode[5]), mode.split("-", 1)[1]
        kind = None if kind == "online" else kind
        base = build_config(stage, tables, overrides)
        b = batch or base.train.micro_batch or base.train.global_batch
        cfg = build_config(stage, tables, [*overrides, f"train.global_batch={b}", "train.micro_batch=0"])
        tc = model_config("tokenizer", cfg.tokenizer)
        dtype = compute_dtype(cfg, info.device)
        case = Case("train", mode, {"batch": b, "config": cfg.tokenizer.preset,
                                    "dtype": "bf16" if dtype == torch.bfloat16 else "fp32",
                                    "text_length": cfg.data.text_length},
                    flops=mode_flops(tc, mode, cfg.data.text_length) * b, size=b)

        def build(case: Case, dev: torch.device, cfg: Any = cfg, kind: str | None = kind) -> Callable[[], object]:
            run = build_run(cfg, info, source=SyntheticSource(model_config("tokenizer", cfg.tokenizer), kind),
                            features_kind=kind)
            batches: list[MicroBatch] = [run.build_inputs(raw) for raw in run.read(0)]

            def step() -> object:
                return train_step(run, 0, batches)

            return step

        if progress:
            progress(f"{mode} batch {b}")
        result.measurements.append(measure(case, Impl("seedfast", build, ours=True), info.device,
                                           budget_ms=budget_ms))
    return result


def from_results(path: str | Path) -> list[budget.Measurement]:
    """The budget's measurements (:class:`seedfast.train.budget.Measurement`) in a results JSON:
    its op ``"train"`` ones, as :func:`measure_modes` writes them.

    Each has ``mode`` one of :data:`~seedfast.train.budget.MODES`, ``case`` with ``batch`` and
    ``config`` (``"official"``/``"tiny"``), and ``median_ms`` for one step of ``batch`` samples on
    one GPU.

    Raises
    ------
    ValueError
        Not a results file, or no usable ``train`` measurement in it.
    """
    result = load_result(path)
    out = []
    for m in result.measurements:
        if m.op != "train" or m.mode not in MODES or m.error or not m.median_ms:
            continue
        preset = m.case.get("config", "official")
        flops = mode_flops(tokenizer_config(preset), m.mode, int(m.case.get("text_length", TEXT_LENGTH)))
        out.append(budget.Measurement(m.mode, m.median_ms / 1e3 / int(m.case["batch"]), flops, result.device,
                                      f"{path}", preset))
    if not out:
        raise ValueError(f"{path}: no 'train' measurement (modes {', '.join(MODES)}) in this results file")
    return out
