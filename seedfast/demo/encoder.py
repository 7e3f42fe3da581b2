"""The demo's frozen image encoder: a random ViT that keeps what stage 1 needs.

SEED's ViT is a frozen, pre-trained EVA-CLIP; its tokens say what is where. The demo has no
pre-trained weights, and a ViT freshly initialised like any other layer (truncated normal,
std 0.02) says neither well: its patch embedding is a small random projection and its position
embeddings are 0.02-scale noise next to the content, so the Q-Former learns position several
times slower than colour or shape. The demo therefore starts stage 1 from a tokenizer whose
frozen ViT is still random but

* embeds each patch isometrically (a random semi-orthogonal projection, no information lost:
  the ViT is wider than a patch has numbers), and
* adds fixed 2-D sine-cosine position embeddings of comparable size (as MAE's frozen ones),

so that its tokens carry both what and where, as a pre-trained encoder's do. The ViT stays
frozen in every stage (spec §3).

One more departure from the tokenizer's own initialisation, for the tiny widths only: its
weights are drawn with std 0.02, a size chosen for width 768 (a layer then keeps about half of
its input's scale, 0.02·√768 ≈ 0.55). At width 64 each layer would shrink signals six-fold, and
the generation head, five layers deep, hardly trains in a few hundred steps. The Linear layers
of what stage 2 trains are therefore drawn with std ``1/√fan_in`` (LeCun), which keeps every
layer's output at its input's scale. Everything else is the tokenizer's seeded initialisation.
"""
from __future__ import annotations

import math

import torch

from torch import nn

from seedfast.models.seed_tokenizer import SeedTokenizer
from seedfast.models.tokenizer_config import SeedTokenizerConfig

POSITION_BASE = 10_000.0
"""Wavelength base of the sine-cosine position embeddings (as the Transformer's)."""
HEAD_MODULES = ("encode_task_layer", "decode_task_layer", "blocks", "blocks_image", "image_down", "distill_image_proj")
"""What stage 2 trains besides the codebook and position embeddings: given LeCun-scaled weights."""


def sincos_positions(side: int, width: int) -> torch.Tensor:
    """2-D sine-cosine embeddings of a ``side × side`` grid, row-major: ``[side², width]``.

    The first half of the channels encodes the row, the second the column; each half is sines
    then cosines over ``width / 4`` wavelengths, so every token has norm ``√(width / 2)``.

    Raises
    ------
    ValueError
        ``width`` not a multiple of 4.
    """
    if width % 4:
        raise ValueError(f"sincos_positions: width must be a multiple of 4, got {width}")
    quarter = width // 4
    frequencies = POSITION_BASE ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")

    def encode(coordinate: torch.Tensor) -> torch.Tensor:
        angles = coordinate.flatten().double()[:, None] * frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def frozen_encoder_init(config: SeedTokenizerConfig, seed: int) -> SeedTokenizer:
    """A seeded tokenizer with the frozen ViT of the module docstring.

    Parameters
    ----------
    config : SeedTokenizerConfig
        The stage-1 tokenizer (training heads included); ``vit_width`` must be at least
        ``3 · patch_size²`` and a multiple of 4.
    seed : int

    Raises
    ------
    ValueError
        A ViT narrower than a patch, or a width the position embeddings cannot fill.
    """
    patch_numbers = 3 * config.patch_size ** 2
    if config.vit_width < patch_numbers:
        raise ValueError(f"frozen_encoder_init: vit_width ({config.vit_width}) must be at least 3 · patch_size² "
                         f"({patch_numbers}) for an isometric patch embedding")
    torch.manual_seed(seed)
    model = SeedTokenizer(config)
    vit = model.visual_encoder
    generator = torch.Generator().manual_seed(seed)
    # Q of a square Gaussian matrix is uniformly random orthogonal; its first columns are an
    # isometry from patch space into the ViT's width.
    square = torch.linalg.qr(torch.randn(config.vit_width, config.vit_width, generator=generator,
                                         dtype=torch.float64)).Q
    side = config.image_size // config.patch_size
    with torch.no_grad():
        weight = vit.patch_embed.proj.weight
        weight.copy_(square[:, :patch_numbers].reshape(weight.shape).to(weight.dtype))
        vit.patch_embed.proj.bias.zero_()
        # Position embeddings at the norm of a mid-grey patch's embedding (CLIP-normalised
        # pixels are about unit-scale, so a patch's norm is about √(3·p²)).
        positions = sincos_positions(side, config.vit_width)
        scale = math.sqrt(patch_numbers) / math.sqrt(config.vit_width / 2)
        vit.pos_embed[0, 1:] = positions * scale
        vit.pos_embed[0, 0] = 0.0
        for name in HEAD_MODULES:
            for layer in getattr(model, name).modules():
                if isinstance(layer, nn.Linear):
                    std = layer.in_features ** -0.5
                    nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std, generator=generator)
    return model
