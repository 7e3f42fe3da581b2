"""The embedded de-tokenizer: a small diffusion UNet on RGB pixels, conditioned on ``[B, E]``.

:class:`PixelDetokenizer` is the default back end of :class:`~seedfast.models.detokenizer.SeedDetokenizer`
for the CPU demo and tests: a ``UNet2DConditionModel`` denoising pixels directly at low
resolution, conditioned on the embedding through its class-embedding projection (and, optionally,
a learned spatial map of it concatenated to the input), sampled with DPM-Solver++. This module holds inference and persistence; its v-prediction training lives in
:mod:`seedfast.train.pixel_detokenizer`. diffusers is imported only when a model is built.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from seedfast._checks import dataclass_from_dict, is_int
from seedfast.checkpoint_io import load_json, load_safetensors, read_folder, write_folder
from seedfast.constants import GENERATION_EMBED_DIM
from seedfast.models.detokenizer import SeedDetokenizer, default_device, guide, randn_rows

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

logger = logging.getLogger(__name__)

PIXEL_FORMAT = "seedfast.pixel_detokenizer"
PIXEL_FORMAT_VERSION = 2
PIXEL_LEGACY_VERSION = 1
"""Folders written before checksums; still read, with a warning."""
PIXEL_CONFIG_FILE = "detokenizer.json"
PIXEL_WEIGHTS_FILE = "detokenizer.safetensors"
_NUM_TRAIN_TIMESTEPS = 1000
_BETA_SCHEDULE = "squaredcos_cap_v2"


@dataclass(frozen=True)
class PixelDetokenizerConfig:
    """Shape of a :class:`PixelDetokenizer`.

    The model is a diffusers ``UNet2DConditionModel`` on RGB pixels: one resolution level per
    entry of ``channels`` (each but the last halves the resolution), ``layers_per_block``
    ResNet blocks per level with FiLM (scale-shift) conditioning, self-attention at the levels
    listed in ``attention_levels`` and no cross-attention. The embedding enters through the
    UNet's class-embedding projection (``class_embed_type="projection"``), added to the
    timestep embedding. With ``map_channels > 0`` it also enters as a *condition map*: a learned
    linear map of the embedding to ``[map_channels, map_size, map_size]``, upsampled (nearest) to
    the image and concatenated to the noisy input. The class embedding alone gives every
    ResNet block one global vector, from which a small UNet must learn where things are; the
    map hands it a learned layout at every pixel. Measured in ``seedfast demo`` (seed 0, one
    object per scene, nothing else changed), a map of 4 × 16 × 16 took the attributes read
    back from reconstructions from 0.910 to 0.972 (shape 0.64 to 0.89); a de-tokenizer trained
    the same way on one- and two-object scenes reads back 0.995 of them (shape 0.979) from
    exact targets. Training is v-prediction on the cosine (``squaredcos_cap_v2``) DDPM
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
    map_channels : int >= 0
        Channels of the condition map; 0: none (the embedding enters through the class
        embedding only).
    map_size : int >= 1
        Side of the condition map; divides ``image_size`` (unused without a map).
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
    map_channels: int = 0
    map_size: int = 16

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
        if not is_int(self.map_channels) or self.map_channels < 0:
            raise ValueError(f"{where}: map_channels must be an int >= 0, got {self.map_channels!r}")
        if self.map_channels and (not is_int(self.map_size) or self.map_size < 1 or self.image_size % self.map_size):
            raise ValueError(f"{where}: map_size must be an int >= 1 that divides image_size={self.image_size}, "
                             f"got {self.map_size!r}")
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


