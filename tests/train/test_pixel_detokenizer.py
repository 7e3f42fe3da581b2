"""Training the embedded pixel de-tokenizer (seedfast.train.pixel_detokenizer) on a flat-colour task."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from seedfast.models.pixel_detokenizer import PixelDetokenizer  # noqa: E402
from seedfast.train.pixel_detokenizer import make_optimizer, train_pixel_detokenizer, train_step  # noqa: E402
from tests.models.detokenizer_helpers import (  # noqa: E402
    COLOURS,
    PIXEL_E,
    colour_task,
    small_config,
    trained_colour_model,
)


def test_pixel_training_lowers_the_loss_and_follows_the_condition():
    model, codes, losses = trained_colour_model()
    assert len(losses) == 100 and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, f"loss {first:.3f} → {last:.3f}"
    for guidance in (1.0, 2.0):
        images = model.decode(codes, seed=0, guidance_scale=guidance)
        assert images.shape == (len(COLOURS), 3, 8, 8) and images.dtype == torch.float32
        assert images.min() >= 0 and images.max() <= 1
        error = (images.mean(dim=(2, 3)) - COLOURS).abs()
        assert error.max() < 0.35, f"guidance {guidance}: mean colours off by {error}"


def test_pixel_train_step_and_batches():
    model = PixelDetokenizer(small_config(cond_dropout=0.5), device="cpu", seed=1)
    optimizer = make_optimizer(model)
    _, batches = colour_task(steps=2, batch=4)
    loss = train_step(model, optimizer, *batches[0])
    assert loss.shape == () and loss.dtype == torch.float32 and not loss.requires_grad
    assert not model.unet.training
    # A list is passed over again; an iterator that runs out is an error.
    assert len(train_pixel_detokenizer(model, batches, steps=5, progress=True, optimizer=optimizer)) == 5
    with pytest.raises(ValueError, match="ran out after 2 of 5"):
        train_pixel_detokenizer(model, iter(batches), steps=5, progress=False)
    with pytest.raises(ValueError, match="ran out after 0 of 1"):
        train_pixel_detokenizer(model, [], steps=1, progress=False)


def test_training_is_reproducible_per_seed():
    _, batches = colour_task(steps=3, batch=4)
    runs = []
    for _ in range(2):
        model = PixelDetokenizer(small_config(), device="cpu", seed=1)
        runs.append(train_pixel_detokenizer(model, batches, steps=3, seed=7, progress=False))
    assert runs[0] == runs[1]


def test_training_errors():
    model = PixelDetokenizer(small_config(), device="cpu")
    optimizer = make_optimizer(model)
    with pytest.raises(ValueError, match=r"images must have shape \[B, 3, 8, 8\] with B = 2"):
        train_step(model, optimizer, torch.zeros(2, PIXEL_E), torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"images must have shape"):
        train_step(model, optimizer, torch.zeros(2, PIXEL_E), torch.zeros(3, 3, 8, 8))
    with pytest.raises(TypeError, match="images must have dtype"):
        train_step(model, optimizer, torch.zeros(2, PIXEL_E), torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="steps must be"):
        train_pixel_detokenizer(model, [], steps=0)
    with pytest.raises(ValueError, match="warmup_steps"):
        train_pixel_detokenizer(model, [], steps=4, warmup_steps=5)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        train_pixel_detokenizer(model, [], steps=4, min_lr_ratio=1.5)
