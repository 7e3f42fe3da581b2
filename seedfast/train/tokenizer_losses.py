"""The two training objectives of the SEED tokenizer (spec §5 and §7), as plain functions of
the model's features.

Every loss is float32 whatever the activation dtype (the official code runs them under fp16
autocast, where the cross-entropy and MSE are float32 too). :func:`stage_losses` is the whole
stage from images (the official model's training ``forward``); :func:`codebook_losses` is
stage 2 from the frozen Q-Former's output, which the training loop also reads from cached
features.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from seedfast.models.seed_tokenizer import SeedTokenizer
from seedfast.models.tokenizer_inputs import check_device

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


def codebook_losses(model: SeedTokenizer, causal: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stage 2's loss terms from the (frozen) Q-Former output.

    Parameters
    ----------
    model : SeedTokenizer
        Built with ``training_heads``.
    causal : Tensor ``[B, 32, qformer_hidden]``
        The VQ input and the cosine-reconstruction target.
    target : Tensor ``[B, generation_embed_dim]``
        The unCLIP image embedding of the same images.

    Returns
    -------
    dict
        ``{"vq", "mse", "cos", "loss"}`` float32 scalars with ``loss = 5·vq + 0.5·mse + 2·cos``,
        and ``"codes"`` ``[B, 32]`` int64.
    """
    vq = model.quantize(model.encode_task_layer(causal))
    h = model.decode_task_layer(vq.z_q)
    cos = reconstruction_cosine_loss(model.reconstruct_causal(h), causal)
    mse = generation_mse_loss(model.generation_head(h), target)
    total = VQ_WEIGHT * vq.loss + MSE_WEIGHT * mse + COS_WEIGHT * cos
    return {"vq": vq.loss, "mse": mse, "cos": cos, "loss": total, "codes": vq.codes}


def stage_losses(
    model: SeedTokenizer,
    images: torch.Tensor,
    *,
    stage: int,
    text_ids: torch.Tensor | None = None,
    text_lengths: torch.Tensor | None = None,
    target_image_embeds: torch.Tensor | None = None,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rank: int = 0,
) -> dict[str, torch.Tensor]:
    """Training losses of stage 1 (contrastive) or stage 2 (codebook + heads) from images.

    The ViT always runs without gradient (frozen in both stages); in stage 2 the whole
    Q-Former forward does too (its output is the VQ input and the cosine target). Dropout
    follows each module's train/eval mode: the official stage 2 keeps the frozen Q-Former
    in train mode (dropout on); call ``model.Qformer.eval()`` for deterministic targets.

    Parameters
    ----------
    model : SeedTokenizer
        Built with ``training_heads``.
    images : Tensor ``[B, 3, S, S]``, preprocessed
    stage : {1, 2}
    text_ids : Tensor ``[B, T]``, int64 (stage 1)
        BERT token ids, ``[CLS]`` first, right-padded, ``T <= max_text_positions``.
    text_lengths : Tensor ``[B]``, integer (stage 1)
        Real tokens per row (``attention_mask.sum(1)``).
    target_image_embeds : Tensor ``[B, generation_embed_dim]``, floating (stage 2)
        The frozen CLIP-ViT-H/14 ``image_embeds`` of the same images.
    gather, rank
        Stage 1 across processes: see :func:`contrastive_loss`.

    Returns
    -------
    dict of float32 scalars
        Stage 1: ``{"itc", "loss"}``. Stage 2: ``{"vq", "mse", "cos", "loss"}`` with
        ``loss = 5·vq + 0.5·mse + 2·cos``.

    Raises
    ------
    RuntimeError
        The model was built without ``training_heads``.
    TypeError, ValueError
        A bad stage, a missing or malformed input.
    """
    where = "stage_losses"
    if not model.config.training_heads:
        raise RuntimeError(f"{where}: training losses need the training heads; build the model "
                           "with SeedTokenizerConfig(training_heads=True)")
    if stage not in (1, 2):
        raise ValueError(f"{where}: stage must be 1 or 2, got {stage!r}")
    with torch.no_grad():
        vit = model.vit_tokens(images)
    b, device = vit.shape[0], model.query_tokens.device
    if stage == 1:
        _check_text(where, text_ids, text_lengths, b, device)
        image_feat, text_feat = model.contrastive_features(vit, text_ids, text_lengths)
        itc = contrastive_loss(image_feat, text_feat, model.temp, gather=gather, rank=rank)
        return {"itc": itc, "loss": itc}
    g, target = model.config.generation_embed_dim, target_image_embeds
    if not isinstance(target, torch.Tensor) or not target.is_floating_point():
        raise TypeError(f"{where}: stage 2 needs target_image_embeds, a floating tensor [B, {g}]; got "
                        f"{getattr(target, 'dtype', type(target).__name__)}")
    if tuple(target.shape) != (b, g):
        raise ValueError(f"{where}: target_image_embeds must have shape [{b}, {g}], got {tuple(target.shape)}")
    check_device(where, "target_image_embeds", target, device)
    with torch.no_grad():
        causal = model.causal_embeddings_from_vit(vit)
    terms = codebook_losses(model, causal, target)
    del terms["codes"]
    return terms


def _check_text(where: str, text_ids: object, text_lengths: object, b: int, device: torch.device) -> None:
    if not isinstance(text_ids, torch.Tensor) or text_ids.dtype != torch.int64:
        raise TypeError(f"{where}: stage 1 needs text_ids, an int64 tensor [B, T]; got "
                        f"{getattr(text_ids, 'dtype', type(text_ids).__name__)}")
    if text_ids.dim() != 2 or text_ids.shape[0] != b or text_ids.shape[1] == 0:
        raise ValueError(f"{where}: text_ids must have shape [B={b}, T >= 1], got {tuple(text_ids.shape)}")
    if not isinstance(text_lengths, torch.Tensor) or text_lengths.is_floating_point():
        raise TypeError(f"{where}: stage 1 needs text_lengths, an integer tensor [B]")
    if tuple(text_lengths.shape) != (b,):
        raise ValueError(f"{where}: text_lengths must have shape [{b}], got {tuple(text_lengths.shape)}")
    check_device(where, "text_ids", text_ids, device)
    check_device(where, "text_lengths", text_lengths, device)
