"""The SEED visual tokenizer: image → 32 causal codes, and codes → the 1024-d generation
embedding that the unCLIP de-tokenizer turns into pixels (spec §1–§7).

Attribute names are the official ``Blip2QformerQuantizer`` ones (``visual_encoder``,
``ln_vision``, ``query_tokens``, ``Qformer``, ``quantize``, ``encode_task_layer``, …), including
the capitalised ``Qformer``, so that ``state_dict()`` keys are exactly the official keys of
spec §9 and checkpoints load by name.

Inference path (``encode``): ViT → ``ln_vision`` → Q-Former → ``encode_task_layer`` → nearest
code. Unlike ``get_codebook_indices`` it does not also run ``decode_task_layer`` (spec §13
item 2); ``pos_embed_image`` is broadcast, not repeated per image (item 6).

Precision. The model computes in the dtype of its weights: ``model.to(torch.bfloat16)`` (or
float16) on GPU runs everything in half precision, like the released ``ImageTokenizer(fp16=True)``
which calls ``.half()`` on the whole tokenizer, except that

* ``ln_vision`` normalises in float32 and casts back (spec §3);
* LayerNorm and SDPA/softmax statistics accumulate in float32 inside the kernels;
* the code search (:func:`seedfast.ops.nearest_code`) is float32.

Half-precision ViT with a float32 remainder (the official training set-up: fp16 ViT, fp32
Q-Former) works too: ``model.visual_encoder.to(torch.float16)``; image features are cast to
the Q-Former's dtype. Running float32 weights under ``torch.autocast`` is also supported.

The model does inference and exposes the features its training needs
(:meth:`contrastive_features`, :meth:`causal_embeddings_from_vit`, :meth:`reconstruct_causal`,
:meth:`generation_head`); the stage-1/2 losses are :mod:`seedfast.train.tokenizer_losses`.
The codebook and every Q-Former attention are the drop-in modules of :mod:`seedfast.nn`.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from seedfast.models.eva_vit import EvaVisionTransformer, FP32LayerNorm
from seedfast.models.heads import Block, image_down, task_layer
from seedfast.models.preprocess import clip_preprocess
from seedfast.models.qformer import ATTENTION_IMPLS, CausalQFormer
from seedfast.models.tokenizer_config import NUM_QUERY_TOKENS, SeedTokenizerConfig
from seedfast.models.tokenizer_inputs import check_codes, check_images
from seedfast.nn.vq import VectorQuantizer

TEMP_INIT = 0.07
"""Initial contrastive temperature (stage 1)."""
INIT_STD = 0.02
"""Std of the (truncated) normal initialisation of weights, embeddings and positions."""

STAGE_MODULES: dict[int, tuple[str, ...]] = {
    # Spec §5: Q-Former (its MLM head is not built), queries, ln_vision, projections, temp.
    1: ("Qformer", "query_tokens", "ln_vision", "vision_proj", "text_proj", "temp"),
    # Spec §7: codebook, task layers, positions, both block stacks and the generation head.
    2: ("quantize", "encode_task_layer", "decode_task_layer", "pos_embed", "pos_embed_image",
        "blocks", "blocks_image", "image_down", "distill_image_proj"),
}
"""Top-level attribute names trained in each stage; everything else is frozen."""

_ZERO_INIT = ("q_bias", "v_bias")
# Checkpoint code builds this model, so it is imported by name when used: no import cycle.
_CHECKPOINTS = "seedfast.models.checkpoints"


class SeedTokenizer(nn.Module):
    """SEED tokenizer with the official architecture and state-dict names.

    Parameters
    ----------
    config : SeedTokenizerConfig
        ``SeedTokenizerConfig.official()`` for the released model, ``.tiny()`` for tests.

    Notes
    -----
    Weights are freshly initialised (BERT/timm style: truncated normal 0.02, zero biases,
    unit LayerNorms, codebook uniform ±1/K, ``temp`` 0.07); load real ones with
    :meth:`from_official` or :meth:`load`. Construct under ``torch.device("meta")`` to get a
    storage-free skeleton.
    """

    def __init__(self, config: SeedTokenizerConfig) -> None:
        if not isinstance(config, SeedTokenizerConfig):
            raise TypeError(f"SeedTokenizer: config must be a SeedTokenizerConfig, got {type(config).__name__}")
        super().__init__()
        c = config
        self.config = c
        hidden = c.qformer_hidden
        self.visual_encoder = EvaVisionTransformer(
            image_size=c.image_size, patch_size=c.patch_size, width=c.vit_width, depth=c.vit_depth,
            num_heads=c.vit_heads, mlp_dim=c.vit_mlp_dim, eps=c.vit_eps,
        )
        self.ln_vision = FP32LayerNorm(c.vit_width, eps=c.ln_vision_eps)
        self.query_tokens = nn.Parameter(torch.zeros(1, NUM_QUERY_TOKENS, hidden))
        self.Qformer = CausalQFormer(
            hidden=hidden, num_layers=c.qformer_layers, num_heads=c.qformer_heads,
            intermediate=c.qformer_intermediate, encoder_width=c.vit_width,
            cross_attention_freq=c.cross_attention_freq, eps=c.qformer_eps, dropout=c.qformer_dropout,
            vocab_size=c.vocab_size if c.training_heads else None,
            max_positions=c.max_text_positions if c.training_heads else None,
            attention=ATTENTION_IMPLS[c.qformer_attention],
        )
        self.quantize = VectorQuantizer(c.codebook_size, c.code_dim)
        self.encode_task_layer = task_layer(hidden, hidden, c.code_dim)
        self.decode_task_layer = task_layer(c.code_dim, c.code_dim, hidden)
        self.pos_embed_image = nn.Parameter(torch.zeros(1, NUM_QUERY_TOKENS, hidden))
        self.blocks_image = self._head_blocks()
        self.image_down = image_down(hidden, c.image_down_dims)
        self.distill_image_proj = nn.Linear(NUM_QUERY_TOKENS * c.image_down_dims[2], c.generation_embed_dim)
        if c.training_heads:
            self.pos_embed = nn.Parameter(torch.zeros(1, NUM_QUERY_TOKENS, hidden))
            self.blocks = self._head_blocks()
            self.vision_proj = nn.Linear(hidden, c.proj_dim)
            self.text_proj = nn.Linear(hidden, c.proj_dim)
            self.temp = nn.Parameter(torch.tensor(TEMP_INIT))
        self.reset_parameters()

    def _head_blocks(self) -> nn.ModuleList:
        c = self.config
        return nn.ModuleList(
            Block(c.qformer_hidden, c.head_heads, c.head_mlp_dim, c.head_eps) for _ in range(c.head_depth)
        )

    # -----------------------------------------------------------------------------------------
    # Initialisation

    def reset_parameters(self, names: Iterable[str] | None = None) -> None:
        """(Re-)initialise all parameters, or only those named (full state-dict names).

        Raises
        ------
        KeyError
            A name that is not a parameter of this model.
        """
        params = dict(self.named_parameters())
        chosen = list(params) if names is None else list(names)
        unknown = [n for n in chosen if n not in params]
        if unknown:
            raise KeyError(f"SeedTokenizer.reset_parameters: not parameters of this model: {unknown}")
        with torch.no_grad():
            for name in chosen:
                owner_name, _, leaf = name.rpartition(".")
                self._init_parameter(self.get_submodule(owner_name), leaf, params[name])

    def _init_parameter(self, owner: nn.Module, leaf: str, p: torch.Tensor) -> None:
        if isinstance(owner, nn.LayerNorm) and leaf == "weight":
            nn.init.ones_(p)
        elif owner is self.quantize.embedding:
            bound = 1.0 / self.config.codebook_size
            nn.init.uniform_(p, -bound, bound)
        elif isinstance(owner, nn.Embedding):
            nn.init.normal_(p, std=INIT_STD)
        elif isinstance(owner, (nn.Linear, nn.Conv2d)) and leaf == "weight":
            nn.init.trunc_normal_(p, std=INIT_STD)
        elif leaf == "bias" or leaf in _ZERO_INIT:
            nn.init.zeros_(p)
        elif leaf == "temp":
            nn.init.constant_(p, TEMP_INIT)
        else:
            # query_tokens, cls_token and the position embeddings.
            nn.init.trunc_normal_(p, std=INIT_STD)

    def _images(self, images: object, op: str) -> torch.Tensor:
        """Checked images, cast to the ViT's dtype."""
        images = check_images(f"SeedTokenizer.{op}", images, self.config.image_size, self.query_tokens.device)
        return images.to(self.visual_encoder.patch_embed.proj.weight.dtype)

    def _codes(self, codes: object, op: str, check_range: bool) -> torch.Tensor:
        return check_codes(f"SeedTokenizer.{op}", codes, self.config.codebook_size, self.query_tokens.device,
                           check_range=check_range)

    # -----------------------------------------------------------------------------------------
    # Inference

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """ViT tokens after ``ln_vision``.

        Parameters
        ----------
        images : Tensor ``[B, 3, S, S]``, floating, preprocessed (spec §2), on the model's device
            Cast to the ViT's weight dtype.

        Returns
        -------
        Tensor ``[B, 1 + (S/p)², vit_width]`` (``[B, 257, 1408]``), dtype of the ViT weights.

        Raises
        ------
        TypeError
            Not a floating tensor.
        ValueError
            Wrong shape, or not on the model's device.
        """
        return self.ln_vision(self.vit_tokens(images))

    def vit_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The ViT's output before ``ln_vision`` (stage 1 trains ``ln_vision``): as :meth:`image_features`."""
        return self.visual_encoder(self._images(images, "image_features"))

    def causal_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """The Q-Former output (the causal embeddings that are quantised).

        Parameters
        ----------
        images : Tensor ``[B, 3, S, S]``, as :meth:`image_features`

        Returns
        -------
        Tensor ``[B, 32, qformer_hidden]``, dtype of the Q-Former weights.
        """
        return self.causal_embeddings_from_vit(self.vit_tokens(images))

    def causal_embeddings_from_vit(self, vit_tokens: torch.Tensor) -> torch.Tensor:
        """:meth:`causal_embeddings` from the ViT's output (:meth:`vit_tokens`), e.g. cached features.

        Parameters
        ----------
        vit_tokens : Tensor ``[B, 1 + (S/p)², vit_width]``

        Returns
        -------
        Tensor ``[B, 32, qformer_hidden]``, dtype of the Q-Former weights.
        """
        return self.Qformer(self.query_tokens, self.ln_vision(vit_tokens).to(self.query_tokens.dtype))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images → visual codes (``get_codebook_indices``).

        Parameters
        ----------
        images : Tensor ``[B, 3, S, S]``, floating, preprocessed (CLIP mean/std, spec §2)

        Returns
        -------
        Tensor ``[B, 32]``, int64, in ``[0, codebook_size)``.

        Raises
        ------
        TypeError, ValueError
            As :meth:`image_features`.
        """
        return self.encode_causal(self.causal_embeddings(images))

    @torch.no_grad()
    def encode_causal(self, causal: torch.Tensor) -> torch.Tensor:
        """Causal embeddings (:meth:`causal_embeddings`, e.g. cached) → visual codes, as :meth:`encode`.

        Parameters
        ----------
        causal : Tensor ``[B, 32, qformer_hidden]``, floating, B >= 1, on the model's device

        Returns
        -------
        Tensor ``[B, 32]``, int64, in ``[0, codebook_size)``.

        Raises
        ------
        TypeError, ValueError
            Not a floating tensor of that shape on the model's device.
        """
        if not isinstance(causal, torch.Tensor) or not causal.is_floating_point():
            raise TypeError(f"encode_causal: causal must be a floating tensor, got "
                            f"{causal.dtype if isinstance(causal, torch.Tensor) else type(causal).__name__}")
        expected = (NUM_QUERY_TOKENS, self.config.qformer_hidden)
        if causal.dim() != 3 or causal.shape[0] < 1 or tuple(causal.shape[1:]) != expected:
            raise ValueError(f"encode_causal: causal must have shape [B >= 1, {expected[0]}, {expected[1]}], "
                             f"got {tuple(causal.shape)}")
        if causal.device != self.query_tokens.device:
            raise ValueError(f"encode_causal: causal is on {causal.device}, the model on {self.query_tokens.device}")
        return self.quantize.encode(self.encode_task_layer(causal.to(self.query_tokens.dtype)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``model(images)`` is :meth:`encode` (the training losses are :mod:`seedfast.train.tokenizer_losses`)."""
        return self.encode(images)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw images → codes: :func:`~seedfast.models.preprocess.clip_preprocess`, then :meth:`encode`.

        Parameters
        ----------
        pixels : Tensor ``[B, 3, H, W]``, uint8 in [0, 255] or floating in [0, 1], any size
            Resized to ``image_size`` (bilinear, aspect ratio not kept) and normalised with the
            CLIP mean/std, as the official inference transform.

        Returns
        -------
        Tensor ``[B, 32]``, int64.

        Raises
        ------
        TypeError, ValueError
            From ``clip_preprocess`` (not a uint8/floating ``[B, 3, H, W]`` tensor) or :meth:`encode`.
        """
        return self.encode(clip_preprocess(pixels, size=self.config.image_size))

    def embed_codes(self, codes: torch.Tensor, *, check_range: bool = True) -> torch.Tensor:
        """Codes → causal embeddings (``get_codebook_entry`` then ``decode_task_layer``).

        Parameters
        ----------
        codes : Tensor ``[B, 32]``, int64 or int32, on the model's device
        check_range : bool
            Verify ``0 <= codes < codebook_size`` (one host synchronisation).

        Returns
        -------
        Tensor ``[B, 32, qformer_hidden]``, dtype of the weights.

        Raises
        ------
        TypeError
            Not an int64/int32 tensor.
        ValueError
            Shape other than ``[B, 32]``, wrong device, or (with ``check_range``) a code out of range.
        """
        codes = self._codes(codes, "embed_codes", check_range)
        return self.decode_task_layer(self.quantize.get_codebook_entry(codes))

    def generation_embedding(self, codes: torch.Tensor, *, check_range: bool = True) -> torch.Tensor:
        """Codes → the unCLIP image embedding the de-tokenizer is conditioned on.

        Parameters
        ----------
        codes : Tensor ``[B, 32]``, int64 or int32
        check_range : bool
            As :meth:`embed_codes`.

        Returns
        -------
        Tensor ``[B, generation_embed_dim]`` (``[B, 1024]``), dtype of the weights.

        Raises
        ------
        TypeError, ValueError
            As :meth:`embed_codes`.
        """
        codes = self._codes(codes, "generation_embedding", check_range)
        return self.generation_head(self.decode_task_layer(self.quantize.get_codebook_entry(codes)))

    def generation_head(self, h: torch.Tensor) -> torch.Tensor:
        """Decoded causal embeddings → the generation embedding (``blocks_image`` → ``image_down``
        → ``distill_image_proj``).

        Parameters
        ----------
        h : Tensor ``[B, 32, qformer_hidden]``
            ``decode_task_layer`` of the quantised codes.

        Returns
        -------
        Tensor ``[B, generation_embed_dim]``
        """
        x = h + self.pos_embed_image
        for block in self.blocks_image:
            x = block(x)
        return self.distill_image_proj(self.image_down(x).flatten(1))

    # -----------------------------------------------------------------------------------------
    # Training features (the losses are seedfast.train.tokenizer_losses)

    def contrastive_features(
        self, vit_tokens: torch.Tensor, text_ids: torch.Tensor, text_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1's normalised image and text features, from ViT tokens (before ``ln_vision``).

        Parameters
        ----------
        vit_tokens : Tensor ``[B, 1 + (S/p)², vit_width]``
            :meth:`vit_tokens` of the images, or cached ViT features.
        text_ids : Tensor ``[B, T]``, int64
            BERT token ids, ``[CLS]`` first, right-padded, ``T <= max_text_positions``.
        text_lengths : Tensor ``[B]``, integer
            Real tokens per row (``attention_mask.sum(1)``).

        Returns
        -------
        image_feat, text_feat : Tensor ``[B, embed_dim]``, L2-normalised
            ``vision_proj`` of the last (32nd) query; ``text_proj`` of the text ``[CLS]``.
        """
        h = self.causal_embeddings_from_vit(vit_tokens)
        # The official code projects all 32 queries and keeps the last one; projecting only
        # the last one is the same (the projection and the normalisation are per token).
        image_feat = F.normalize(self.vision_proj(h[:, -1]), dim=-1)
        text_feat = F.normalize(self.text_proj(self.Qformer.forward_text(text_ids, text_lengths)[:, 0]), dim=-1)
        return image_feat, text_feat

    def reconstruct_causal(self, h: torch.Tensor) -> torch.Tensor:
        """Stage 2's reconstruction branch: decoded embeddings → the causal embeddings they came from.

        Parameters
        ----------
        h : Tensor ``[B, 32, qformer_hidden]``
            ``decode_task_layer`` of the quantised codes.

        Returns
        -------
        Tensor ``[B, 32, qformer_hidden]`` (``blocks`` over ``h + pos_embed``), compared by
        cosine with the Q-Former's output.

        Raises
        ------
        RuntimeError
            The model was built without ``training_heads``.
        """
        if not self.config.training_heads:
            raise RuntimeError("SeedTokenizer.reconstruct_causal: needs the training heads; build the model "
                               "with SeedTokenizerConfig(training_heads=True)")
        x = h + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x

    @staticmethod
    def trained_modules(stage: int) -> tuple[str, ...]:
        """Top-level attribute names trained in ``stage`` (1 or 2); all others are frozen.

        Raises
        ------
        ValueError
            ``stage`` not 1 or 2.
        """
        if stage not in STAGE_MODULES:
            raise ValueError(f"SeedTokenizer.trained_modules: stage must be 1 or 2, got {stage!r}")
        return STAGE_MODULES[stage]

    def trainable_parameters(self, stage: int) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` pairs trained in ``stage``, in ``named_parameters`` order.

        Stage 1: Q-Former (text path included), ``query_tokens``, ``ln_vision``,
        ``vision_proj``, ``text_proj``, ``temp``. Stage 2: codebook, task layers, both
        position embeddings and block stacks, ``image_down``, ``distill_image_proj``.
        """
        top = set(self.trained_modules(stage))
        return [(n, p) for n, p in self.named_parameters() if n.split(".", 1)[0] in top]

    def set_trainable(self, stage: int) -> None:
        """``requires_grad`` on exactly the parameters of :meth:`trainable_parameters` for ``stage``."""
        trained = {n for n, _ in self.trainable_parameters(stage)}
        for name, p in self.named_parameters():
            p.requires_grad_(name in trained)

    # -----------------------------------------------------------------------------------------
    # Checkpoints

    @classmethod
    def from_official(
        cls,
        quantizer_path: str | Path,
        vit_path: str | Path | None = None,
        *,
        config: SeedTokenizerConfig | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> SeedTokenizer:
        """Load the released ``seed_quantizer.pt`` (+ ``eva_vit_g.pth``) by the official key names.

        See :func:`seedfast.models.checkpoints.load_official` for the parameters and errors.
        """
        load_official = importlib.import_module(_CHECKPOINTS).load_official
        model, _ = load_official(quantizer_path, vit_path, config=config, dtype=dtype, device=device)
        return model

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` + ``config.json`` to ``directory``, atomically and with
        checksums; return it (see :func:`seedfast.models.checkpoints.save_tokenizer`)."""
        return importlib.import_module(_CHECKPOINTS).save_tokenizer(self, directory)

    @classmethod
    def load(
        cls, directory: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> SeedTokenizer:
        """Read and verify a directory written by :meth:`save` (see
        :func:`seedfast.models.checkpoints.load_tokenizer`)."""
        return importlib.import_module(_CHECKPOINTS).load_tokenizer(directory, device=device, dtype=dtype)
