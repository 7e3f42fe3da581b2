"""Reading a scene's attributes back off pixels, deterministically, and scoring them.

:func:`read_scene` is built to score blurry, noisy, slightly off-colour images from small
generative models, not only clean renders. Every pixel's chroma vector
``(2R − G − B, √3(G − B))`` is taken relative to the image's median one (the background, as
objects cover well under half of an image), which undoes a global colour shift. Mixing a
palette colour with the background scales this vector by the pixel's coverage and keeps its
direction, so projecting it on each palette colour's vector estimates per-colour coverage,
linear in the pixel and unbiased under noise, through any blur.

1. **Detect.** On a lightly smoothed copy (``DETECTION_BLUR``), a pixel belongs to the palette
   colour whose direction (hue) is nearest, if that colour's coverage there is at least
   ``DETECTION_COVERAGE``. Per colour, the largest 4-connected component is the object
   (scenes never hold two objects of one colour); specks and fragments are dropped, and so
   is a component smaller than ``MIN_AREA_FRACTION`` of the smallest object's area. The
   ``max_objects`` largest objects remain.
2. **Measure.** Within the component's box widened by ``REGION_MARGIN``, with other colours'
   pixels zeroed, the sum of coverage is the object's area and its coverage-weighted mean the
   centroid (blur moves coverage about but keeps both). Size: area against the geometric mean
   of the small and large areas. Shape: the equal-area circle, square or triangle on that
   centroid which, blurred by one of ``TEMPLATE_BLURS``, is nearest the coverage in squared
   error. Position, from the chosen shape's box centre: for one object, its region (the middle
   within ``MIDDLE_HALF_WIDTH`` of the centre on both axes, else the side it lies furthest
   towards); for two, the axis along which they lie apart most decides (the upper one "top"
   and the lower "bottom", or "left" and "right").
"""
from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from seedfast.data.procedural import RADIUS_JITTER, ProceduralConfig, ProceduralDataset
from seedfast.data.render import HALF_EXTENT, POSITION_CENTRES, SIZE_RADIUS, shape_coverage
from seedfast.data.samples import iter_batches
from seedfast.data.scene import ATTRIBUTES, COLOURS, PALETTE, SHAPES, ObjectAttributes, Scene, parse_caption

# Below half coverage, so that a small object blurred until its peak is under 0.5 is still found.
DETECTION_COVERAGE = 0.4
# Lengths are fractions of the image side.
DETECTION_BLUR = 0.01
REGION_MARGIN = 0.1
TEMPLATE_BLURS = (0.0, 0.015, 0.03, 0.045, 0.06)
MIN_AREA_FRACTION = 0.3
# Half-way between the middle and a side position.
MIDDLE_HALF_WIDTH = abs(POSITION_CENTRES["left"][0] - POSITION_CENTRES["middle"][0]) / 2
# Small and large areas differ by (0.15 / 0.09)² ≈ 2.8×; their geometric mean splits them.
LARGE_AREA_FRACTION = math.pi * SIZE_RADIUS["small"] * SIZE_RADIUS["large"]
_SMALLEST_AREA_FRACTION = math.pi * (SIZE_RADIUS["small"] * (1 - RADIUS_JITTER)) ** 2
_CHECK_BATCH = 256


