"""The SEED de-tokenizer: generation embeddings ``[B, E]`` → RGB images ``[B, 3, H, W]`` in [0, 1].

The tokenizer's generation head maps 32 codes to one ``E = 1024``-d unCLIP image embedding
(spec §1, §7). :class:`SeedDetokenizer` turns such embeddings into pixels; callers use only
:meth:`SeedDetokenizer.decode`, which both back ends implement:

* :class:`UnclipDetokenizer` — the official decoder (spec §8): Stable-Diffusion-2.1-unCLIP
  loaded with diffusers from a local directory, conditioned on the embedding as
  ``image_embeds``, empty prompt, ``noise_level=0``, 20 steps of the repo's scheduler,
  guidance 10, 768×768 output.
* :class:`PixelDetokenizer` — the embedded default for the CPU demo and tests: a small
  ``UNet2DConditionModel`` denoising RGB pixels directly at low resolution, conditioned on the
  embedding through its class-embedding projection, trained here with v-prediction and sampled
  with DPM-Solver++.

Both draw their starting noise on the CPU from ``torch.Generator``s seeded by ``decode``'s
``seed``, so a seed gives the same noise on every device, and a batch runs as one batched
call. diffusers and transformers are imported only when a back end is built.
"""
from __future__ import annotations

import abc
import dataclasses
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from seedfast._checks import dataclass_from_dict, is_int
from seedfast.constants import GENERATION_EMBED_DIM

if TYPE_CHECKING:
    from diffusers import StableUnCLIPImg2ImgPipeline, UNet2DConditionModel

# Spec §8: the official decode call.
UNCLIP_STEPS = 20
UNCLIP_GUIDANCE_SCALE = 10.0
UNCLIP_NOISE_LEVEL = 0

PIXEL_FORMAT = "seedfast.pixel_detokenizer"
PIXEL_FORMAT_VERSION = 1
PIXEL_CONFIG_FILE = "detokenizer.json"
PIXEL_WEIGHTS_FILE = "detokenizer.safetensors"
_UNCLIP_INDEX_FILE = "model_index.json"
_NUM_TRAIN_TIMESTEPS = 1000
_BETA_SCHEDULE = "squaredcos_cap_v2"
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_MAX_SEED = 2**64 - 1

Seed = int | Sequence[int]


