"""Tiny SEED tokenizers with random weights everywhere, and inputs for them: shared by the
model tests (tests/models) and the loss tests (tests/train)."""
from __future__ import annotations

import torch
from torch import nn

from seedfast.models.seed_tokenizer import SeedTokenizer
from seedfast.models.tokenizer_config import SeedTokenizerConfig

BATCH = 3


def randomise_(model: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Random values everywhere (biases, q/v biases and LayerNorms too), so that a weight
    used in the wrong place or not at all shows up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            value = torch.randn(p.shape, generator=g) * std
            owner = model.get_submodule(name.rpartition(".")[0])
            if isinstance(owner, nn.LayerNorm) and name.endswith("weight"):
                value += 1.0
            if name == "quantize.embedding.weight":
                value *= 5.0
            if name == "temp":
                value = torch.tensor(0.07)
            p.copy_(value)
    return model


def tiny(seed: int = 0, **overrides) -> SeedTokenizer:
    return randomise_(SeedTokenizer(SeedTokenizerConfig.tiny(**overrides)), seed).eval()


def images_for(cfg: SeedTokenizerConfig, seed: int = 1, batch: int = BATCH) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g)


def state64(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().double() for k, v in model.state_dict().items()}


def text_for(cfg: SeedTokenizerConfig, seed: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """``BATCH`` rows of 7 random token ids and their lengths (7, 3, 5)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (BATCH, 7), generator=g)
    lengths = torch.tensor([7, 3, 5])
    return ids, lengths
