"""The attribute checker: exact on clean renders, robust on degraded ones, and the accuracy
function's matching rules."""
from __future__ import annotations

import pytest
import torch

from seedfast.data import (
    ObjectAttributes,
    ProceduralConfig,
    ProceduralDataset,
    Scene,
    accuracy_breakdown,
    attribute_accuracy,
    attribute_breakdown,
    caption_accuracy,
    checker_accuracy,
    degrade_images,
    image_accuracy,
    make_caption,
    read_scene,
    read_scenes,
)
from seedfast.data.render import PlacedObject, SceneLayout, render_layouts

RED_CIRCLE = ObjectAttributes("circle", "red", "small", "top")
BLUE_SQUARE = ObjectAttributes("square", "blue", "large", "bottom")


@pytest.mark.parametrize("image_size", [64, 32])
def test_checker_reads_clean_renders(image_size):
    # Measured: 1.0 at both sizes on 1000 renders.
    assert checker_accuracy(400, seed=3, image_size=image_size) >= 0.98


def test_checker_reads_one_object_scenes_exactly():
    batch = ProceduralDataset(ProceduralConfig(max_objects=1, heldout_size=200), "heldout").batch(range(200))
    assert read_scenes(batch.images, max_objects=1) == batch.truths


def test_checker_is_robust_to_blur_noise_and_colour_shift():
    # Measured at 64 px on 1000 renders: 1.0 (σ 1 px, noise 0.05, shift 0.05) and 0.997
    # (σ 2 px, noise 0.1, shift 0.08). A checker that ignores blur when classifying shapes
    # scored 0.949 on the second; one that misreads any attribute family scores ≤ 0.9.
    assert checker_accuracy(200, seed=5, blur_sigma=1.0, noise_std=0.05, colour_shift=0.05) >= 0.98
    assert checker_accuracy(300, seed=6, blur_sigma=2.0, noise_std=0.1, colour_shift=0.08) >= 0.97


def test_checker_sees_nothing_in_blank_or_noisy_images():
    blank = torch.full((4, 3, 64, 64), 255, dtype=torch.uint8)
    assert read_scenes(blank) == [Scene(())] * 4
    noisy = degrade_images(blank, blur_sigma=0.0, noise_std=0.1, colour_shift=0.1, seed=2)
    assert read_scenes(noisy) == [Scene(())] * 4
    grey = torch.full((3, 64, 64), 0.5)
    assert read_scene(grey) == Scene(())


def test_checker_output_order_float_input_and_max_objects():
    layout = SceneLayout((
        PlacedObject(BLUE_SQUARE, x=0.5, y=0.75, radius=0.15),
        PlacedObject(RED_CIRCLE, x=0.5, y=0.25, radius=0.09),
    ))
    image = render_layouts([layout], 64)[0]
    scene = read_scene(image)
    assert scene == Scene((RED_CIRCLE, BLUE_SQUARE))
    assert make_caption(scene) == "a small red circle above a large blue square"
    assert read_scene(image.float() / 255) == scene
    largest = read_scene(image, max_objects=1)
    assert largest == Scene((BLUE_SQUARE,))


