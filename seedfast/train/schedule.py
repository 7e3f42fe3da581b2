"""The learning-rate schedule every seedfast training loop uses: linear warm-up, then cosine decay."""
from __future__ import annotations

import math


def warmup_cosine(
    step: int,
    total_steps: int,
    warmup_steps: int,
    peak: float,
    *,
    start: float = 0.0,
    end: float = 0.0,
    end_ratio: float | None = None,
    warmup_offset: int = 0,
) -> float:
    """The learning rate of 0-based ``step``: linear ``start → peak``, then cosine ``peak → end``.

    Warm-up steps (``step < warmup_steps``) run at ``start + (peak - start) · (step +
    warmup_offset) / warmup_steps``; after them the rate follows half a cosine from ``peak``
    down to the floor, reached at ``total_steps`` and held beyond it.

    Parameters
    ----------
    step : int >= 0
    total_steps : int
        Where the cosine reaches the floor.
    warmup_steps : int >= 0
        0 starts the cosine at step 0.
    peak : float
        The rate at the end of the warm-up.
    start : float
        The warm-up's starting rate.
    end : float
        The floor, as a rate (ignored when ``end_ratio`` is given).
    end_ratio : float, optional
        The floor as a fraction of ``peak``, computed as ``peak · (r + (1 - r) · c)`` rather
        than ``end + (peak - end) · c``. The two round differently in the last bit; the train
        loop uses ``end`` and the pixel de-tokenizer ``end_ratio``, so each keeps the exact
        rates (and so the exact weights) its runs have always had.
    warmup_offset : int
        0 (the train loop): step 0 runs at ``start`` and the peak comes at the first step after
        the warm-up. 1 (the pixel de-tokenizer): the last warm-up step already reaches it.

    Returns
    -------
    float
    """
    if step < warmup_steps:
        return start + (peak - start) * (step + warmup_offset) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    if end_ratio is None:
        return end + (peak - end) * cosine
    return peak * (end_ratio + (1 - end_ratio) * cosine)