def default_device() -> torch.device:
    """The GPU when one is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_float_tensor(where: str, name: str, value: object, ndim: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in _FLOAT_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in _FLOAT_DTYPES)
        raise TypeError(f"{where}: {name} must have dtype in ({names}), got {str(value.dtype).removeprefix('torch.')}")
    if value.dim() != ndim:
        raise ValueError(f"{where}: {name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    return value


def _check_embeddings(where: str, name: str, value: object, embed_dim: int) -> torch.Tensor:
    value = _check_float_tensor(where, name, value, 2)
    if value.shape[1] != embed_dim:
        raise ValueError(
            f"{where}: {name} must have shape [B, {embed_dim}] (this de-tokenizer's embedding size), "
            f"got {tuple(value.shape)}"
        )
    if value.shape[0] == 0:
        raise ValueError(f"{where}: {name} must hold at least one embedding, got shape {tuple(value.shape)}")
    return value


def _check_seed_value(value: object, name: str) -> int:
    if not is_int(value):
        raise TypeError(f"decode: {name} must be an int, got {type(value).__name__}")
    if not 0 <= value <= _MAX_SEED:
        raise ValueError(f"decode: {name} must be in [0, 2**64), got {value}")
    return value


def _generators(seed: object, batch: int) -> list[torch.Generator]:
    """One CPU generator for an int seed, or one per row for a sequence of ``batch`` seeds."""
    if isinstance(seed, Sequence) and not isinstance(seed, (str, bytes)):
        if len(seed) != batch:
            raise ValueError(f"decode: seed must be an int or {batch} ints (one per embedding), got {len(seed)}")
        return [torch.Generator().manual_seed(_check_seed_value(s, f"seed[{i}]")) for i, s in enumerate(seed)]
    return [torch.Generator().manual_seed(_check_seed_value(seed, "seed"))]


def _randn(generators: list[torch.Generator], batch: int, row_shape: tuple[int, ...]) -> torch.Tensor:
    """``[batch, *row_shape]`` standard normal float32 on the CPU.

    With one generator the rows are drawn as one tensor; with one generator per row, row
    ``i`` comes from ``generators[i]`` alone, so it does not depend on the rest of the batch.
    """
    if len(generators) == 1:
        return torch.randn((batch, *row_shape), generator=generators[0])
    return torch.stack([torch.randn(row_shape, generator=g) for g in generators])


class SeedDetokenizer(abc.ABC):
    """Generation embeddings → images, whatever back end is loaded.

    Build one with :meth:`from_unclip` (the official SD-2.1-unCLIP decoder), :meth:`tiny` or
    :class:`PixelDetokenizer` (the embedded pixel-space default), or :meth:`load` (either,
    from a directory).

    Attributes
    ----------
    embed_dim : int
        ``E``, the size of the embeddings :meth:`decode` takes (1024 for SEED-2).
    image_size : int
        Height and width of the decoded images.
    device : torch.device
        Where the model runs; :meth:`decode` returns its images there.
    default_steps : int
        Sampler steps when :meth:`decode` is given none.
    default_guidance_scale : float
        Classifier-free guidance scale when :meth:`decode` is given none.
    """

    embed_dim: int
    image_size: int
    device: torch.device
    default_steps: int
    default_guidance_scale: float

    @torch.no_grad()
    def decode(
        self,
        embeddings: torch.Tensor,
        *,
        seed: Seed = 0,
        steps: int | None = None,
        guidance_scale: float | None = None,
        negative_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Generate one image per embedding, as one batched sampling run.

        Parameters
        ----------
        embeddings : Tensor ``[B, E]``, float32/float16/bfloat16/float64, any device
            Generation embeddings (SEED: the output of ``distill_image_proj``). Cast to the
            model's device and dtype.
        seed : int or sequence of B ints
            Seeds the starting noise, drawn in float32 on the CPU so that a seed gives the same
            noise on every device. An int seeds one generator that draws the whole batch; a
            sequence seeds one generator per row, so row ``i`` depends only on
            ``(embeddings[i], seed[i])`` and not on how rows were batched.
        steps : int, optional
            Sampler steps (default :attr:`default_steps`).
        guidance_scale : float >= 1, optional
            Classifier-free guidance ``u + g·(c − u)`` (default :attr:`default_guidance_scale`);
            ``1`` runs the conditional branch only, anything larger doubles the model batch.
        negative_embeddings : Tensor ``[B, E]``, optional
            What the unconditional branch ``u`` is conditioned on, instead of the all-zero
            embedding (spec §8's ``negative_indices``). Needs ``guidance_scale > 1``.

        Returns
        -------
        Tensor ``[B, 3, image_size, image_size]``, float32 in [0, 1], on :attr:`device`
            RGB, channels first.

        Raises
        ------
        TypeError
            Embeddings not floating tensors, or a seed that is not an int.
        ValueError
            Embeddings not ``[B, E]`` with this de-tokenizer's ``E`` (or empty), negative
            embeddings of another shape or without guidance, seeds outside [0, 2**64) or not
            one per row, ``steps`` < 1, or ``guidance_scale`` < 1.
        """
        embeddings = _check_embeddings("decode", "embeddings", embeddings, self.embed_dim)
        batch = embeddings.shape[0]
        if negative_embeddings is not None:
            negative_embeddings = _check_embeddings(
                "decode", "negative_embeddings", negative_embeddings, self.embed_dim
            )
            if negative_embeddings.shape != embeddings.shape:
                raise ValueError(
                    f"decode: negative_embeddings must have the shape of embeddings {tuple(embeddings.shape)}, "
                    f"got {tuple(negative_embeddings.shape)}"
                )
        steps = self.default_steps if steps is None else steps
        if not is_int(steps) or steps < 1:
            raise ValueError(f"decode: steps must be an int >= 1, got {steps!r}")
        guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        if not isinstance(guidance_scale, (int, float)) or not 1.0 <= float(guidance_scale) < math.inf:
            raise ValueError(f"decode: guidance_scale must be a finite number >= 1, got {guidance_scale!r}")
        if negative_embeddings is not None and float(guidance_scale) <= 1.0:
            raise ValueError(
                f"decode: negative_embeddings are only used with guidance_scale > 1, got {guidance_scale!r}"
            )
        generators = _generators(seed, batch)
        return self._sample(embeddings, negative_embeddings, generators, steps, float(guidance_scale))

    @abc.abstractmethod
    def _sample(
        self,
        embeddings: torch.Tensor,
        negative_embeddings: torch.Tensor | None,
        generators: list[torch.Generator],
        steps: int,
        guidance_scale: float,
    ) -> torch.Tensor:
        """The back end's sampler, on validated arguments; returns ``[B, 3, H, W]`` float32 in [0, 1]."""

    @staticmethod
    def from_unclip(
        path: str | os.PathLike[str],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        variant: str | None = None,
    ) -> UnclipDetokenizer:
        """The official decoder from a local ``stabilityai/stable-diffusion-2-1-unclip`` directory.

        See :meth:`UnclipDetokenizer.from_pretrained`.
        """
        return UnclipDetokenizer.from_pretrained(path, device=device, dtype=dtype, variant=variant)

    @staticmethod
    def tiny(
        embed_dim: int = GENERATION_EMBED_DIM,
        image_size: int = 32,
        *,
        device: torch.device | str | None = None,
        seed: int = 0,
    ) -> PixelDetokenizer:
        """An untrained embedded de-tokenizer with the :meth:`PixelDetokenizerConfig.tiny` preset."""
        return PixelDetokenizer(PixelDetokenizerConfig.tiny(embed_dim, image_size), device=device, seed=seed)

    @staticmethod
    def load(
        path: str | os.PathLike[str],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SeedDetokenizer:
        """Load whichever back end ``path`` holds.

        A diffusers pipeline directory (with ``model_index.json``) loads through
        :meth:`from_unclip`; a directory written by :meth:`PixelDetokenizer.save` loads a
        :class:`PixelDetokenizer` (``dtype`` must then be None or float32).

        Raises
        ------
        FileNotFoundError
            ``path`` is not a directory, or holds neither kind of de-tokenizer.
        ValueError
            As the back end's loader (e.g. a pixel de-tokenizer asked for in float16).
        """
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"SeedDetokenizer.load: path {str(root)!r} is not a directory")
        if (root / _UNCLIP_INDEX_FILE).is_file():
            return UnclipDetokenizer.from_pretrained(root, device=device, dtype=dtype)
        if (root / PIXEL_CONFIG_FILE).is_file():
            return PixelDetokenizer.load(root, device=device, dtype=dtype)
        raise FileNotFoundError(
            f"SeedDetokenizer.load: {str(root)!r} holds neither {_UNCLIP_INDEX_FILE} (a diffusers unCLIP pipeline) "
            f"nor {PIXEL_CONFIG_FILE} (a PixelDetokenizer)"
        )


