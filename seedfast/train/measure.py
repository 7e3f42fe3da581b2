"""Measure training throughput on this device: real training steps of the loop
(:func:`seedfast.train.loop.train_step`) on synthetic batches, timed by the benchmark harness,
one result per budget mode, written as a results JSON that ``seedfast budget --results`` reads.

Synthetic batches: random images (or random features of the right shape), a fixed caption and
random stage-2 targets, so neither data loading nor the CLIP-H target model is timed.
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from seedfast.benchmarks.harness import Case, Impl, RunResult, measure
from seedfast.env import collect
from seedfast.models.tokenizer_config import NUM_QUERY_TOKENS
from seedfast.train import distributed as D
from seedfast.train.budget import MODES, mode_flops
from seedfast.train.config import build_config, model_config
from seedfast.train.data import RawBatch

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
    from seedfast.train.run import build_run, compute_dtype

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