def _chroma_vector(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    red, green, blue = rgb[0], rgb[1], rgb[2]
    return 2 * red - green - blue, math.sqrt(3.0) * (green - blue)


_PALETTE_A, _PALETTE_B = _chroma_vector(np.array([PALETTE[c] for c in COLOURS], dtype=np.float32).T)
_PALETTE_NORM = np.hypot(_PALETTE_A, _PALETTE_B)


def read_scene(image: torch.Tensor, *, max_objects: int = 2) -> Scene:
    """The objects the checker sees in one image (see the module docstring for how).

    Parameters
    ----------
    image : Tensor ``[3, H, W]`` with H == W, uint8 (0–255) or floating (0–1), any device
    max_objects : 1 or 2
        Keep this many of the largest objects.

    Returns
    -------
    Scene
        Zero, one or two objects; two are ordered top before bottom or left before right, so
        a two-object result always has a caption.

    Raises
    ------
    TypeError, ValueError
        Not a tensor, wrong shape or dtype, or ``max_objects`` not 1 or 2.
    """
    if max_objects not in (1, 2):
        raise ValueError(f"read_scene: max_objects must be 1 or 2, got {max_objects}")
    rgb = _as_unit_float(image, "read_scene", "image", ndim=3)
    size = rgb.shape[-1]
    coverage, masks = _colour_coverage(rgb)
    found = []
    for index, colour in enumerate(COLOURS):
        component = _largest_component(masks[index])
        area = int(component.sum())
        if area >= MIN_AREA_FRACTION * _SMALLEST_AREA_FRACTION * size * size:
            others = masks.any(0) & ~masks[index]
            found.append((area, colour, component, np.where(others, 0.0, coverage[index])))
    found.sort(key=lambda item: -item[0])
    measured = [_measure(colour, component, soft) for _, colour, component, soft in found[:max_objects]]
    if len(measured) == 1:
        (only,) = measured
        return Scene((_attributes(only, _region_of(only.x / size, only.y / size), size),))
    if len(measured) == 2:
        first, second = measured
        dx, dy = second.x - first.x, second.y - first.y
        vertical = abs(dy) >= abs(dx)
        if (dy if vertical else dx) < 0:
            first, second = second, first
        near, far = ("top", "bottom") if vertical else ("left", "right")
        return Scene((_attributes(first, near, size), _attributes(second, far, size)))
    return Scene(())


def read_scenes(images: torch.Tensor, *, max_objects: int = 2) -> list[Scene]:
    """:func:`read_scene` over a batch ``[B, 3, H, W]`` (uint8, or floating in [0, 1])."""
    _check_images(images, "read_scenes", "images", ndim=4)
    return [read_scene(image, max_objects=max_objects) for image in images]


def attribute_accuracy(predicted: Scene | None, truth: Scene) -> float:
    """Fraction of attributes right, with objects matched to make it highest.

    Every one-to-one pairing of predicted with true objects is tried and the one with the
    most equal attributes (shape, colour, size, position) is scored, so the order in which
    objects are listed never matters. The score is the number of equal attributes over
    ``4 · max(len(truth.objects), len(predicted.objects))``: a missing object counts as all
    its attributes wrong, and so does an extra one. ``predicted=None`` (e.g. a caption that
    did not parse) scores 0; two empty scenes score 1.

    Returns
    -------
    float in [0, 1]
    """
    if predicted is None:
        return 0.0
    slots = max(len(predicted.objects), len(truth.objects))
    if slots == 0:
        return 1.0
    best = sum(_equal_attributes(truth.objects[t], predicted.objects[p])
               for t, p in _best_pairing(predicted, truth).items())
    return best / (len(ATTRIBUTES) * slots)


def _best_pairing(predicted: Scene, truth: Scene) -> dict[int, int]:
    """Truth object index → predicted object index under the one-to-one pairing with the most equal
    attributes (among ties, the first in ``itertools.permutations`` order), which
    :func:`attribute_accuracy` and :func:`attribute_breakdown` both score."""
    n_true, n_pred = len(truth.objects), len(predicted.objects)
    if n_true <= n_pred:
        options = [dict(enumerate(chosen)) for chosen in itertools.permutations(range(n_pred), n_true)]
    else:
        options = [{t: p for p, t in enumerate(chosen)} for chosen in itertools.permutations(range(n_true), n_pred)]
    return max(options, key=lambda pairs: sum(_equal_attributes(truth.objects[t], predicted.objects[p])
                                              for t, p in pairs.items()))


def attribute_breakdown(predicted: Scene | None, truth: Scene) -> dict[str, float]:
    """Per attribute, the fraction of ``truth``'s objects that ``predicted`` gets right, and the relation.

    Objects are paired as in :func:`attribute_accuracy`; a true object with no predicted partner
    (or ``predicted=None``) counts as wrong in every attribute. For a two-object truth,
    ``relation`` is 1.0 when the prediction holds exactly two objects and the partners of the
    first and second true objects stand in the true relation (``above``, ``below``, ``to the
    left of``, ``to the right of``: their positions), else 0.0; one-object truths have no
    ``relation`` key.

    Returns
    -------
    dict
        ``shape``, ``colour``, ``size``, ``position`` (each in [0, 1]) and, for two-object truths, ``relation``.
    """
    n = len(truth.objects)
    right = dict.fromkeys(ATTRIBUTES, 0)
    pairs = _best_pairing(predicted, truth) if predicted is not None and predicted.objects and n else {}
    for t, p in pairs.items():
        for name in ATTRIBUTES:
            right[name] += getattr(truth.objects[t], name) == getattr(predicted.objects[p], name)
    out = {name: right[name] / n if n else 1.0 for name in ATTRIBUTES}
    if n == 2:
        same = predicted is not None and len(predicted.objects) == 2 and len(pairs) == 2 and all(
            predicted.objects[pairs[t]].position == truth.objects[t].position for t in (0, 1))
        out["relation"] = float(same)
    return out


def accuracy_breakdown(predicted: Sequence[Scene | None], truths: Sequence[Scene | None]) -> dict[str, float]:
    """Means over a set: :func:`attribute_accuracy` (``overall``, as :func:`image_accuracy` and
    :func:`caption_accuracy` give it) and split by the truth's object count,
    :func:`attribute_breakdown` per attribute, and the relation over two-object truths.

    A None truth (a prompt that did not parse) counts as 0 everywhere it would count.

    Returns
    -------
    dict
        ``overall``, ``shape``, ``colour``, ``size``, ``position``; ``relation``, ``two_objects``
        and ``two_objects_with_relation`` (the relation scored as a ninth item beside the eight
        attributes) when some truth holds two objects, ``one_object`` when some holds one;
        ``count`` the number scored.

    Raises
    ------
    ValueError
        ``len(predicted)`` differs from ``len(truths)`` or is 0.
    """
    if len(truths) == 0 or len(truths) != len(predicted):
        raise ValueError(f"accuracy_breakdown: need one truth per prediction, got {len(truths)} for {len(predicted)}")
    sums: dict[str, float] = dict.fromkeys(ATTRIBUTES, 0.0)
    counts: dict[str, int] = {}
    overall = 0.0
    for scene, truth in zip(predicted, truths):
        if truth is None:
            continue
        accuracy = attribute_accuracy(scene, truth)
        overall += accuracy
        split = "one_object" if len(truth.objects) == 1 else "two_objects"
        parts = attribute_breakdown(scene, truth)
        scored = [*parts.items(), (split, accuracy)]
        if "relation" in parts:
            # The relation as one more item beside the attributes of the matched slots.
            slots = max(len(truth.objects), len(scene.objects) if scene is not None else 0)
            equal = accuracy * len(ATTRIBUTES) * slots
            scored.append(("two_objects_with_relation", (equal + parts["relation"]) / (len(ATTRIBUTES) * slots + 1)))
        for key, value in scored:
            sums[key] = sums.get(key, 0.0) + value
            counts[key] = counts.get(key, 0) + 1
    out = {"overall": overall / len(truths), **{name: sums[name] / len(truths) for name in ATTRIBUTES}}
    out.update({key: sums[key] / counts[key] for key in ("relation", "one_object", "two_objects",
                                                         "two_objects_with_relation") if key in counts})
    out["count"] = float(len(truths))
    return out


def image_accuracy(images: torch.Tensor, truths: Sequence[Scene | None], *, max_objects: int = 2) -> float:
    """Mean :func:`attribute_accuracy` of what the checker reads off ``images`` ``[B, 3, H, W]``
    against ``truths`` (e.g. reconstructions against the originals' scenes, or generated images
    against ``parse_caption`` of their prompts). A None truth (a prompt that did not parse)
    scores 0.

    Raises
    ------
    ValueError
        As :func:`read_scenes`, or ``len(truths)`` differs from the batch size or is 0.
    """
    if len(truths) == 0 or len(truths) != len(images):
        raise ValueError(f"image_accuracy: need one truth per image, got {len(truths)} for {len(images)} images")
    scenes = read_scenes(images, max_objects=max_objects)
    return sum(0.0 if truth is None else attribute_accuracy(scene, truth)
               for scene, truth in zip(scenes, truths)) / len(truths)


def caption_accuracy(captions: Sequence[str], truths: Sequence[Scene]) -> float:
    """Mean :func:`attribute_accuracy` of the scenes ``captions`` describe against ``truths``;
    a caption outside the grammar scores 0.

    Raises
    ------
    ValueError
        ``len(captions)`` differs from ``len(truths)`` or is 0.
    """
    if len(captions) == 0 or len(captions) != len(truths):
        raise ValueError(f"caption_accuracy: need one truth per caption, got {len(truths)} for {len(captions)}")
    return sum(attribute_accuracy(parse_caption(text), truth) for text, truth in zip(captions, truths)) / len(truths)


def degrade_images(
    images: torch.Tensor,
    *,
    blur_sigma: float = 1.0,
    noise_std: float = 0.05,
    colour_shift: float = 0.05,
    seed: int = 0,
) -> torch.Tensor:
    """Blur, noise and shift the colours of images, as a stand-in for a weak generator's output.

    Parameters
    ----------
    images : Tensor ``[B, 3, H, W]``, uint8 (0–255) or floating (0–1)
    blur_sigma : float
        Standard deviation of the Gaussian blur, in pixels (0: none); edges are replicated.
    noise_std : float
        Standard deviation of per-pixel, per-channel Gaussian noise, in units of full scale.
    colour_shift : float
        Each image gets one offset per channel, uniform in ``[−colour_shift, colour_shift]``.
    seed : int
        Seeds the noise and the shifts.

    Returns
    -------
    Tensor ``[B, 3, H, W]``, uint8, on the CPU

    Raises
    ------
    TypeError, ValueError
        Wrong shape or dtype, or a negative parameter.
    """
    if min(blur_sigma, noise_std, colour_shift) < 0:
        raise ValueError(
            "degrade_images: blur_sigma, noise_std and colour_shift must be non-negative, "
            f"got {blur_sigma}, {noise_std}, {colour_shift}"
        )
    x = torch.from_numpy(_blur(_as_unit_float(images, "degrade_images", "images", ndim=4), blur_sigma))
    generator = torch.Generator().manual_seed(seed)
    if noise_std > 0:
        x = x + noise_std * torch.randn(x.shape, generator=generator)
    if colour_shift > 0:
        x = x + colour_shift * (2 * torch.rand((x.shape[0], 3, 1, 1), generator=generator) - 1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def checker_accuracy(
    n: int = 1000,
    seed: int = 0,
    *,
    image_size: int = 64,
    max_objects: int = 2,
    blur_sigma: float = 0.0,
    noise_std: float = 0.0,
    colour_shift: float = 0.0,
) -> float:
    """Mean :func:`attribute_accuracy` of the checker on ``n`` held-out procedural renders.

    With all degradation parameters 0 the renders are clean; otherwise they go through
    :func:`degrade_images` (seeded by ``seed``) first.

    Raises
    ------
    ValueError
        ``n`` not positive, or bad configuration values.
    """
    if n < 1:
        raise ValueError(f"checker_accuracy: n must be positive, got {n}")
    config = ProceduralConfig(image_size=image_size, max_objects=max_objects, seed=seed, heldout_size=n)
    degraded = blur_sigma > 0 or noise_std > 0 or colour_shift > 0
    total = 0.0
    for step, batch in enumerate(iter_batches(ProceduralDataset(config, "heldout"), _CHECK_BATCH)):
        images = batch.images
        if degraded:
            batch_seed = int(np.random.SeedSequence([seed, step]).generate_state(1)[0])
            images = degrade_images(images, blur_sigma=blur_sigma, noise_std=noise_std,
                                    colour_shift=colour_shift, seed=batch_seed)
        total += image_accuracy(images, batch.truths, max_objects=max_objects) * len(batch)
    return total / n


def _as_unit_float(images: torch.Tensor, op: str, name: str, *, ndim: int) -> np.ndarray:
    _check_images(images, op, name, ndim=ndim)
    if images.dtype == torch.uint8:
        return images.detach().cpu().numpy().astype(np.float32) / np.float32(255.0)
    return images.detach().cpu().to(torch.float32).numpy()


def _check_images(images: torch.Tensor, op: str, name: str, *, ndim: int) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != ndim or images.shape[-3] != 3 or images.shape[-1] != images.shape[-2]:
        expected = "[3, H, W]" if ndim == 3 else "[B, 3, H, W]"
        raise ValueError(f"{op}: {name} must have shape {expected} with H == W, got {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"{op}: {name} must be uint8 or floating, got {str(images.dtype).removeprefix('torch.')}")


def _colour_coverage(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per palette colour ``[len(COLOURS), H, W]``: the coverage estimate (float, unclipped)
    and the detection mask (bool)."""
    a, b = _chroma_vector(rgb)
    a = a - np.median(a)
    b = b - np.median(b)
    squared_norms = (_PALETTE_NORM**2)[:, None, None]
    sigma = DETECTION_BLUR * rgb.shape[-1]
    smooth = _project(_blur(a, sigma), _blur(b, sigma))
    nearest = np.argmax(smooth / _PALETTE_NORM[:, None, None], axis=0)
    palette = np.arange(len(COLOURS))[:, None, None]
    return _project(a, b) / squared_norms, (nearest == palette) & (smooth / squared_norms >= DETECTION_COVERAGE)


def _project(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[len(COLOURS), H, W]``: each pixel's chroma vector dotted with each palette colour's."""
    return _PALETTE_A[:, None, None] * a + _PALETTE_B[:, None, None] * b


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a bool mask (all False when the mask is empty)."""
    if not mask.any():
        return mask
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    window = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    # Every pixel starts with its own label; labels spread to 4-neighbours by maximum until
    # nothing changes, when each component carries a single label.
    labels = np.where(window, np.arange(1, window.size + 1, dtype=np.int32).reshape(window.shape), 0)
    while True:
        spread = labels.copy()
        np.maximum(spread[1:], labels[:-1], out=spread[1:])
        np.maximum(spread[:-1], labels[1:], out=spread[:-1])
        np.maximum(spread[:, 1:], labels[:, :-1], out=spread[:, 1:])
        np.maximum(spread[:, :-1], labels[:, 1:], out=spread[:, :-1])
        spread *= window
        if np.array_equal(spread, labels):
            break
        labels = spread
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    component = np.zeros_like(mask)
    component[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = labels == counts.argmax()
    return component


class _Measured(NamedTuple):
    """One object as measured: area in pixels, box centre (x, y) in pixels from the top left."""

    shape: str
    colour: str
    area: float
    x: float
    y: float


def _measure(colour: str, component: np.ndarray, coverage: np.ndarray) -> _Measured:
    """Shape, area and box centre of one object.

    Area and centroid come from the soft ``coverage`` around the detected ``component`` (blur
    moves coverage about but keeps its sum and mean position); the shape is the one whose
    equal-area template, blurred by one of ``TEMPLATE_BLURS``, is nearest in squared error.
    """
    size = component.shape[-1]
    margin = math.ceil(REGION_MARGIN * size)
    rows = np.flatnonzero(component.any(1))
    cols = np.flatnonzero(component.any(0))
    top, bottom = max(0, rows[0] - margin), min(size, rows[-1] + 1 + margin)
    left, right = max(0, cols[0] - margin), min(size, cols[-1] + 1 + margin)
    soft = coverage[top:bottom, left:right]
    area = max(float(soft.sum()), 1.0)
    ys, xs = np.mgrid[top:bottom, left:right] + 0.5
    centroid_x, centroid_y = float((soft * xs).sum() / area), float((soft * ys).sum() / area)
    radius = math.sqrt(area / math.pi)
    # A triangle's centroid lies a third of its half-height below its box centre.
    box_ys = [centroid_y - (HALF_EXTENT[shape] * radius / 3 if shape == "triangle" else 0.0) for shape in SHAPES]
    # Templates are drawn on a square canvas around the region with room for the widest blur.
    pad = math.ceil(3 * max(TEMPLATE_BLURS) * size)
    side = max(bottom - top, right - left) + 2 * pad
    origin_x, origin_y = left - pad, top - pad
    templates = np.concatenate([
        shape_coverage(shape, np.array([centroid_x - origin_x]), np.array([box_y - origin_y]), np.array([radius]), side)
        for shape, box_y in zip(SHAPES, box_ys)
    ])
    blurred = _blurred_templates(templates, [blur * size for blur in TEMPLATE_BLURS])
    window = blurred[:, :, pad:pad + bottom - top, pad:pad + right - left]
    errors = np.square(window - soft).sum((2, 3))
    best = int(errors.min(0).argmin())
    return _Measured(SHAPES[best], colour, area, centroid_x, box_ys[best])


def _attributes(measured: _Measured, position: str, image_size: int) -> ObjectAttributes:
    size = "large" if measured.area >= LARGE_AREA_FRACTION * image_size * image_size else "small"
    return ObjectAttributes(measured.shape, measured.colour, size, position)


def _region_of(x: float, y: float) -> str:
    dx, dy = x - POSITION_CENTRES["middle"][0], y - POSITION_CENTRES["middle"][1]
    if max(abs(dx), abs(dy)) < MIDDLE_HALF_WIDTH:
        return "middle"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def _equal_attributes(a: ObjectAttributes, b: ObjectAttributes) -> int:
    return sum(getattr(a, name) == getattr(b, name) for name in ATTRIBUTES)


@functools.lru_cache(maxsize=64)
def _gaussian_weights(sigma: float) -> np.ndarray:
    """A normalised, odd-length Gaussian kernel reaching 3σ (at least one pixel) each side."""
    radius = max(1, math.ceil(3 * sigma))
    weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return (weights / weights.sum()).astype(np.float32)


def _blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (pixels, replicated edges) of ``[..., H, W]``; ``sigma = 0`` returns the input.

    Shifted, weighted sums rather than a matrix product: BLAS threads spin badly when the
    cores are shared, and these kernels are short.
    """
    if sigma == 0:
        return images
    weights = _gaussian_weights(sigma)
    rows_blurred = _blur_last_axis(images, weights)
    return _blur_last_axis(rows_blurred.swapaxes(-1, -2), weights).swapaxes(-1, -2)


def _blur_last_axis(images: np.ndarray, weights: np.ndarray) -> np.ndarray:
    radius = len(weights) // 2
    length = images.shape[-1]
    padded = np.pad(images, [(0, 0)] * (images.ndim - 1) + [(radius, radius)], mode="edge")
    blurred = weights[0] * padded[..., :length]
    for offset in range(1, len(weights)):
        blurred += weights[offset] * padded[..., offset:offset + length]
    return blurred


def _blurred_templates(templates: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
    """``[len(sigmas), S, L, L]``: each of ``templates`` ``[S, L, L]`` blurred by each sigma
    (pixels), through one FFT. The blur wraps around, so templates need 3σ of empty border."""
    side = templates.shape[-1]
    frequency_squared = np.fft.fftfreq(side)[:, None] ** 2 + np.fft.rfftfreq(side)[None, :] ** 2
    # The Fourier transform of a Gaussian of standard deviation σ is exp(−2π²σ²f²).
    transfer = np.exp(-2 * math.pi**2 * np.square(np.asarray(sigmas))[:, None, None, None] * frequency_squared)
    return np.fft.irfft2(np.fft.rfft2(templates) * transfer, s=(side, side))