# ---------------------------------------------------------------------------------------------
# The official back end: Stable-Diffusion-2.1-unCLIP through diffusers.


class UnclipDetokenizer(SeedDetokenizer):
    """The official SEED-2 decoder: SD-2.1-unCLIP conditioned on the generation embedding.

    One :meth:`decode` call runs the whole batch through the UNet together (twice the batch
    with guidance), with the diffusers pipeline's own conditioning code
    (``noise_image_embeddings``: normaliser scale → noise at ``noise_level`` → unscale → concat
    of the noise-level sinusoid) and a fresh copy of the repo's scheduler per call. Unlike the
    official ``ImageTokenizer.decode`` (spec §13 item 7) it draws the latents per call from the
    seed instead of reusing one ``[1, 4, 96, 96]`` tensor (which limits it to batch 1),
    encodes the empty prompt once at construction instead of every call, keeps every module
    on one device, and never loads the CLIP image encoder (``image_embeds`` replaces it).

    Parameters
    ----------
    pipeline : diffusers.StableUnCLIPImg2ImgPipeline
        Taken over: moved to ``device``/``dtype`` in place; its text encoder encodes the empty
        prompt once, then the pipeline's ``text_encoder``, ``tokenizer``, ``image_encoder``
        and ``feature_extractor`` are set to None to free their memory (decoding needs none
        of them).
    device : torch.device or str, optional
        Default: CUDA when available, else CPU.
    dtype : torch.dtype, optional
        Default: float16 on CUDA, float32 elsewhere.
    noise_level : int
        unCLIP noise level of the embeddings (spec §8: 0).

    Raises
    ------
    TypeError
        ``pipeline`` is not a ``StableUnCLIPImg2ImgPipeline``.
    ValueError
        Its UNet is not conditioned through a class-embedding projection of twice the
        normaliser's width (not an unCLIP UNet), it has no text encoder, or ``noise_level`` is
        outside the noising scheduler's range.
    """

    def __init__(
        self,
        pipeline: StableUnCLIPImg2ImgPipeline,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        noise_level: int = UNCLIP_NOISE_LEVEL,
    ) -> None:
        from diffusers import StableUnCLIPImg2ImgPipeline

        where = "UnclipDetokenizer"
        if not isinstance(pipeline, StableUnCLIPImg2ImgPipeline):
            raise TypeError(f"{where}: pipeline must be a StableUnCLIPImg2ImgPipeline, got {type(pipeline).__name__}")
        unet_config = pipeline.unet.config
        normaliser_dim = pipeline.image_normalizer.mean.shape[-1]
        projection_dim = unet_config.projection_class_embeddings_input_dim
        if unet_config.class_embed_type != "projection" or projection_dim != 2 * normaliser_dim:
            raise ValueError(
                f"{where}: not an unCLIP UNet: expected class_embed_type='projection' with "
                f"projection_class_embeddings_input_dim = 2 × the image normaliser's {normaliser_dim}, got "
                f"{unet_config.class_embed_type!r} and {projection_dim}"
            )
        if pipeline.text_encoder is None or pipeline.tokenizer is None:
            raise ValueError(f"{where}: pipeline needs its text_encoder and tokenizer to encode the empty prompt once")
        levels = pipeline.image_noising_scheduler.config.num_train_timesteps
        if not is_int(noise_level) or not 0 <= noise_level < levels:
            raise ValueError(f"{where}: noise_level must be an int in [0, {levels}), got {noise_level!r}")

        self.device, self.dtype = _unclip_placement(device, dtype)
        pipeline.to(self.device)
        # Casting only when needed: diffusers warns on every dtype-changing .to().
        if pipeline.unet.dtype != self.dtype:
            pipeline.to(dtype=self.dtype)
        pipeline.set_progress_bar_config(disable=True)
        # Spec §8: prompt "" for both guidance branches; its encoding never changes.
        prompt_embeds, _ = pipeline.encode_prompt("", self.device, 1, False)
        self.prompt_embeds = prompt_embeds.to(self.dtype)
        pipeline.text_encoder = None
        pipeline.tokenizer = None
        pipeline.image_encoder = None
        pipeline.feature_extractor = None

        self.pipeline = pipeline
        self.noise_level = noise_level
        self.embed_dim = normaliser_dim
        self.latent_channels = unet_config.in_channels
        self.latent_size = unet_config.sample_size
        self.image_size = self.latent_size * pipeline.vae_scale_factor
        self.default_steps = UNCLIP_STEPS
        self.default_guidance_scale = UNCLIP_GUIDANCE_SCALE

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        variant: str | None = None,
        noise_level: int = UNCLIP_NOISE_LEVEL,
    ) -> UnclipDetokenizer:
        """Load SD-2.1-unCLIP from a local diffusers directory; nothing is downloaded.

        Parameters
        ----------
        path : str or PathLike
            A ``StableUnCLIPImg2ImgPipeline`` directory (``save_pretrained`` layout, e.g. a
            local copy of ``stabilityai/stable-diffusion-2-1-unclip``). Its image encoder and
            feature extractor are not loaded.
        device, dtype, noise_level
            As for the constructor (float16 on CUDA, float32 elsewhere by default).
        variant : str, optional
            Weight-file variant to load, e.g. ``"fp16"``.

        Raises
        ------
        FileNotFoundError
            ``path`` is not a directory or has no ``model_index.json``.
        ValueError
            As the constructor.
        """
        from diffusers import StableUnCLIPImg2ImgPipeline

        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"UnclipDetokenizer.from_pretrained: path {str(root)!r} is not a directory")
        if not (root / _UNCLIP_INDEX_FILE).is_file():
            raise FileNotFoundError(
                f"UnclipDetokenizer.from_pretrained: {str(root)!r} has no {_UNCLIP_INDEX_FILE}; expected a diffusers "
                "StableUnCLIPImg2ImgPipeline directory (stabilityai/stable-diffusion-2-1-unclip)"
            )
        run_device, run_dtype = _unclip_placement(device, dtype)
        pipeline = StableUnCLIPImg2ImgPipeline.from_pretrained(
            root,
            **_dtype_argument(run_dtype),
            variant=variant,
            local_files_only=True,
            image_encoder=None,
            feature_extractor=None,
        )
        return cls(pipeline, device=run_device, dtype=run_dtype, noise_level=noise_level)

    def _condition(self, embeddings: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``[B, E]`` → the UNet's ``class_labels`` ``[B, 2E]`` exactly as the diffusers pipeline builds them."""
        return self.pipeline.noise_image_embeddings(embeddings, self.noise_level, noise=noise)

    def _sample(
        self,
        embeddings: torch.Tensor,
        negative_embeddings: torch.Tensor | None,
        generators: list[torch.Generator],
        steps: int,
        guidance_scale: float,
    ) -> torch.Tensor:
        pipeline = self.pipeline
        batch = embeddings.shape[0]
        place = {"device": self.device, "dtype": self.dtype}
        # Draw order per generator, as the diffusers pipeline given these latents: latents,
        # then the embedding noise (then the negative's).
        latents = _randn(generators, batch, (self.latent_channels, self.latent_size, self.latent_size)).to(**place)
        class_labels = self._condition(embeddings.to(**place), _randn(generators, batch, (self.embed_dim,)).to(**place))
        guided = guidance_scale > 1.0
        if guided:
            if negative_embeddings is None:
                unconditional = torch.zeros_like(class_labels)
            else:
                noise = _randn(generators, batch, (self.embed_dim,)).to(**place)
                unconditional = self._condition(negative_embeddings.to(**place), noise)
            class_labels = torch.cat([unconditional, class_labels])
        text = self.prompt_embeds.expand(class_labels.shape[0], -1, -1)

        # A fresh scheduler per call: multistep schedulers keep per-run state.
        scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
        scheduler.set_timesteps(steps, device=self.device)
        step_kwargs = _scheduler_step_kwargs(scheduler, generators[0])
        latents = latents * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            prediction = pipeline.unet(
                model_input, t, encoder_hidden_states=text, class_labels=class_labels, return_dict=False
            )[0]
            if guided:
                prediction = _guide(prediction, guidance_scale)
            latents = scheduler.step(prediction, t, latents, **step_kwargs, return_dict=False)[0]
        images = pipeline.vae.decode(latents / pipeline.vae.config.scaling_factor, return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)


def _unclip_placement(device: torch.device | str | None, dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    """Defaults of the official decoder: CUDA when available, float16 there and float32 elsewhere."""
    run_device = torch.device(device) if device is not None else default_device()
    return run_device, dtype if dtype is not None else (torch.float16 if run_device.type == "cuda" else torch.float32)


def _guide(prediction: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance ``u + g·(c − u)`` from a prediction over the batch ``[u; c]``."""
    unconditional, conditional = prediction.chunk(2)
    return unconditional + scale * (conditional - unconditional)


def _dtype_argument(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``from_pretrained``'s dtype keyword: diffusers renamed ``torch_dtype`` to ``dtype`` in 2026
    and warns on the old name; older releases know only ``torch_dtype``."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


def _scheduler_step_kwargs(scheduler: Any, generator: torch.Generator) -> dict[str, Any]:
    """What the diffusers pipelines pass to ``scheduler.step``: ``eta=0`` and the generator, where accepted."""
    import inspect

    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = 0.0
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


# ---------------------------------------------------------------------------------------------
# The embedded back end: a small pixel-space diffusion UNet.


@dataclass(frozen=True)
class PixelDetokenizerConfig:
    """Shape of a :class:`PixelDetokenizer`.

    The model is a diffusers ``UNet2DConditionModel`` on RGB pixels: one resolution level per
    entry of ``channels`` (each but the last halves the resolution), ``layers_per_block``
    ResNet blocks per level with FiLM (scale-shift) conditioning, self-attention at the levels
    listed in ``attention_levels`` and no cross-attention. The embedding enters through the
    UNet's class-embedding projection (``class_embed_type="projection"``), added to the
    timestep embedding. Training is v-prediction on the cosine (``squaredcos_cap_v2``) DDPM
    schedule of 1000 steps; sampling is DPM-Solver++ (2M, trailing timesteps, dynamic
    thresholding).

    Attributes
    ----------
    embed_dim : int
        ``E``, the size of the conditioning embedding.
    image_size : int
        Height = width of the images, divisible by ``2 ** (len(channels) - 1)``.
    channels : tuple of int
        Width of each level, each divisible by ``norm_groups``.
    layers_per_block : int
    attention_levels : tuple of int
        Indices into ``channels`` of the levels that get self-attention.
    norm_groups : int
        GroupNorm groups.
    attention_head_dim : int
    cond_dropout : float in [0, 1)
        Training probability of replacing an embedding by zeros, which teaches the
        unconditional branch that classifier-free guidance uses.
    sample_steps : int
        Default DPM-Solver++ steps of ``decode``.
    guidance_scale : float >= 1
        Default guidance scale of ``decode``.
    """

    embed_dim: int = GENERATION_EMBED_DIM
    image_size: int = 32
    channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = ()
    norm_groups: int = 8
    attention_head_dim: int = 8
    cond_dropout: float = 0.1
    sample_steps: int = 20
    guidance_scale: float = 2.0

    def __post_init__(self) -> None:
        where = "PixelDetokenizerConfig"
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "attention_levels", tuple(self.attention_levels))
        positive = ("embed_dim", "image_size", "layers_per_block", "norm_groups", "attention_head_dim", "sample_steps")
        for name in positive:
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{where}: {name} must be an int >= 1, got {value!r}")
        if not self.channels or any(not is_int(c) or c < 1 for c in self.channels):
            raise ValueError(f"{where}: channels must be a non-empty tuple of positive ints, got {self.channels!r}")
        if any(c % self.norm_groups for c in self.channels):
            raise ValueError(
                f"{where}: every channel count must be divisible by norm_groups={self.norm_groups}, got {self.channels}"
            )
        attention_widths = [self.channels[i] for i in self.attention_levels if 0 <= i < len(self.channels)]
        if len(attention_widths) != len(self.attention_levels):
            raise ValueError(
                f"{where}: attention_levels must index channels (0..{len(self.channels) - 1}), "
                f"got {self.attention_levels}"
            )
        if any(c % self.attention_head_dim for c in attention_widths):
            raise ValueError(
                f"{where}: attention levels' widths must be divisible by attention_head_dim={self.attention_head_dim}, "
                f"got {attention_widths}"
            )
        factor = 2 ** (len(self.channels) - 1)
        if self.image_size % factor:
            raise ValueError(
                f"{where}: image_size must be divisible by 2**(len(channels) - 1) = {factor}, got {self.image_size}"
            )
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ValueError(f"{where}: cond_dropout must be in [0, 1), got {self.cond_dropout!r}")
        if not 1.0 <= self.guidance_scale < math.inf:
            raise ValueError(f"{where}: guidance_scale must be a finite number >= 1, got {self.guidance_scale!r}")

    @classmethod
    def tiny(cls, embed_dim: int = GENERATION_EMBED_DIM, image_size: int = 32) -> PixelDetokenizerConfig:
        """The CPU-demo preset: 0.64 M parameters at E=1024, three levels (16, 32, 64 channels),
        no attention; about 0.3 s per training step of 64 images at 32×32 on two CPU cores."""
        return cls(embed_dim=embed_dim, image_size=image_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        fields = dataclasses.asdict(self)
        return {name: list(value) if isinstance(value, tuple) else value for name, value in fields.items()}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> PixelDetokenizerConfig:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        ValueError
            Unknown field names, or invalid values.
        """
        return dataclass_from_dict(cls, fields)


def _unit_rms(embeddings: torch.Tensor) -> torch.Tensor:
    """Scale each row to unit RMS, leaving all-zero rows (the unconditional embedding) at zero.

    Generation embeddings are unnormalised CLIP image embeddings (spec §7); fixing their
    scale keeps the projection's input in one range whatever produced them.
    """
    rms = embeddings.pow(2).mean(dim=1, keepdim=True).sqrt()
    return embeddings / rms.clamp_min(1e-6)


class PixelDetokenizer(SeedDetokenizer):
    """The embedded de-tokenizer: a small diffusion UNet on RGB pixels, conditioned on ``[B, E]``.

    Train it with :meth:`train` (or :meth:`train_step`) on ``(embeddings, images)`` batches,
    decode with :meth:`decode`, and persist it with :meth:`save` / :meth:`load` (a JSON config
    beside safetensors weights). Runs in float32.

    Parameters
    ----------
    config : PixelDetokenizerConfig
    device : torch.device or str, optional
        Default: CUDA when available, else CPU.
    seed : int
        Seeds the weight initialisation (the global RNG is left untouched).
    """

    def __init__(
        self,
        config: PixelDetokenizerConfig,
        *,
        device: torch.device | str | None = None,
        seed: int = 0,
    ) -> None:
        from diffusers import DDPMScheduler

        if not isinstance(config, PixelDetokenizerConfig):
            raise TypeError(f"PixelDetokenizer: config must be a PixelDetokenizerConfig, got {type(config).__name__}")
        self.config = config
        self.device = torch.device(device) if device is not None else default_device()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.unet = _build_unet(config).to(self.device)
        self.unet.eval()
        self.noise_schedule = DDPMScheduler(
            num_train_timesteps=_NUM_TRAIN_TIMESTEPS, beta_schedule=_BETA_SCHEDULE, prediction_type="v_prediction"
        )
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
        self.embed_dim = config.embed_dim
        self.image_size = config.image_size
        self.default_steps = config.sample_steps
        self.default_guidance_scale = config.guidance_scale

    def num_parameters(self) -> int:
        """Trainable parameter count."""
        return sum(p.numel() for p in self.unet.parameters())

    def _predict(self, sample: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        # The UNet has no cross-attention blocks, so it has no use for encoder_hidden_states.
        return self.unet(sample, timesteps, encoder_hidden_states=None, class_labels=condition, return_dict=False)[0]

    def _check_batch(self, embeddings: object, images: object) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = _check_embeddings("train_step", "embeddings", embeddings, self.embed_dim)
        images = _check_float_tensor("train_step", "images", images, 4)
        size = self.image_size
        if images.shape[1:] != (3, size, size) or images.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"train_step: images must have shape [B, 3, {size}, {size}] with B = {embeddings.shape[0]} "
                f"(the embeddings' batch), got {tuple(images.shape)}"
            )
        return embeddings, images

    def train_step(
        self, embeddings: torch.Tensor, images: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One AdamW step (at :attr:`optimizer`'s current learning rate) on the v-prediction loss.

        Parameters
        ----------
        embeddings : Tensor ``[B, E]``, floating
            Conditioning; each row is replaced by zeros with probability ``cond_dropout``.
        images : Tensor ``[B, 3, H, W]``, floating, values in [0, 1] (not checked)
            Targets, ``H = W = image_size``.
        generator : torch.Generator, optional
            A CPU generator for the timesteps, noise and dropout (then drawn on the CPU and
            moved); default: the global RNG on :attr:`device`.

        Returns
        -------
        Tensor ``[]``, float32
            The loss before the step (detached; reading it synchronises).

        Raises
        ------
        TypeError, ValueError
            Non-floating inputs, or shapes other than ``[B, E]`` and ``[B, 3, H, W]``.
        """
        embeddings, images = self._check_batch(embeddings, images)
        batch = embeddings.shape[0]
        draw_device = "cpu" if generator is not None else self.device
        timesteps = torch.randint(0, _NUM_TRAIN_TIMESTEPS, (batch,), generator=generator, device=draw_device)
        noise = torch.randn(images.shape, generator=generator, device=draw_device)
        keep = torch.rand(batch, 1, generator=generator, device=draw_device) >= self.config.cond_dropout
        timesteps, noise, keep = timesteps.to(self.device), noise.to(self.device), keep.to(self.device)

        clean = images.to(self.device, torch.float32) * 2 - 1
        condition = _unit_rms(embeddings.to(self.device, torch.float32)) * keep
        noisy = self.noise_schedule.add_noise(clean, noise, timesteps)
        target = self.noise_schedule.get_velocity(clean, noise, timesteps)

        self.unet.train()
        loss = F.mse_loss(self._predict(noisy, timesteps, condition), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.optimizer.step()
        self.unet.eval()
        return loss.detach()

    def train(
        self,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        steps: int,
        lr: float = 2e-3,
        *,
        warmup_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        seed: int = 0,
        progress: bool = True,
    ) -> list[float]:
        """Train for ``steps`` steps: linear warm-up, then cosine decay to ``min_lr_ratio · lr``.

        Parameters
        ----------
        batches : iterable of ``(embeddings [B, E], images [B, 3, H, W])``
            Images float in [0, 1]. An iterator is consumed once; a re-iterable (a list, a
            DataLoader) is passed over again when it runs out before ``steps``.
        steps : int >= 1
        lr : float > 0
            Peak learning rate.
        warmup_steps : int, optional
            Default ``min(100, steps // 10)``.
        min_lr_ratio : float in [0, 1]
        seed : int
            Seeds the timesteps, noise and condition dropout.
        progress : bool
            Show a tqdm bar with the running loss.

        Returns
        -------
        list of float
            The loss of every step.

        Raises
        ------
        ValueError
            Bad ``steps``/``lr``/``warmup_steps``/``min_lr_ratio``, bad batches (as
            :meth:`train_step`), or an iterator that runs out before ``steps``.
        """
        from tqdm.auto import tqdm

        if not is_int(steps) or steps < 1:
            raise ValueError(f"train: steps must be an int >= 1, got {steps!r}")
        if not 0.0 < lr < math.inf:
            raise ValueError(f"train: lr must be a finite number > 0, got {lr!r}")
        warmup_steps = min(100, steps // 10) if warmup_steps is None else warmup_steps
        if not is_int(warmup_steps) or not 0 <= warmup_steps <= steps:
            raise ValueError(f"train: warmup_steps must be an int in [0, steps={steps}], got {warmup_steps!r}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"train: min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")

        generator = torch.Generator().manual_seed(seed)
        stream = _batch_stream(batches)
        losses: list[torch.Tensor] = []
        bar = tqdm(range(steps), desc="detokenizer", disable=not progress, leave=False)
        for step in bar:
            batch = next(stream, None)
            if batch is None:
                raise ValueError(
                    f"train: batches ran out after {step} of {steps} steps (pass a re-iterable or more batches)"
                )
            for group in self.optimizer.param_groups:
                group["lr"] = _learning_rate(step, steps, lr, warmup_steps, min_lr_ratio)
            embeddings, images = batch
            losses.append(self.train_step(embeddings, images, generator=generator))
            if progress and (step % 10 == 0 or step == steps - 1):
                bar.set_postfix(loss=f"{losses[-1].item():.4f}")
        return torch.stack(losses).tolist()

    def _sample(
        self,
        embeddings: torch.Tensor,
        negative_embeddings: torch.Tensor | None,
        generators: list[torch.Generator],
        steps: int,
        guidance_scale: float,
    ) -> torch.Tensor:
        from diffusers import DPMSolverMultistepScheduler

        batch, size = embeddings.shape[0], self.image_size
        sample = _randn(generators, batch, (3, size, size)).to(self.device)
        condition = _unit_rms(embeddings.to(self.device, torch.float32))
        guided = guidance_scale > 1.0
        if guided:
            unconditional = (
                torch.zeros_like(condition)
                if negative_embeddings is None
                else _unit_rms(negative_embeddings.to(self.device, torch.float32))
            )
            condition = torch.cat([unconditional, condition])
        scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=_NUM_TRAIN_TIMESTEPS,
            beta_schedule=_BETA_SCHEDULE,
            prediction_type="v_prediction",
            algorithm_type="dpmsolver++",
            solver_order=2,
            timestep_spacing="trailing",
            # Pixel-space model: clip each predicted x0 to its 99.5th-percentile magnitude (at
            # least 1), which keeps guided samples in range.
            thresholding=True,
            sample_max_value=1.0,
        )
        scheduler.set_timesteps(steps, device=self.device)
        sample = sample * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_input = torch.cat([sample, sample]) if guided else sample
            model_input = scheduler.scale_model_input(model_input, t)
            prediction = self._predict(model_input, t.expand(model_input.shape[0]), condition)
            if guided:
                prediction = _guide(prediction, guidance_scale)
            sample = scheduler.step(prediction, t, sample, return_dict=False)[0]
        return (sample / 2 + 0.5).clamp(0, 1)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``detokenizer.json`` (format, version, config) and ``detokenizer.safetensors``
        (UNet weights) into directory ``path``, creating it. The optimizer state is not saved."""
        from safetensors.torch import save_file

        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        header = {"format": PIXEL_FORMAT, "version": PIXEL_FORMAT_VERSION, "config": self.config.to_dict()}
        (root / PIXEL_CONFIG_FILE).write_text(json.dumps(header, indent=2) + "\n")
        weights = {name: t.detach().to("cpu").contiguous() for name, t in self.unet.state_dict().items()}
        save_file(weights, str(root / PIXEL_WEIGHTS_FILE), metadata={"format": PIXEL_FORMAT})

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> PixelDetokenizer:
        """Read what :meth:`save` wrote (``dtype``: None or float32, the only one it runs in).

        Raises
        ------
        FileNotFoundError
            ``path`` is not a directory or lacks one of the two files.
        ValueError
            Another ``dtype``, not a seedfast pixel de-tokenizer, an unknown version, or
            weights that do not match the config.
        """
        from safetensors.torch import load_file

        root = Path(path)
        where = "PixelDetokenizer.load"
        if dtype not in (None, torch.float32):
            raise ValueError(f"{where}: a PixelDetokenizer runs in float32, got dtype={dtype}")
        if not root.is_dir():
            raise FileNotFoundError(f"{where}: path {str(root)!r} is not a directory")
        for name in (PIXEL_CONFIG_FILE, PIXEL_WEIGHTS_FILE):
            if not (root / name).is_file():
                raise FileNotFoundError(f"{where}: {str(root)!r} has no {name}")
        header = json.loads((root / PIXEL_CONFIG_FILE).read_text())
        if not isinstance(header, dict) or header.get("format") != PIXEL_FORMAT:
            raise ValueError(f"{where}: {PIXEL_CONFIG_FILE} is not a {PIXEL_FORMAT} file")
        if header.get("version") != PIXEL_FORMAT_VERSION:
            raise ValueError(f"{where}: unsupported version {header.get('version')!r}; expected {PIXEL_FORMAT_VERSION}")
        model = cls(PixelDetokenizerConfig.from_dict(header["config"]), device=device)
        weights = load_file(str(root / PIXEL_WEIGHTS_FILE))
        try:
            model.unet.load_state_dict(weights, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{where}: weights in {PIXEL_WEIGHTS_FILE} do not match the config: {error}") from error
        return model


def _build_unet(config: PixelDetokenizerConfig) -> UNet2DConditionModel:
    from diffusers import UNet2DConditionModel

    levels = range(len(config.channels))
    down = tuple("AttnDownBlock2D" if i in config.attention_levels else "DownBlock2D" for i in levels)
    up = tuple("AttnUpBlock2D" if i in config.attention_levels else "UpBlock2D" for i in reversed(levels))
    return UNet2DConditionModel(
        sample_size=config.image_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=config.channels,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2D",
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_groups,
        attention_head_dim=config.attention_head_dim,
        resnet_time_scale_shift="scale_shift",
        class_embed_type="projection",
        projection_class_embeddings_input_dim=config.embed_dim,
    )


def _batch_stream(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An iterator's batches once; a re-iterable's pass after pass, until a pass yields nothing."""
    if iter(batches) is batches:
        yield from batches
        return
    while True:
        count = 0
        for count, batch in enumerate(batches, 1):
            yield batch
        if count == 0:
            return


def _learning_rate(step: int, steps: int, peak: float, warmup: int, min_ratio: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
