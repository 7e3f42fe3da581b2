"""The one learning-rate schedule, pinned to the exact rates each of its callers has always used.

The values are what the train loop and the pixel de-tokenizer computed before they shared
``warmup_cosine``; steps where another rounding order would change the last bit are included, so
these compare with ``==``."""
from __future__ import annotations

import pytest

from seedfast.train.config import OptimConfig
from seedfast.train.loop import learning_rate
from seedfast.train.schedule import warmup_cosine

# Stage-2-like settings: warm-up 1e-6 → 1e-4 over 2000 steps, cosine to 1e-5 at step 20000.
LOOP = OptimConfig(lr=1e-4, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=2000, total_steps=20_000)
LOOP_RATES = {
    0: 1e-06,
    1: 1.0494999999999999e-06,
    15: 1.7425e-06,
    1999: 9.995050000000001e-05,
    2000: 0.0001,
    2006: 9.999997532599126e-05,
    20_000: 1e-05,
    25_000: 1e-05,  # held at the floor past total_steps
}

# The demo's de-tokenizer: 2000 steps, peak 2e-3, 100 warm-up steps, floor 0.1 of the peak.
PIXEL_RATES = {
    0: 2e-05,
    1: 4e-05,
    8: 0.00018,
    10: 0.00021999999999999998,
    99: 0.002,
    100: 0.002,
    101: 0.0019999987697171834,
    1999: 0.00020000123028281682,
}


@pytest.mark.parametrize("step", sorted(LOOP_RATES))
def test_train_loop_rates(step):
    assert learning_rate(LOOP, step) == LOOP_RATES[step]


@pytest.mark.parametrize("step", sorted(PIXEL_RATES))
def test_pixel_detokenizer_rates(step):
    rate = warmup_cosine(step, 2000, 100, 2e-3, end_ratio=0.1, warmup_offset=1)
    assert rate == PIXEL_RATES[step]


def test_the_floor_forms_round_differently():
    # Why end_ratio exists: the absolute floor gives the same schedule but other last bits.
    by_ratio = warmup_cosine(101, 2000, 100, 2e-3, end_ratio=0.1, warmup_offset=1)
    by_rate = warmup_cosine(101, 2000, 100, 2e-3, end=2e-3 * 0.1, warmup_offset=1)
    assert by_ratio != by_rate and by_ratio == pytest.approx(by_rate, rel=1e-12)


def test_no_warmup_starts_at_the_peak():
    assert warmup_cosine(0, 10, 0, 1.0, end=0.5) == 1.0
    assert warmup_cosine(10, 10, 0, 1.0, end=0.5) == 0.5
