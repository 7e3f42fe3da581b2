"""seedfast inside the tools people already use.

* :mod:`seedfast.integrations.hf_generate`: :class:`ImageGrammarLogitsProcessor`, the span
  grammar of :func:`seedfast.ops.constrained_sample` as a transformers ``LogitsProcessor``
  for ``model.generate``;
* :mod:`seedfast.integrations.hf_qformer`: :func:`patch_qformer_attention`, transformers'
  BLIP-2 / InstructBLIP Q-Former attention on :func:`seedfast.ops.qformer_attention`;
* :mod:`seedfast.integrations.quantizers`: vector-quantize-pytorch and taming codebooks into
  :class:`seedfast.nn.VectorQuantizer`.

The names below load their module on first use, so importing this package imports neither
transformers nor vector-quantize-pytorch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ImageGrammarLogitsProcessor": "hf_generate",
    "MaskPattern": "hf_qformer",
    "QFormerAttentionPatch": "hf_qformer",
    "QFormerPatchWarning": "hf_qformer",
    "patch_qformer_attention": "hf_qformer",
    "read_mask": "hf_qformer",
    "from_taming": "quantizers",
    "from_vector_quantize_pytorch": "quantizers",
    "taming_state_dict": "quantizers",
    "vector_quantize_pytorch_state_dict": "quantizers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"seedfast.integrations.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'seedfast.integrations' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
