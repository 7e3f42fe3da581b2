"""SEED tokenizer, de-tokenizer, LLaMA decoder and SEED-LLaMA wrapper.

``from seedfast.models import SeedTokenizer, Llama`` works; each name imports its module on
first use, so ``import seedfast.models`` stays cheap. The submodule paths work too.
"""
from __future__ import annotations

from seedfast._lazy import lazy_exports

_EXPORTS = {
    "SeedTokenizer": "seedfast.models.seed_tokenizer",
    "SeedTokenizerConfig": "seedfast.models.tokenizer_config",
    "Llama": "seedfast.models.llama",
    "LlamaConfig": "seedfast.models.llama_config",
    "KVCache": "seedfast.models.kv_cache",
    "save_hf": "seedfast.models.llama_hf",
    "SeedLlamaTokenizer": "seedfast.models.seed_llama_tokenizer",
    "SeedDetokenizer": "seedfast.models.detokenizer",
    "UnclipDetokenizer": "seedfast.models.unclip_detokenizer",
    "PixelDetokenizer": "seedfast.models.pixel_detokenizer",
    "PixelDetokenizerConfig": "seedfast.models.pixel_detokenizer",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
