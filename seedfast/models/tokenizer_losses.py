"""The two training objectives of the SEED tokenizer (spec §5 and §7), as plain functions.

Both compute in float32 whatever the activation dtype (the official code runs them under fp16
autocast, where the cross-entropy and MSE are float32 too).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LABEL_SMOOTHING = 0.1
"""Stage-1 contrastive cross-entropy label smoothing."""
VQ_WEIGHT = 5.0
MSE_WEIGHT = 0.5
COS_WEIGHT = 2.0
"""Stage-2 weights: ``L = 5·L_vq + 0.5·MSE(gen, clip) + 2·L_cos``."""


def contrastive_loss(
    image_feat: torch.Tensor,
    text_feat: torch.Tensor,
    temp: torch.Tensor,
    *,
    label_smoothing: float = LABEL_SMOOTHING,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rank: int = 0,
) -> torch.Tensor:
    """Symmetric image–text InfoNCE of stage 1: ``½ [CE(i2t) + CE(t2i)]``.

    Parameters
    ----------
    image_feat, text_feat : Tensor ``[b, E]``
        L2-normalised features of the local batch (image: the last query's ``vision_proj``;
        text: ``[CLS]``'s ``text_proj``).
    temp : Tensor ``[]``
        The learnable temperature (logits are divided by it; no clamp, as the official code).
    label_smoothing : float
    gather : callable, optional
        ``[b, E] → [world·b, E]`` all-gather across processes. The official code gathers
        without gradient, so only the local side of each product is differentiated; that is
        done here too. None: a single process, where the local features are the whole batch
        (and get the gradient on both sides, as the official code on one GPU).
    rank : int
        This process's index in the gathered batch: the targets are ``rank·b + arange(b)``.

    Returns
    -------
    Tensor ``[]``, float32
    """
    image32, text32 = image_feat.float(), text_feat.float()
    if gather is None:
        image_all, text_all = image32, text32
    else:
        with torch.no_grad():
            image_all, text_all = gather(image32), gather(text32)
    b = image32.shape[0]
    targets = torch.arange(rank * b, rank * b + b, device=image32.device)
    sim_i2t = image32 @ text_all.t() / temp.float()
    sim_t2i = text32 @ image_all.t() / temp.float()
    return 0.5 * (
        F.cross_entropy(sim_i2t, targets, label_smoothing=label_smoothing)
        + F.cross_entropy(sim_t2i, targets, label_smoothing=label_smoothing)
    )


def reconstruction_cosine_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean over [B, 32] of 1 − cos(recon, target)`` along the feature axis (float32)."""
    return (1.0 - F.cosine_similarity(recon.float(), target.float(), dim=-1)).mean()


def generation_mse_loss(generation: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean over [B, G]`` of the squared error to the unCLIP image embedding (float32)."""
    return F.mse_loss(generation.float(), target.float())