class PixelDetokenizer(SeedDetokenizer):
    """The embedded de-tokenizer: a small diffusion UNet on RGB pixels, conditioned on ``[B, E]``.

    Train it with :func:`seedfast.train.pixel_detokenizer.train_pixel_detokenizer` on
    ``(embeddings, images)`` batches, decode with :meth:`decode`, and persist it with
    :meth:`save` / :meth:`load` (a JSON config beside safetensors weights). Runs in float32.

    Parameters
    ----------
    config : PixelDetokenizerConfig
    device : torch.device or str, optional
        Default: CUDA when available, else CPU.
    seed : int
        Seeds the weight initialisation (the global RNG is left untouched).

    Attributes
    ----------
    config : PixelDetokenizerConfig
    unet : diffusers.UNet2DConditionModel
        The denoiser, in eval mode.
    noise_schedule : diffusers.DDPMScheduler
        The forward (noising) process the model is trained on: v-prediction on the cosine
        schedule of 1000 steps.
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
        self.embed_dim = config.embed_dim
        self.image_size = config.image_size
        self.default_steps = config.sample_steps
        self.default_guidance_scale = config.guidance_scale

    def num_parameters(self) -> int:
        """Trainable parameter count."""
        return sum(p.numel() for p in self.unet.parameters())

    def condition(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The UNet's conditioning ``[B, E]`` float32 on :attr:`device`: each embedding at unit RMS.

        Generation embeddings are unnormalised CLIP image embeddings (spec §7); fixing their
        scale keeps the projection's input in one range whatever produced them. All-zero rows
        (the unconditional embedding) stay zero.
        """
        embeddings = embeddings.to(self.device, torch.float32)
        rms = embeddings.pow(2).mean(dim=1, keepdim=True).sqrt()
        return embeddings / rms.clamp_min(1e-6)

    def predict(self, sample: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The UNet's v-prediction ``[N, 3, H, W]`` float32 for noisy ``sample`` ``[N, 3, H, W]`` at
        ``timesteps`` ``[N]`` (int in [0, 1000)), given ``condition`` ``[N, E]`` (from :meth:`condition`)."""
        channels = self.config.map_channels
        if channels:
            size = self.config.map_size
            layout = self.unet.condition_map(condition).view(-1, channels, size, size)
            sample = torch.cat([sample, F.interpolate(layout, size=sample.shape[-2:], mode="nearest")], dim=1)
        # The UNet has no cross-attention blocks, so it has no use for encoder_hidden_states.
        return self.unet(sample, timesteps, encoder_hidden_states=None, class_labels=condition, return_dict=False)[0]

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
        sample = randn_rows(generators, batch, (3, size, size)).to(self.device)
        condition = self.condition(embeddings)
        guided = guidance_scale > 1.0
        if guided:
            unconditional = (
                torch.zeros_like(condition)
                if negative_embeddings is None
                else self.condition(negative_embeddings)
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
            prediction = self.predict(model_input, t.expand(model_input.shape[0]), condition)
            if guided:
                prediction = guide(prediction, guidance_scale)
            sample = scheduler.step(prediction, t, sample, return_dict=False)[0]
        return (sample / 2 + 0.5).clamp(0, 1)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``detokenizer.json`` (format, version, config, each file's size and SHA-256) and
        ``detokenizer.safetensors`` (UNet weights) as directory ``path``, atomically (see
        :func:`seedfast.checkpoint_io.write_folder`); no training state (optimizer moments)."""
        header = {"format": PIXEL_FORMAT, "version": PIXEL_FORMAT_VERSION, "config": self.config.to_dict()}
        weights = {name: t.detach().to("cpu").contiguous() for name, t in self.unet.state_dict().items()}
        write_folder(path, {PIXEL_CONFIG_FILE: header, PIXEL_WEIGHTS_FILE: weights},
                     manifest=PIXEL_CONFIG_FILE, metadata={"format": PIXEL_FORMAT})

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
        CheckpointError
            A file is damaged: truncated, corrupt or unreadable (named).
        ValueError
            Another ``dtype``, not a seedfast pixel de-tokenizer, an unknown version, or
            weights that do not match the config.
        """
        root = Path(path)
        where = "PixelDetokenizer.load"
        if dtype not in (None, torch.float32):
            raise ValueError(f"{where}: a PixelDetokenizer runs in float32, got dtype={dtype}")
        if not root.is_dir():
            raise FileNotFoundError(f"{where}: path {str(root)!r} is not a directory")
        for name in (PIXEL_CONFIG_FILE, PIXEL_WEIGHTS_FILE):
            if not (root / name).is_file():
                raise FileNotFoundError(f"{where}: {str(root)!r} has no {name}")
        header = load_json(root / PIXEL_CONFIG_FILE)
        if not isinstance(header, dict) or header.get("format") != PIXEL_FORMAT:
            raise ValueError(f"{where}: {PIXEL_CONFIG_FILE} is not a {PIXEL_FORMAT} file")
        if header.get("version") == PIXEL_LEGACY_VERSION:
            logger.warning("%s: written without checksums by an older seedfast; save it again to protect it", root)
            weights = load_safetensors(root / PIXEL_WEIGHTS_FILE)
        elif header.get("version") == PIXEL_FORMAT_VERSION:
            weights = read_folder(root, manifest=PIXEL_CONFIG_FILE)[PIXEL_WEIGHTS_FILE]
        else:
            raise ValueError(f"{where}: unsupported version {header.get('version')!r}; expected {PIXEL_FORMAT_VERSION}")
        model = cls(PixelDetokenizerConfig.from_dict(header["config"]), device=device)
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
    unet = UNet2DConditionModel(
        sample_size=config.image_size,
        in_channels=3 + config.map_channels,
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
    if config.map_channels:
        # A submodule of the UNet, so its weights are saved, optimised and clipped with the rest.
        unet.add_module("condition_map",
                        nn.Linear(config.embed_dim, config.map_channels * config.map_size * config.map_size))
    return unet
