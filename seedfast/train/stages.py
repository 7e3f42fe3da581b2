"""The three training stages: which model, which weights train, and the loss of a micro-batch.

Stages 1–2 train the SEED tokenizer (spec §5, §7), stage 3 the SEED-LLaMA decoder (§11.5). An
objective is an ``nn.Module`` whose ``forward(inputs)`` returns the micro-batch's loss, so that
DDP and FSDP2 see one forward per micro-step. Every objective returns

* ``loss``: the loss summed over the micro-batch's *units* (images in stages 1–2, predicted
  tokens in stage 3), i.e. ``mean · units``; the loop divides by the step's global number of
  units (known before the forward), so a step's loss is the mean over the global batch however
  it is split over processes and micro-steps;
* one entry per logged loss term, also summed over units;
* ``codes`` (stage 2): the chosen codes, for codebook utilisation.

Stages 1–2 compute from the frozen encoder's output (run here, or read from precomputed
features), so one code path serves both; it equals
:func:`seedfast.train.tokenizer_losses.stage_losses` on the same images (tested).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from seedfast.models.seed_tokenizer import SeedTokenizer
from seedfast.train import tokenizer_losses as losses
from seedfast.train.config import RunConfig, model_config

IGNORE = -100


# ---------------------------------------------------------------------------------------------
# Models


def load_tokenizer_weights(model: SeedTokenizer, folder: str | Path) -> list[str]:
    """Load a tokenizer folder's ``model.safetensors`` into ``model`` by name.

    Keys the file lacks keep their initial values (e.g. a converted inference checkpoint has
    no stage-1 text path); they are returned.

    Raises
    ------
    ValueError
        No weights file, a damaged one (:class:`~seedfast.checkpoint_io.CheckpointError`), a key
        the model does not have, or a shape mismatch (named).
    """
    from seedfast.models.checkpoints import WEIGHTS_FILE, read_tokenizer_folder

    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"train.init: {path} not found (expected a folder written by SeedTokenizer.save)")
    try:
        _, tensors = read_tokenizer_folder(folder)
    except FileNotFoundError as err:
        raise ValueError(f"train.init: {err}") from None
    own = model.state_dict()
    unexpected = sorted(set(tensors) - set(own))
    if unexpected:
        raise ValueError(f"{path}: {len(unexpected)} key(s) the tokenizer does not have, e.g. {unexpected[:3]}")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, the configured tokenizer needs "
                             f"{tuple(own[k].shape)}")
    model.load_state_dict(tensors, strict=False)
    return sorted(set(own) - set(tensors))


def build_tokenizer(cfg: RunConfig, stage: int) -> tuple[SeedTokenizer, list[str]]:
    """The tokenizer (float32, CPU) with ``train.init`` loaded and stage ``stage``'s weights trainable.

    Returns
    -------
    model, keys left at their seeded initial values (empty without ``train.init``)
    """
    torch.manual_seed(cfg.train.seed)
    model = SeedTokenizer(model_config("tokenizer", cfg.tokenizer))
    left = load_tokenizer_weights(model, cfg.train.init) if cfg.train.init else []
    model.set_trainable(stage)
    return model, left


def build_llm(cfg: RunConfig) -> nn.Module:
    """The LLaMA decoder (float32, CPU) from ``train.init`` (a Hugging Face folder) or seeded,
    with LoRA adapters injected through peft when ``lora.enabled``."""
    from seedfast.models.llama import Llama

    config = model_config("llm", cfg.llm)
    torch.manual_seed(cfg.train.seed)
    if cfg.train.init:
        model = Llama.from_hf(cfg.train.init, config, dtype=torch.float32)
    else:
        model = Llama(config)
    model.train()
    if not cfg.lora.enabled:
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, inject_adapter_in_model

    lc = cfg.lora
    # Fused projections: wqkv holds q, k, v and w13 holds gate, up (see LoraConfig's docstring).
    widths = {"wqkv": 3, "w13": 2}
    lora = LoraConfig(
        r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=list(lc.targets),
        rank_pattern={k: n * lc.r for k, n in widths.items() if k in lc.targets},
        alpha_pattern={k: n * lc.alpha for k, n in widths.items() if k in lc.targets},
    )
    model = inject_adapter_in_model(lora, model)
    trained = set(lc.trained)
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in trained:
            module.requires_grad_(True)
    return model


def merge_lora(state: dict[str, torch.Tensor], cfg: RunConfig) -> dict[str, torch.Tensor]:
    """A full LoRA-injected state dict → plain :class:`Llama` names with ``W + (α/r)·B·A`` merged."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        if key.endswith(".base_layer.weight"):
            prefix = key.removesuffix(".base_layer.weight")
            a, b = state[f"{prefix}.lora_A.default.weight"], state[f"{prefix}.lora_B.default.weight"]
            # rank_pattern scales r and α together, so α/r is the same for every adapter.
            value = value + (cfg.lora.alpha / cfg.lora.r) * (b.float() @ a.float()).to(value.dtype)
            key = f"{prefix}.weight"
        out[key] = value
    return out


