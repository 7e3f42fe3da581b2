"""clip_preprocess: spec §2's resize and CLIP normalisation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from seedfast.models.preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess

MEAN = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def test_mean_and_std_are_applied_per_channel():
    images = torch.empty(2, 3, 64, 48, dtype=torch.uint8)
    images[:, 0], images[:, 1], images[:, 2] = 0, 128, 255
    out = clip_preprocess(images)
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.float32
    values = torch.tensor([0.0, 128 / 255, 1.0])
    expected = (values - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(out.amin((0, 2, 3)), expected, atol=1e-5)
    assert torch.allclose(out.amax((0, 2, 3)), expected, atol=1e-5)


def test_uint8_and_unit_float_agree_and_224_is_not_resampled():
    images = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    out = clip_preprocess(images)
    assert torch.allclose(out, (images.float() / 255 - MEAN) / STD, atol=1e-6)
    assert torch.allclose(clip_preprocess(images.double() / 255), out, atol=1e-5)
    assert torch.allclose(clip_preprocess(images.half() / 255), out, atol=2e-2)


@pytest.mark.parametrize("source,size", [(448, 224), (64, 224), (300, 96)])
def test_resize_matches_pil_bilinear(source, size):
    # Antialiased bilinear is what PIL (and torchvision's Resize) do; they agree to a level.
    generator = torch.Generator().manual_seed(source)
    images = torch.randint(0, 256, (1, 3, source, source), dtype=torch.uint8, generator=generator)
    pil = Image.fromarray(images[0].permute(1, 2, 0).numpy()).resize((size, size), Image.Resampling.BILINEAR)
    expected = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    out = clip_preprocess(images, size=size) * STD + MEAN
    assert out.shape == (1, 3, size, size)
    assert (out - expected).abs().max().item() <= 1.5 / 255


def test_empty_batch():
    assert clip_preprocess(torch.empty(0, 3, 10, 10, dtype=torch.uint8)).shape == (0, 3, 224, 224)


def test_bad_inputs():
    with pytest.raises(TypeError, match="torch.Tensor"):
        clip_preprocess(np.zeros((1, 3, 8, 8)))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        clip_preprocess(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        clip_preprocess(torch.zeros(1, 4, 8, 8))
    with pytest.raises(TypeError, match="uint8 or floating"):
        clip_preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="size must be positive"):
        clip_preprocess(torch.zeros(1, 3, 8, 8), size=0)


def test_old_data_path_warns_and_returns_the_same_function():
    import seedfast.data

    with pytest.warns(DeprecationWarning, match="seedfast.data.clip_preprocess moved to seedfast.models.preprocess"):
        assert seedfast.data.clip_preprocess is clip_preprocess
    with pytest.warns(DeprecationWarning):
        assert seedfast.data.CLIP_MEAN == CLIP_MEAN
