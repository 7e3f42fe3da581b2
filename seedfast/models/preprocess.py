"""The tokenizer's image preprocessing (spec §2), in torch alone (no torchvision).

It lives beside the tokenizer, which owns its input format (``SeedTokenizer.encode_pixels``);
data loaders hand over raw uint8 images and the layers above models (train, demo) call it.
"""
from __future__ import annotations

import torch

CLIP_IMAGE_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(images: torch.Tensor, size: int = CLIP_IMAGE_SIZE) -> torch.Tensor:
    """Resize to exactly ``size × size`` and normalise with the CLIP mean and std, as SEED's
    inference transform does (aspect ratio not kept, no crop).

    The resize is bilinear with ``antialias=True`` (``torch.nn.functional.interpolate``), as
    torchvision's tensor ``Resize`` does by default: downscaling averages over the source
    footprint as PIL does; upscaling is plain bilinear. Images already ``size × size`` are not
    resampled. Float values are taken as they are (expected in [0, 1]; not checked, which would
    need a device sync).

    Parameters
    ----------
    images : Tensor ``[B, 3, H, W]``, uint8 (0–255) or floating (0–1), any device
    size : int, positive

    Returns
    -------
    Tensor ``[B, 3, size, size]``, float32, on the device of ``images``

    Raises
    ------
    TypeError
        Not a tensor, or a dtype other than uint8 or floating.
    ValueError
        Not ``[B, 3, H, W]``, or ``size`` not positive.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"clip_preprocess: images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"clip_preprocess: images must have shape [B, 3, H, W], got {tuple(images.shape)}")
    if size < 1:
        raise ValueError(f"clip_preprocess: size must be positive, got {size}")
    if images.dtype == torch.uint8:
        pixels = images.to(torch.float32) / 255.0
    elif images.is_floating_point():
        pixels = images.to(torch.float32)
    else:
        raise TypeError(
            f"clip_preprocess: images must be uint8 or floating, got {str(images.dtype).removeprefix('torch.')}"
        )
    if pixels.shape[0] == 0:
        pixels = pixels.new_empty((0, 3, size, size))
    elif pixels.shape[-2:] != (size, size):
        pixels = torch.nn.functional.interpolate(
            pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std
