"""The procedural dataset: determinism per (seed, split, index), disjoint splits, sharding,
exact captions, and renders that show what the caption says."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from seedfast.data import (
    PALETTE,
    ProceduralConfig,
    ProceduralDataset,
    iter_batches,
    make_caption,
    parse_caption,
    render_layouts,
    sample_layout,
)
from seedfast.data.render import HALF_EXTENT, PlacedObject, SceneLayout
from seedfast.data.scene import ObjectAttributes


def _digest(image: torch.Tensor) -> str:
    return hashlib.sha1(image.numpy().tobytes()).hexdigest()


def test_sample_is_a_function_of_seed_split_and_index():
    config = ProceduralConfig(train_size=10**12)
    first, second = ProceduralDataset(config), ProceduralDataset(config)
    for index in (0, 1, 977, 10**11 + 3):
        a, b = first[index], second[index]
        assert torch.equal(a.image, b.image) and a.caption == b.caption and a.truth == b.truth
        assert a.key == f"procedural/train/{index}"
    # Made directly, with no earlier samples drawn; batch, item and iteration agree.
    batch = first.batch([5, 3, 5])
    assert torch.equal(batch.images[0], first[5].image) and torch.equal(batch.images[1], first[3].image)
    assert batch.captions[0] == batch.captions[2]
    small = ProceduralDataset(ProceduralConfig(train_size=70))
    iterated = list(small)
    assert len(iterated) == 70
    assert all(torch.equal(s.image, small[i].image) and s.caption == small[i].caption for i, s in enumerate(iterated))


def test_seeds_give_different_data_and_sizes_draw_the_same_scenes():
    base = ProceduralDataset(ProceduralConfig(seed=0)).batch(range(64))
    other = ProceduralDataset(ProceduralConfig(seed=1)).batch(range(64))
    assert sum(a != b for a, b in zip(base.captions, other.captions)) > 32
    half = ProceduralDataset(ProceduralConfig(seed=0, image_size=32)).batch(range(64))
    assert half.captions == base.captions and half.images.shape == (64, 3, 32, 32)


def test_heldout_never_appears_in_train():
    config = ProceduralConfig(heldout_size=1000)
    train = {_digest(image) for image in ProceduralDataset(config, "train").batch(range(2000)).images}
    heldout = ProceduralDataset(config, "heldout")
    held = [_digest(image) for image in heldout.batch(range(1000)).images]
    assert len(train) == 2000 and len(set(held)) == 1000
    assert not train & set(held)
    layouts = {sample_layout(config, "train", i) for i in range(1000)}
    assert not layouts & {heldout.layout(i) for i in range(1000)}
    # Both splits are drawn from the same distribution: every caption form shows up in each.
    assert {len(s.objects) for s in heldout.batch(range(100)).truths} == {1, 2}


def test_captions_match_truth_and_parse_back():
    batch = ProceduralDataset(ProceduralConfig(heldout_size=2000), "heldout").batch(range(2000))
    for caption, truth in zip(batch.captions, batch.truths):
        assert make_caption(truth) == caption
        assert parse_caption(caption) == truth
        if len(truth.objects) == 2:
            assert truth.objects[0].colour != truth.objects[1].colour


def test_config_subsets_are_respected():
    config = ProceduralConfig(max_objects=1, shapes=("circle",), colours=("red", "blue"), sizes=("large",))
    truths = ProceduralDataset(config).batch(range(200)).truths
    objects = [obj for truth in truths for obj in truth.objects]
    assert all(len(truth.objects) == 1 for truth in truths)
    assert {obj.shape for obj in objects} == {"circle"} and {obj.size for obj in objects} == {"large"}
    assert {obj.colour for obj in objects} == {"red", "blue"}
    assert {obj.position for obj in objects} == {"middle", "left", "right", "top", "bottom"}
    pairs = ProceduralDataset(ProceduralConfig(min_objects=2)).batch(range(50)).truths
    assert all(len(truth.objects) == 2 for truth in pairs)


@pytest.mark.parametrize("kwargs,message", [
    (dict(image_size=8), "image_size"),
    (dict(max_objects=3), "max_objects"),
    (dict(min_objects=2, max_objects=1), "min_objects"),
    (dict(seed=-1), "seed"),
    (dict(train_size=-5), "split sizes"),
    (dict(shapes=()), "shapes"),
    (dict(shapes=("circle", "circle")), "shapes"),
    (dict(colours=("red", "purple")), "colours"),
    (dict(colours=("red",)), "two colours"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProceduralConfig(**kwargs)


def test_bad_split_rank_and_index():
    with pytest.raises(ValueError, match="split must be one of"):
        ProceduralDataset(split="test")
    with pytest.raises(ValueError, match="rank must be in"):
        ProceduralDataset(rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        ProceduralDataset(world_size=0)
    dataset = ProceduralDataset(ProceduralConfig(train_size=10))
    with pytest.raises(IndexError, match="out of range"):
        dataset[10]
    with pytest.raises(ValueError, match="index must be non-negative"):
        sample_layout(dataset.config, "train", -1)


@pytest.mark.parametrize("world_size", [1, 3, 4])
def test_shards_are_disjoint_and_complete(world_size):
    config = ProceduralConfig(heldout_size=10)
    shards = [ProceduralDataset(config, "heldout", rank=r, world_size=world_size) for r in range(world_size)]
    keys = [key for shard in shards for key in shard.batch(range(len(shard))).keys]
    assert sorted(keys) == sorted(f"procedural/heldout/{i}" for i in range(10))
    reference = ProceduralDataset(config, "heldout")
    assert torch.equal(shards[-1][0].image, reference[world_size - 1].image)


def test_iter_batches_over_map_style_and_streams():
    dataset = ProceduralDataset(ProceduralConfig(train_size=10))
    sizes = [len(b) for b in iter_batches(dataset, 4)]
    assert sizes == [4, 4, 2]
    assert [len(b) for b in iter_batches(dataset, 4, drop_last=True)] == [4, 4]
    streamed = list(iter_batches(iter(list(dataset)), 4))
    assert [len(b) for b in streamed] == [4, 4, 2]
    assert torch.equal(torch.cat([b.images for b in streamed]), dataset.batch(range(10)).images)
    repeated = iter_batches(dataset, 4, drop_last=True, repeat=True)
    keys = [next(repeated).keys for _ in range(3)]
    assert keys[2] == keys[0]
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_batches(dataset, 0))
    with pytest.raises(ValueError, match="no full batch"):
        next(iter_batches(dataset, 16, drop_last=True, repeat=True))


def test_render_geometry_and_colours():
    size = 64
    objects = (
        PlacedObject(ObjectAttributes("circle", "red", "large", "left"), x=0.25, y=0.5, radius=0.15),
        PlacedObject(ObjectAttributes("square", "blue", "small", "right"), x=0.75, y=0.5, radius=0.09),
    )
    triangle = (PlacedObject(ObjectAttributes("triangle", "yellow", "large", "middle"), x=0.5, y=0.5, radius=0.15),)
    images = render_layouts([SceneLayout(objects), SceneLayout(triangle)], size)
    assert images.shape == (2, 3, size, size) and images.dtype == torch.uint8
    pixels = images.permute(0, 2, 3, 1).numpy().astype(np.int64)
    expected = {name: np.rint(np.array(rgb) * 255) for name, rgb in PALETTE.items()}
    assert (pixels[:, 0, 0] == 255).all() and (pixels[:, -1, -1] == 255).all()
    assert (pixels[0, 32, 16] == expected["red"]).all() and (pixels[0, 32, 48] == expected["blue"]).all()
    assert (pixels[1, 32, 32] == expected["yellow"]).all()
    # Coverage sums to the equal-area circle's area; a triangle's apex is at the top of its box.
    red_coverage = (255 - pixels[0, :, :32, 1]).sum() / (255 - expected["red"][1])
    assert red_coverage == pytest.approx(math.pi * (0.15 * size) ** 2, rel=0.01)
    half = HALF_EXTENT["triangle"] * 0.15 * size
    visible = pixels[1, :, :, 2] < 250
    yellow_rows = np.flatnonzero(visible.any(1))
    assert yellow_rows[0] == pytest.approx(32 - half, abs=1) and yellow_rows[-1] == pytest.approx(32 + half, abs=1)
    assert visible[yellow_rows[0]].sum() <= 3 and visible[yellow_rows[-1]].sum() >= 2 * half - 1
    with pytest.raises(ValueError, match="at least 8"):
        render_layouts([SceneLayout(objects)], 4)
    assert render_layouts([], 16).shape == (0, 3, 16, 16)
