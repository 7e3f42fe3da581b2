"""Stage 2's target: the image embedding the generation head learns to predict (spec §7).

Officially the 1024-d ``image_embeds`` of the frozen OpenCLIP ViT-H/14 that conditions the
unCLIP decoder. :class:`ClipTarget` runs such a model from a Hugging Face folder;
:class:`StandInTarget` is a deterministic offline substitute so that stage 2 trains without
any download (tiny preset). Both take the same preprocessed images as the tokenizer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STAND_IN_GRID = 8
"""Stand-in: images are average-pooled to ``8 × 8`` per channel (192 numbers) before projection,
unless the target names another grid (``"stand-in:16"``)."""
STAND_IN_SEED = 1234
"""Seed of the stand-in's projection matrix: the same target on every machine and run."""


class StandInTarget(nn.Module):
    """``target = pool(image, grid).flatten() @ P`` with a fixed Gaussian ``P [3·grid², dim] / √(3·grid²)``.

    Pooled pixels keep what the procedural captions talk about (colour, position, size; the
    shape of small objects needs ``grid`` 16), and the projection has the scale of a
    unit-variance embedding; no weights are trained or stored.

    Parameters
    ----------
    dim : int
        The generation embedding's size (``generation_embed_dim``).
    grid : int
        Side of the pooled grid.
    """

    def __init__(self, dim: int, grid: int = STAND_IN_GRID) -> None:
        super().__init__()
        self.grid = grid
        n = 3 * grid * grid
        g = torch.Generator().manual_seed(STAND_IN_SEED)
        self.register_buffer("projection", torch.randn(n, dim, generator=g) / n**0.5, persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` preprocessed images → ``[B, dim]`` float32."""
        pooled = F.adaptive_avg_pool2d(images.float(), self.grid).flatten(1)
        return pooled @ self.projection


class ClipTarget(nn.Module):
    """A frozen ``transformers.CLIPVisionModelWithProjection``; the target is its ``image_embeds``.

    Parameters
    ----------
    path : str
        A Hugging Face folder (for SEED-2: the unCLIP image encoder, OpenCLIP ViT-H/14, 1024-d).
    dim : int
        Required ``projection_dim`` (the tokenizer's ``generation_embed_dim``).

    Raises
    ------
    ValueError
        The model's projection size is not ``dim``.
    """

    def __init__(self, path: str, dim: int) -> None:
        super().__init__()
        from transformers import CLIPVisionModelWithProjection

        self.model = CLIPVisionModelWithProjection.from_pretrained(path).eval().requires_grad_(False)
        got = self.model.config.projection_dim
        if got != dim:
            raise ValueError(f"target model {path} outputs {got}-d embeddings; the tokenizer's generation "
                             f"embedding is {dim}-d")
        self.image_size = int(self.model.config.image_size)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` CLIP-normalised images (resized here to the model's size) → ``[B, dim]`` float32."""
        if images.shape[-1] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bicubic",
                                   align_corners=False)
        dtype = next(self.model.parameters()).dtype
        return self.model(pixel_values=images.to(dtype)).image_embeds.float()


def build_target(spec: str, dim: int) -> nn.Module:
    """``"stand-in"`` / ``"stand-in:G"`` → :class:`StandInTarget` (grid G), ``"clip:DIR"`` → :class:`ClipTarget`.

    Raises
    ------
    ValueError
        Any other value, or what :class:`ClipTarget` raises.
    """
    if spec == "stand-in":
        return StandInTarget(dim)
    grid = spec.removeprefix("stand-in:")
    if grid != spec and grid.isdigit() and int(grid) > 0:
        return StandInTarget(dim, int(grid))
    if spec.startswith("clip:"):
        return ClipTarget(spec.removeprefix("clip:"), dim)
    raise ValueError(f"data.target must be 'stand-in', 'stand-in:GRID' or 'clip:DIR', got {spec!r}")
