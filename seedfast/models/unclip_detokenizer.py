"""The official SEED-2 de-tokenizer back end: Stable-Diffusion-2.1-unCLIP through diffusers (spec §8).

:class:`UnclipDetokenizer` loads the pipeline from a local directory and conditions it on the
generation embedding as ``image_embeds``, with an empty prompt, ``noise_level=0``, 20 steps of
the repo's scheduler, guidance 10 and 768×768 output. diffusers is imported only when one is
built.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from seedfast._checks import is_int
from seedfast.models.detokenizer import SeedDetokenizer, default_device, guide, randn_rows

if TYPE_CHECKING:
    from diffusers import StableUnCLIPImg2ImgPipeline

# Spec §8: the official decode call.
UNCLIP_STEPS = 20
UNCLIP_GUIDANCE_SCALE = 10.0
UNCLIP_NOISE_LEVEL = 0
# The file that marks a diffusers pipeline directory.
UNCLIP_INDEX_FILE = "model_index.json"


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
        if not (root / UNCLIP_INDEX_FILE).is_file():
            raise FileNotFoundError(
                f"UnclipDetokenizer.from_pretrained: {str(root)!r} has no {UNCLIP_INDEX_FILE}; expected a diffusers "
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
        latent_shape = (self.latent_channels, self.latent_size, self.latent_size)
        latents = randn_rows(generators, batch, latent_shape).to(**place)
        noise = randn_rows(generators, batch, (self.embed_dim,)).to(**place)
        class_labels = self._condition(embeddings.to(**place), noise)
        guided = guidance_scale > 1.0
        if guided:
            if negative_embeddings is None:
                unconditional = torch.zeros_like(class_labels)
            else:
                noise = randn_rows(generators, batch, (self.embed_dim,)).to(**place)
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
                prediction = guide(prediction, guidance_scale)
            latents = scheduler.step(prediction, t, latents, **step_kwargs, return_dict=False)[0]
        images = pipeline.vae.decode(latents / pipeline.vae.config.scaling_factor, return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)


def _unclip_placement(device: torch.device | str | None, dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    """Defaults of the official decoder: CUDA when available, float16 there and float32 elsewhere."""
    run_device = torch.device(device) if device is not None else default_device()
    return run_device, dtype if dtype is not None else (torch.float16 if run_device.type == "cuda" else torch.float32)


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
