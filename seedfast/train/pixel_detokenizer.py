"""Training of the embedded pixel de-tokenizer on ``(embeddings [B, E], images [B, 3, H, W])`` batches.

The model (:class:`~seedfast.models.pixel_detokenizer.PixelDetokenizer`) learns v-prediction on
its own noise schedule with AdamW, gradient clipping at 1 and condition dropout (which teaches
the unconditional branch that classifier-free guidance uses). :func:`train_pixel_detokenizer`
runs a whole schedule; :func:`train_step` is one step of it.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from seedfast._checks import is_int
from seedfast.models.detokenizer import check_embeddings, check_float_tensor
from seedfast.models.pixel_detokenizer import PixelDetokenizer
from seedfast.train.schedule import warmup_cosine

Batch = tuple[torch.Tensor, torch.Tensor]


def make_optimizer(model: PixelDetokenizer) -> torch.optim.AdamW:
    """AdamW over the model's UNet (no weight decay); :func:`train_pixel_detokenizer` sets its rate every step."""
    return torch.optim.AdamW(model.unet.parameters(), lr=1e-3, weight_decay=0.0, fused=True)


def _check_batch(model: PixelDetokenizer, embeddings: object, images: object) -> Batch:
    embeddings = check_embeddings("train_step", "embeddings", embeddings, model.embed_dim)
    images = check_float_tensor("train_step", "images", images, 4)
    size = model.image_size
    if images.shape[1:] != (3, size, size) or images.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"train_step: images must have shape [B, 3, {size}, {size}] with B = {embeddings.shape[0]} "
            f"(the embeddings' batch), got {tuple(images.shape)}"
        )
    return embeddings, images


def train_step(
    model: PixelDetokenizer,
    optimizer: torch.optim.Optimizer,
    embeddings: torch.Tensor,
    images: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One ``optimizer`` step (at its current learning rate) on the v-prediction loss.

    Parameters
    ----------
    model : PixelDetokenizer
        Trained in place; left in eval mode.
    optimizer : torch.optim.Optimizer
        Over ``model.unet``'s parameters, e.g. from :func:`make_optimizer`.
    embeddings : Tensor ``[B, E]``, floating
        Conditioning; each row is replaced by zeros with probability ``model.config.cond_dropout``.
    images : Tensor ``[B, 3, H, W]``, floating, values in [0, 1] (not checked)
        Targets, ``H = W = model.image_size``.
    generator : torch.Generator, optional
        A CPU generator for the timesteps, noise and dropout (then drawn on the CPU and
        moved); default: the global RNG on ``model.device``.

    Returns
    -------
    Tensor ``[]``, float32
        The loss before the step (detached; reading it synchronises).

    Raises
    ------
    TypeError, ValueError
        Non-floating inputs, or shapes other than ``[B, E]`` and ``[B, 3, H, W]``.
    """
    embeddings, images = _check_batch(model, embeddings, images)
    batch, device, schedule = embeddings.shape[0], model.device, model.noise_schedule
    draw_device = "cpu" if generator is not None else device
    levels = schedule.config.num_train_timesteps
    timesteps = torch.randint(0, levels, (batch,), generator=generator, device=draw_device)
    noise = torch.randn(images.shape, generator=generator, device=draw_device)
    keep = torch.rand(batch, 1, generator=generator, device=draw_device) >= model.config.cond_dropout
    timesteps, noise, keep = timesteps.to(device), noise.to(device), keep.to(device)

    clean = images.to(device, torch.float32) * 2 - 1
    condition = model.condition(embeddings) * keep
    noisy = schedule.add_noise(clean, noise, timesteps)
    target = schedule.get_velocity(clean, noise, timesteps)

    model.unet.train()
    loss = F.mse_loss(model.predict(noisy, timesteps, condition), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.unet.parameters(), 1.0)
    optimizer.step()
    model.unet.eval()
    return loss.detach()


def train_pixel_detokenizer(
    model: PixelDetokenizer,
    batches: Iterable[Batch],
    steps: int,
    lr: float = 2e-3,
    *,
    warmup_steps: int | None = None,
    min_lr_ratio: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    optimizer: torch.optim.Optimizer | None = None,
) -> list[float]:
    """Train ``model`` in place for ``steps`` steps: linear warm-up, then cosine decay to ``min_lr_ratio · lr``.

    Parameters
    ----------
    model : PixelDetokenizer
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
    optimizer : torch.optim.Optimizer, optional
        To continue with earlier moments; default a fresh :func:`make_optimizer`.

    Returns
    -------
    list of float
        The loss of every step.

    Raises
    ------
    ValueError
        Bad ``steps``/``lr``/``warmup_steps``/``min_lr_ratio``, bad batches (as
        :func:`train_step`), or an iterator that runs out before ``steps``.
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

    optimizer = make_optimizer(model) if optimizer is None else optimizer
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
        # This schedule reaches the peak on the last warm-up step and states its floor as a
        # fraction of the peak (see warmup_cosine).
        rate = warmup_cosine(step, steps, warmup_steps, lr, end_ratio=min_lr_ratio, warmup_offset=1)
        for group in optimizer.param_groups:
            group["lr"] = rate
        embeddings, images = batch
        losses.append(train_step(model, optimizer, embeddings, images, generator=generator))
        if progress and (step % 10 == 0 or step == steps - 1):
            bar.set_postfix(loss=f"{losses[-1].item():.4f}")
    return torch.stack(losses).tolist()


def _batch_stream(batches: Iterable[Batch]) -> Iterator[Batch]:
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
