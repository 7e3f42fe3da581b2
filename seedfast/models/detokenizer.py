"""The SEED de-tokenizer interface: generation embeddings ``[B, E]`` → RGB images ``[B, 3, H, W]`` in [0, 1].

The tokenizer's generation head maps 32 codes to one ``E = 1024``-d unCLIP image embedding
(spec §1, §7). :class:`SeedDetokenizer` turns such embeddings into pixels; callers use only
:meth:`SeedDetokenizer.decode`, which checks its arguments here and hands them to a back end:

* :class:`~seedfast.models.unclip_detokenizer.UnclipDetokenizer` — the official decoder
  (spec §8), Stable-Diffusion-2.1-unCLIP through diffusers;
* :class:`~seedfast.models.pixel_detokenizer.PixelDetokenizer` — the embedded default for the
  CPU demo and tests, a small diffusion UNet on pixels (trained by
  :mod:`seedfast.train.pixel_detokenizer`).

Both draw their starting noise on the CPU from ``torch.Generator``s seeded by ``decode``'s
``seed``, so a seed gives the same noise on every device, and a batch runs as one batched
call. This module also holds the checks and helpers both back ends share. It imports neither
back end at import time (each imports this one), nor diffusers or transformers.
"""
from __future__ import annotations

import abc
import importlib
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from seedfast._checks import is_int
from seedfast._lazy import moved_names
from seedfast.constants import GENERATION_EMBED_DIM

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_MAX_SEED = 2**64 - 1
_UNCLIP_MODULE = "seedfast.models.unclip_detokenizer"
_PIXEL_MODULE = "seedfast.models.pixel_detokenizer"

Seed = int | Sequence[int]


def default_device() -> torch.device:
    """The GPU when one is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_float_tensor(where: str, name: str, value: object, ndim: int) -> torch.Tensor:
    """``value`` itself when it is a floating tensor of ``ndim`` dimensions.

    Raises
    ------
    TypeError
        Not a tensor, or not float32/float16/bfloat16/float64; the message starts with ``where``.
    ValueError
        Another number of dimensions.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in _FLOAT_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in _FLOAT_DTYPES)
        raise TypeError(f"{where}: {name} must have dtype in ({names}), got {str(value.dtype).removeprefix('torch.')}")
    if value.dim() != ndim:
        raise ValueError(f"{where}: {name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    return value


def check_embeddings(where: str, name: str, value: object, embed_dim: int) -> torch.Tensor:
    """``value`` itself when it is a floating ``[B, embed_dim]`` tensor with ``B >= 1``.

    Raises
    ------
    TypeError, ValueError
        As :func:`check_float_tensor`, or another shape.
    """
    value = check_float_tensor(where, name, value, 2)
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


def randn_rows(generators: list[torch.Generator], batch: int, row_shape: tuple[int, ...]) -> torch.Tensor:
    """``[batch, *row_shape]`` standard normal float32 on the CPU.

    With one generator the rows are drawn as one tensor; with one generator per row, row
    ``i`` comes from ``generators[i]`` alone, so it does not depend on the rest of the batch.
    """
    if len(generators) == 1:
        return torch.randn((batch, *row_shape), generator=generators[0])
    return torch.stack([torch.randn(row_shape, generator=g) for g in generators])


def guide(prediction: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance ``u + g·(c − u)`` from a prediction ``[2B, ...]`` over the batch ``[u; c]``."""
    unconditional, conditional = prediction.chunk(2)
    return unconditional + scale * (conditional - unconditional)


class SeedDetokenizer(abc.ABC):
    """Generation embeddings → images, whatever back end is loaded.

    Build one with :meth:`from_unclip` (the official SD-2.1-unCLIP decoder), :meth:`tiny` or
    :class:`~seedfast.models.pixel_detokenizer.PixelDetokenizer` (the embedded pixel-space
    default), or :meth:`load` (either, from a directory).

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
        embeddings = check_embeddings("decode", "embeddings", embeddings, self.embed_dim)
        batch = embeddings.shape[0]
        if negative_embeddings is not None:
            negative_embeddings = check_embeddings(
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

    # The constructors import the back ends by name when called: each back end's module imports
    # this one, so an import statement here would be a cycle.

    @staticmethod
    def from_unclip(
        path: str | os.PathLike[str],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        variant: str | None = None,
    ) -> SeedDetokenizer:
        """The official decoder from a local ``stabilityai/stable-diffusion-2-1-unclip`` directory.

        Returns an :class:`~seedfast.models.unclip_detokenizer.UnclipDetokenizer`; see its
        ``from_pretrained``.
        """
        unclip = importlib.import_module(_UNCLIP_MODULE)
        return unclip.UnclipDetokenizer.from_pretrained(path, device=device, dtype=dtype, variant=variant)

    @staticmethod
    def tiny(
        embed_dim: int = GENERATION_EMBED_DIM,
        image_size: int = 32,
        *,
        device: torch.device | str | None = None,
        seed: int = 0,
    ) -> SeedDetokenizer:
        """An untrained embedded de-tokenizer: a
        :class:`~seedfast.models.pixel_detokenizer.PixelDetokenizer` with the
        ``PixelDetokenizerConfig.tiny`` preset."""
        pixel = importlib.import_module(_PIXEL_MODULE)
        config = pixel.PixelDetokenizerConfig.tiny(embed_dim, image_size)
        return pixel.PixelDetokenizer(config, device=device, seed=seed)

    @staticmethod
    def load(
        path: str | os.PathLike[str],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SeedDetokenizer:
        """Load whichever back end ``path`` holds.

        A diffusers pipeline directory (with ``model_index.json``) loads through
        :meth:`from_unclip`; a directory written by ``PixelDetokenizer.save`` loads a
        ``PixelDetokenizer`` (``dtype`` must then be None or float32).

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
        unclip, pixel = importlib.import_module(_UNCLIP_MODULE), importlib.import_module(_PIXEL_MODULE)
        if (root / unclip.UNCLIP_INDEX_FILE).is_file():
            return unclip.UnclipDetokenizer.from_pretrained(root, device=device, dtype=dtype)
        if (root / pixel.PIXEL_CONFIG_FILE).is_file():
            return pixel.PixelDetokenizer.load(root, device=device, dtype=dtype)
        raise FileNotFoundError(
            f"SeedDetokenizer.load: {str(root)!r} holds neither {unclip.UNCLIP_INDEX_FILE} (a diffusers unCLIP "
            f"pipeline) nor {pixel.PIXEL_CONFIG_FILE} (a PixelDetokenizer)"
        )


# Moved to the back ends' own modules; the old paths warn for one release.
__getattr__ = moved_names(__name__, {
    **dict.fromkeys(("UnclipDetokenizer", "UNCLIP_STEPS", "UNCLIP_GUIDANCE_SCALE", "UNCLIP_NOISE_LEVEL"),
                    _UNCLIP_MODULE),
    **dict.fromkeys(("PixelDetokenizer", "PixelDetokenizerConfig", "PIXEL_FORMAT", "PIXEL_FORMAT_VERSION",
                     "PIXEL_CONFIG_FILE", "PIXEL_WEIGHTS_FILE"), _PIXEL_MODULE),
})