def checkpoint_methods(modules: list[nn.Module], names: tuple[str, ...] = ("forward",)) -> None:
    """Activation checkpointing in place: each named method recomputes its activations in the
    backward pass. Parameter names (hence checkpoints) are unchanged, unlike wrapper modules."""
    for module in modules:
        for name in names:
            method = getattr(module, name)
            setattr(module, name, functools.partial(checkpoint, method, use_reentrant=False))


# ---------------------------------------------------------------------------------------------
# Objectives


class TokenizerObjective(nn.Module):
    """Stage 1 or 2 of the tokenizer on a micro-batch.

    ``inputs``: ``images`` ``[b, 3, S, S]`` (preprocessed) *or* ``features`` (``vit``
    ``[b, 257, W]`` / ``causal`` ``[b, 32, H]``), plus ``text_ids``, ``text_lengths`` (stage 1)
    or ``target`` ``[b, G]`` (stage 2).

    Parameters
    ----------
    model : SeedTokenizer
    stage : {1, 2}
    gather : callable, optional
        Stage 1 under several processes: ``[b, E] → [world·b, E]``. With ``gather_with_grad``
        the loss is taken over the gathered features (every rank computes the same loss and
        the gather's backward returns each rank its share); else the official no-grad gather.
    gather_with_grad : bool
    rank : int
    features_kind : {"vit", "causal"} or None
    """

    def __init__(self, model: SeedTokenizer, stage: int, *, gather: Callable | None = None,
                 gather_with_grad: bool = True, rank: int = 0, features_kind: str | None = None) -> None:
        super().__init__()
        self.model, self.stage = model, stage
        self.gather, self.gather_with_grad, self.rank = gather, gather_with_grad, rank
        self.features_kind = features_kind

    def _vit(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.features_kind == "vit":
            return inputs["features"]
        with torch.no_grad():
            return self.model.visual_encoder(inputs["images"])

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._stage1(inputs) if self.stage == 1 else self._stage2(inputs)

    def _stage1(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        m = self.model
        image_feat, text_feat = m.contrastive_features(self._vit(inputs), inputs["text_ids"], inputs["text_lengths"])
        if self.gather is not None and self.gather_with_grad:
            itc = losses.contrastive_loss(self.gather(image_feat), self.gather(text_feat), m.temp)
        else:
            itc = losses.contrastive_loss(image_feat, text_feat, m.temp, gather=self.gather, rank=self.rank)
        b = image_feat.shape[0]
        return {"loss": itc * b, "itc": itc * b}

    def _stage2(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        m = self.model
        if self.features_kind == "causal":
            causal = inputs["features"].to(m.query_tokens.dtype)
        else:
            with torch.no_grad():
                causal = m.causal_embeddings_from_vit(self._vit(inputs))
        terms = losses.codebook_losses(m, causal, inputs["target"])
        b = causal.shape[0]
        return {name: value if name == "codes" else value * b for name, value in terms.items()}


class LlmObjective(nn.Module):
    """Stage 3: next-token cross-entropy over every real token (spec §11.5: all non-pad tokens).

    ``inputs``: ``tokens`` ``[b, L]`` right-padded, ``lengths`` ``[b]``. Targets are masked by
    position (``>= length``), never by id, so a real token equal to the pad id still counts.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tokens, lengths = inputs["tokens"], inputs["lengths"]
        logits = self.model(tokens)[:, :-1]
        targets = tokens[:, 1:].masked_fill(
            torch.arange(tokens.shape[1] - 1, device=tokens.device)[None, :] >= (lengths[:, None] - 1), IGNORE)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                             ignore_index=IGNORE, reduction="sum")
        return {"loss": ce, "ce": ce}
