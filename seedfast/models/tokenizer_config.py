"""The SEED tokenizer's hyper-parameters as one frozen dataclass (spec §3, §4, §6, §7)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from seedfast._checks import dataclass_from_dict, is_int

from seedfast.constants import CODE_DIM, CODEBOOK_SIZE, GENERATION_EMBED_DIM, NUM_QUERY_TOKENS

__all__ = ["ATTENTION_CHOICES", "CODEBOOK_SIZE", "CODE_DIM", "GENERATION_EMBED_DIM", "NUM_QUERY_TOKENS",
           "SeedTokenizerConfig"]

ATTENTION_CHOICES = ("fused", "sdpa")


@dataclass(frozen=True)
class SeedTokenizerConfig:
    """Every size of :class:`~seedfast.models.seed_tokenizer.SeedTokenizer`.

    The number of queries is fixed at :data:`NUM_QUERY_TOKENS` (32) in every configuration.

    Attributes
    ----------
    image_size, patch_size : int
        Input resolution and ViT patch (224, 14).
    vit_width, vit_depth, vit_heads, vit_mlp_dim : int
        EVA ViT-g: 1408, 39 blocks built, 16 heads, 6144.
    vit_eps, ln_vision_eps : float
        1e-6 inside the ViT blocks, 1e-5 for ``ln_vision``.
    qformer_hidden, qformer_layers, qformer_heads, qformer_intermediate : int
        BERT-base: 768, 12, 12, 3072.
    cross_attention_freq : int
        Layers ``i % freq == 0`` cross-attend to the image (2 → layers 0, 2, …, 10).
    qformer_eps, qformer_dropout : float
        1e-12 and 0.1 (hidden dropout, train mode only).
    codebook_size, code_dim : int
        8192 codes of 32.
    head_depth, head_heads, head_mlp_dim, head_eps : int, int, int, float
        The ``blocks``/``blocks_image`` stacks: 4 blocks, 12 heads, MLP 3072, eps 1e-6.
    image_down_dims : tuple of 3 int
        ``image_down`` widths (256, 128, 32); the flattened size is 32 × the last one.
    generation_embed_dim : int
        Output of ``distill_image_proj`` (1024).
    vocab_size, max_text_positions : int
        Text path (stage 1): 30523 ids (bert-base-uncased + ``[DEC]``) and 512 positions.
    proj_dim : int
        ``vision_proj``/``text_proj`` output (256).
    training_heads : bool
        Also build what only training uses: the Q-Former text path, ``vision_proj``,
        ``text_proj``, ``temp`` (stage 1) and the reconstruction branch ``pos_embed`` +
        ``blocks`` (stage 2).
    qformer_attention : {"fused", "sdpa"}
        Attention in the Q-Former: :func:`seedfast.ops.qformer_attention` (fused Triton on
        CUDA), or SDPA with an explicit boolean mask.
    """

    image_size: int = 224
    patch_size: int = 14
    vit_width: int = 1408
    vit_depth: int = 39
    vit_heads: int = 16
    vit_mlp_dim: int = 6144
    vit_eps: float = 1e-6
    ln_vision_eps: float = 1e-5
    qformer_hidden: int = 768
    qformer_layers: int = 12
    qformer_heads: int = 12
    qformer_intermediate: int = 3072
    cross_attention_freq: int = 2
    qformer_eps: float = 1e-12
    qformer_dropout: float = 0.1
    codebook_size: int = CODEBOOK_SIZE
    code_dim: int = CODE_DIM
    head_depth: int = 4
    head_heads: int = 12
    head_mlp_dim: int = 3072
    head_eps: float = 1e-6
    image_down_dims: tuple[int, int, int] = (256, 128, 32)
    generation_embed_dim: int = GENERATION_EMBED_DIM
    vocab_size: int = 30523
    max_text_positions: int = 512
    proj_dim: int = 256
    training_heads: bool = False
    qformer_attention: str = "fused"

    def __post_init__(self) -> None:
        if not isinstance(self.image_down_dims, tuple):
            object.__setattr__(self, "image_down_dims", tuple(self.image_down_dims))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and not (is_int(value) and value > 0):
                raise ValueError(f"SeedTokenizerConfig: {f.name} must be a positive int, got {value!r}")
            if f.type == "float" and not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"SeedTokenizerConfig: {f.name} must be a non-negative number, got {value!r}")
        if len(self.image_down_dims) != 3 or not all(isinstance(d, int) and d > 0 for d in self.image_down_dims):
            raise ValueError(
                f"SeedTokenizerConfig: image_down_dims must be 3 positive ints, got {self.image_down_dims!r}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(f"SeedTokenizerConfig: image_size ({self.image_size}) must be a multiple of "
                             f"patch_size ({self.patch_size})")
        for width, heads in (("vit_width", "vit_heads"), ("qformer_hidden", "qformer_heads"),
                             ("qformer_hidden", "head_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(f"SeedTokenizerConfig: {width} ({getattr(self, width)}) must be divisible by "
                                 f"{heads} ({getattr(self, heads)})")
        if not self.qformer_dropout < 1:
            raise ValueError(f"SeedTokenizerConfig: qformer_dropout must be in [0, 1), got {self.qformer_dropout!r}")
        if not isinstance(self.training_heads, bool):
            raise ValueError(f"SeedTokenizerConfig: training_heads must be a bool, got {self.training_heads!r}")
        if self.qformer_attention not in ATTENTION_CHOICES:
            raise ValueError(f"SeedTokenizerConfig: qformer_attention must be one of {ATTENTION_CHOICES}, "
                             f"got {self.qformer_attention!r}")

    @classmethod
    def official(cls, **overrides: Any) -> SeedTokenizerConfig:
        """The released SEED-2 tokenizer (``seed_quantizer.pt`` + ``eva_vit_g.pth``); fields may be overridden."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> SeedTokenizerConfig:
        """A miniature with the same structure (32 queries, cross-attention every 2nd layer,
        every module and key) that runs in milliseconds on a CPU: 32×32 images in 8×8 patches
        (17 tokens), ViT 48 wide × 2 blocks, Q-Former 32 wide × 4 layers, 64 codes of 8,
        2 head blocks, 48-d generation embedding."""
        sizes: dict[str, Any] = dict(
            image_size=32, patch_size=8,
            vit_width=48, vit_depth=2, vit_heads=4, vit_mlp_dim=96,
            qformer_hidden=32, qformer_layers=4, qformer_heads=4, qformer_intermediate=64,
            codebook_size=64, code_dim=8,
            head_depth=2, head_heads=4, head_mlp_dim=64,
            image_down_dims=(16, 8, 4), generation_embed_dim=48,
            vocab_size=64, max_text_positions=16, proj_dim=16,
        )
        sizes.update(overrides)
        return cls(**sizes)

    @property
    def num_patches(self) -> int:
        """Patches per image ((224/14)² = 256); the ViT outputs one more token (CLS)."""
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        data = dataclasses.asdict(self)
        data["image_down_dims"] = list(self.image_down_dims)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeedTokenizerConfig:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        ValueError
            Unknown field names, or invalid values.
        """
        return dataclass_from_dict(cls, data)
