"""What a run tells its user: a tqdm progress bar and one JSON object per step in
``DIR/log.jsonl``, both on rank 0 only.

Records: ``{"event": "start", ...}`` (device, GPU note, world size, FLOPs per step, peak, the
resolved config) when a run starts or resumes; then per step ``step``, ``loss`` and its terms,
``lr``, ``grad_norm``, ``step_time_s``, ``samples_per_s``, ``tokens_per_s``, ``tflops``, ``mfu``
(null without a known peak), ``gpu_util``, ``gpu_mem_gib``, ``peak_mem_gib`` (null without a
GPU), ``epoch``, and in stage 2 ``codebook_used``, ``codebook_perplexity``; finally
``{"event": "checkpoint" | "stop" | "final", ...}``.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

LOG_FILE = "log.jsonl"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLog:
    """Appends JSONL records and drives the progress bar (no-ops off rank 0).

    Parameters
    ----------
    out : run folder
    enabled : rank 0
    start, total : the bar's range in steps
    progress : show the bar
    """

    def __init__(self, out: Path, *, enabled: bool, start: int, total: int, progress: bool) -> None:
        self.enabled = enabled
        self._fh = None
        self._bar = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / LOG_FILE
        self._fh = open(self.path, "a", encoding="utf-8")
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=start, desc="train", unit="step", file=sys.stderr,
                             dynamic_ncols=True)

    def record(self, **fields: Any) -> None:
        """One JSON line, flushed (so a killed run keeps everything up to its last step)."""
        if self._fh is not None:
            self._fh.write(json.dumps({k: _clean(v) for k, v in fields.items()}) + "\n")
            self._fh.flush()

    def step(self, fields: dict[str, Any]) -> None:
        """A step's record and the bar's advance."""
        self.record(**fields)
        if self._bar is not None:
            shown = {"loss": f"{fields['loss']:.4f}", "lr": f"{fields['lr']:.2e}"}
            if fields.get("mfu") is not None:
                shown["mfu"] = f"{100 * fields['mfu']:.1f}%"
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(1)

    def message(self, text: str) -> None:
        """A line for the user (stderr, above the bar)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._fh is not None:
            self._fh.close()