def test_checker_rejects_bad_inputs():
    with pytest.raises(TypeError, match="torch.Tensor"):
        read_scene([[0]])
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        read_scene(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="H == W"):
        read_scene(torch.zeros(3, 8, 16, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8 or floating"):
        read_scenes(torch.zeros(1, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="max_objects"):
        read_scene(torch.zeros(3, 8, 8), max_objects=3)
    with pytest.raises(ValueError, match="non-negative"):
        degrade_images(torch.zeros(1, 3, 8, 8), blur_sigma=-1)
    with pytest.raises(ValueError, match="n must be positive"):
        checker_accuracy(0)


def test_degrade_images_is_seeded_and_changes_pixels():
    images = ProceduralDataset().batch(range(4)).images
    a = degrade_images(images, seed=1)
    assert a.dtype == torch.uint8 and a.shape == images.shape
    assert torch.equal(a, degrade_images(images, seed=1))
    assert not torch.equal(a, degrade_images(images, seed=2))
    assert torch.equal(degrade_images(images, blur_sigma=0, noise_std=0, colour_shift=0), images)
    blurred = degrade_images(images, blur_sigma=2.0, noise_std=0, colour_shift=0).float()
    # A blur keeps the mean (edges are replicated, the background is uniform near them).
    assert blurred.mean().item() == pytest.approx(images.float().mean().item(), abs=0.5)


def test_accuracy_ignores_order_and_matches_best_pairing():
    truth = Scene((RED_CIRCLE, BLUE_SQUARE))
    assert attribute_accuracy(Scene((BLUE_SQUARE, RED_CIRCLE)), truth) == 1.0
    # Pairing by list order would score 1 + 2 of 8; the best pairing scores 3 + 2.
    blue_square_on_top = ObjectAttributes("square", "blue", "large", "top")
    large_red_circle_below = ObjectAttributes("circle", "red", "large", "bottom")
    for predicted in [(blue_square_on_top, large_red_circle_below), (large_red_circle_below, blue_square_on_top)]:
        assert attribute_accuracy(Scene(predicted), truth) == pytest.approx(5 / 8)


def test_accuracy_counts_missing_and_extra_objects_as_wrong():
    truth = Scene((RED_CIRCLE, BLUE_SQUARE))
    assert attribute_accuracy(Scene((BLUE_SQUARE,)), truth) == 0.5
    assert attribute_accuracy(Scene(()), truth) == 0.0
    assert attribute_accuracy(None, truth) == 0.0
    assert attribute_accuracy(truth, Scene((RED_CIRCLE,))) == 0.5
    wrong_size = ObjectAttributes("circle", "red", "large", "top")
    assert attribute_accuracy(Scene((wrong_size,)), Scene((RED_CIRCLE,))) == 0.75
    assert attribute_accuracy(Scene(()), Scene(())) == 1.0


def test_image_and_caption_accuracy():
    batch = ProceduralDataset(ProceduralConfig(heldout_size=20), "heldout").batch(range(20))
    assert image_accuracy(batch.images, batch.truths) == 1.0
    flipped = batch.images.flip(-1)
    assert image_accuracy(flipped, batch.truths) < 1.0
    assert image_accuracy(batch.images[:2], [batch.truths[0], None]) == 0.5
    assert caption_accuracy(batch.captions, batch.truths) == 1.0
    wrong = [batch.captions[0].replace("a ", "one ", 1)] + batch.captions[1:]
    assert caption_accuracy(wrong, batch.truths) == pytest.approx(19 / 20)
    with pytest.raises(ValueError, match="one truth per image"):
        image_accuracy(batch.images, batch.truths[:3])
    with pytest.raises(ValueError, match="one truth per caption"):
        caption_accuracy([], [])


def test_attribute_breakdown_per_attribute_and_relation():
    red = ObjectAttributes("circle", "red", "small", "left")
    blue = ObjectAttributes("square", "blue", "large", "right")
    truth = Scene((red, blue))
    assert attribute_breakdown(truth, truth) == {"shape": 1.0, "colour": 1.0, "size": 1.0, "position": 1.0,
                                                 "relation": 1.0}
    # Listed the other way round: same objects, same relation.
    assert attribute_breakdown(Scene((blue, red)), truth)["relation"] == 1.0
    # Positions swapped: the relation flips, each object keeps shape, colour and size.
    swapped = Scene((ObjectAttributes("circle", "red", "small", "right"), ObjectAttributes("square", "blue", "large",
                                                                                          "left")))
    got = attribute_breakdown(swapped, truth)
    assert got == {"shape": 1.0, "colour": 1.0, "size": 1.0, "position": 0.0, "relation": 0.0}
    # One object found: half of every attribute, no relation.
    assert attribute_breakdown(Scene((red,)), truth) == {"shape": 0.5, "colour": 0.5, "size": 0.5,
                                                         "position": 0.5, "relation": 0.0}
    assert attribute_breakdown(None, truth)["shape"] == 0.0
    one = attribute_breakdown(Scene((ObjectAttributes("square", "red", "small", "left"), blue)), Scene((red,)))
    assert one == {"shape": 0.0, "colour": 1.0, "size": 1.0, "position": 1.0}  # extra objects are not counted here


def test_accuracy_breakdown_splits_by_object_count():
    red = ObjectAttributes("circle", "red", "small", "middle")
    pair = Scene((ObjectAttributes("circle", "red", "small", "top"), ObjectAttributes("square", "blue", "large",
                                                                                      "bottom")))
    truths = [Scene((red,)), pair, pair, None]
    predicted = [Scene((red,)), pair, Scene(pair.objects[:1]), Scene((red,))]
    got = accuracy_breakdown(predicted, truths)
    assert got["one_object"] == 1.0 and got["two_objects"] == pytest.approx((1.0 + 0.5) / 2)
    assert got["overall"] == pytest.approx((1.0 + 1.0 + 0.5 + 0.0) / 4)
    assert got["relation"] == 0.5 and got["count"] == 4.0
    assert got["shape"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)  # the unparsed prompt counts as 0
    # With the relation as a ninth item: 9/9 for the exact pair, (4 + 0) / 9 for the half-found one.
    assert got["two_objects_with_relation"] == pytest.approx((1.0 + 4 / 9) / 2)
    swapped = Scene((ObjectAttributes("circle", "red", "small", "bottom"), ObjectAttributes("square", "blue", "large",
                                                                                          "top")))
    flipped = accuracy_breakdown([swapped], [pair])  # 6 of 8 attributes, relation wrong
    assert flipped["two_objects"] == 0.75 and flipped["two_objects_with_relation"] == pytest.approx(6 / 9)
    assert accuracy_breakdown([None], [pair])["two_objects_with_relation"] == 0.0
    one_only = accuracy_breakdown([Scene((red,))], [Scene((red,))])
    assert "relation" not in one_only and "two_objects_with_relation" not in one_only
    with pytest.raises(ValueError, match="one truth per prediction"):
        accuracy_breakdown([], [])
