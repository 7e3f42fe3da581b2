"""The embedded dataset (procedural shape scenes with exact captions, no download), the
attribute checker that scores generated images and captions against them, and loaders for real
image–caption data.

Images are uint8 ``[B, 3, H, W]`` everywhere (``[3, H, W]`` in a Sample); the checker also takes
floats in [0, 1]. Pillow is imported only when real data is read. The tokenizer's preprocessing
(``clip_preprocess``) moved to :mod:`seedfast.models.preprocess`: data never needs a model.
"""
from seedfast._lazy import moved_names
from seedfast.data.checker import (
    accuracy_breakdown,
    attribute_accuracy,
    attribute_breakdown,
    caption_accuracy,
    checker_accuracy,
    degrade_images,
    image_accuracy,
    read_scene,
    read_scenes,
)
from seedfast.data.files import (
    IMAGE_EXTENSIONS,
    DatasetError,
    ImageCaptionFiles,
    TarImageCaptions,
    decode_image,
    open_image_captions,
)
from seedfast.data.procedural import SPLIT_STREAMS, ProceduralConfig, ProceduralDataset, sample_layout
from seedfast.data.render import PlacedObject, SceneLayout, render_layouts
from seedfast.data.samples import Batch, Sample, collate, iter_batches
from seedfast.data.scene import (
    COLOURS,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    ObjectAttributes,
    Scene,
    make_caption,
    parse_caption,
    reading_order,
    reading_order_caption,
)

__all__ = [
    "COLOURS",
    "IMAGE_EXTENSIONS",
    "PALETTE",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "SPLIT_STREAMS",
    "Batch",
    "DatasetError",
    "ImageCaptionFiles",
    "ObjectAttributes",
    "PlacedObject",
    "ProceduralConfig",
    "ProceduralDataset",
    "Sample",
    "Scene",
    "SceneLayout",
    "TarImageCaptions",
    "accuracy_breakdown",
    "attribute_accuracy",
    "attribute_breakdown",
    "caption_accuracy",
    "checker_accuracy",
    "collate",
    "decode_image",
    "degrade_images",
    "image_accuracy",
    "iter_batches",
    "make_caption",
    "open_image_captions",
    "parse_caption",
    "read_scene",
    "read_scenes",
    "reading_order",
    "reading_order_caption",
    "render_layouts",
    "sample_layout",
]

# Old paths, for one release: named by string, so data does not import models.
__getattr__ = moved_names(__name__, dict.fromkeys(("CLIP_IMAGE_SIZE", "CLIP_MEAN", "CLIP_STD", "clip_preprocess"),
                                                  "seedfast.models.preprocess"))
