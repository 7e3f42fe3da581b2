"""Checks of what the SEED tokenizer takes: preprocessed images, visual codes, and the device.

Shared by :class:`seedfast.models.seed_tokenizer.SeedTokenizer` and the training losses, so that
both name the caller and the expected shape in the same words. ``where`` prefixes each message
(``"SeedTokenizer.encode"``).
"""
from __future__ import annotations

import torch

from seedfast.constants import NUM_QUERY_TOKENS

INDEX_DTYPES = (torch.int64, torch.int32)


def check_device(where: str, name: str, t: torch.Tensor, device: torch.device) -> None:
    """Raise ``ValueError`` if tensor ``t`` (argument ``name``) is not on ``device``."""
    if t.device != device:
        raise ValueError(f"{where}: {name} is on {t.device} but the model is on {device}")


def check_images(where: str, images: object, image_size: int, device: torch.device) -> torch.Tensor:
    """Check preprocessed images ``[B >= 1, 3, image_size, image_size]`` on ``device``.

    Returns
    -------
    Tensor
        ``images``, unchanged.

    Raises
    ------
    TypeError
        Not a tensor, or not floating (uint8 pixels go through ``encode_pixels``).
    ValueError
        Another shape, an empty batch, or another device.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{where}: images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{where}: images must be a floating tensor (preprocessed, spec §2), got "
                        f"{images.dtype}; use encode_pixels for uint8 pixels")
    s = image_size
    if images.dim() != 4 or images.shape[0] == 0 or tuple(images.shape[1:]) != (3, s, s):
        raise ValueError(f"{where}: images must have shape [B, 3, {s}, {s}] with B >= 1, got {tuple(images.shape)}")
    check_device(where, "images", images, device)
    return images


def check_codes(where: str, codes: object, codebook_size: int, device: torch.device, *,
                check_range: bool) -> torch.Tensor:
    """Check visual codes ``[B >= 1, 32]``, int64 or int32, on ``device``.

    Parameters
    ----------
    check_range : bool
        Also check ``0 <= codes < codebook_size``: one host synchronisation, so a hot path
        whose codes are known valid passes False.

    Returns
    -------
    Tensor
        ``codes``, unchanged.

    Raises
    ------
    TypeError
        Not an int64/int32 tensor.
    ValueError
        Another shape, another device, or (with ``check_range``) a code out of range.
    """
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"{where}: codes must be a torch.Tensor, got {type(codes).__name__}")
    if codes.dtype not in INDEX_DTYPES:
        raise TypeError(f"{where}: codes must be int64 or int32, got {codes.dtype}")
    if codes.dim() != 2 or codes.shape[0] == 0 or codes.shape[1] != NUM_QUERY_TOKENS:
        raise ValueError(f"{where}: codes must have shape [B, {NUM_QUERY_TOKENS}] with B >= 1, "
                         f"got {tuple(codes.shape)}")
    check_device(where, "codes", codes, device)
    k = codebook_size
    if check_range and bool(((codes < 0) | (codes >= k)).any()):
        raise ValueError(f"{where}: codes must lie in [0, {k}), got values from "
                         f"{int(codes.min())} to {int(codes.max())}")
    return codes
