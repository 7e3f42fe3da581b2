"""Tiny LLaMA pairs (seedfast and transformers, same random weights)."""
from __future__ import annotations

import pytest
import torch

from seedfast.models.llama import Llama, LlamaConfig
from seedfast.models.seed_llama import tiny_visual_vocab


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is faster, and far faster on a loaded shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_hf_llama(config: LlamaConfig, seed: int = 0, std: float = 0.2):
    """A transformers ``LlamaForCausalLM`` (fp32, SDPA) with random weights, norms included."""
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM._from_config(HFLlamaConfig(**config.to_hf_dict()), attn_implementation="sdpa").eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if name.endswith("norm.weight") else std * noise)
    return hf


def tiny_pair(config: LlamaConfig | None = None, seed: int = 0):
    """``(ours, hf)`` with identical weights."""
    config = config or LlamaConfig.tiny()
    hf = random_hf_llama(config, seed)
    return Llama.from_hf(hf.state_dict(), config), hf


def silence_rows(model: Llama, ids) -> None:
    """Zero the output rows of ``ids`` so their logits are exactly 0: below the best text logit
    (positive with overwhelming odds over 256 ids), so greedy decoding never picks them."""
    with torch.no_grad():
        model.output.weight[list(ids)] = 0


def non_text_ids(vocab=None) -> list[int]:
    vocab = vocab or tiny_visual_vocab()
    return list(range(vocab.text_vocab_size, vocab.min_vocab_size))
