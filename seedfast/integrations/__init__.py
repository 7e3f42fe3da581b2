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

from seedfast._lazy import lazy_exports

_EXPORTS = {
    "ImageGrammarLogitsProcessor": ".hf_generate",
    "MaskPattern": ".hf_qformer",
    "QFormerAttentionPatch": ".hf_qformer",
    "QFormerPatchWarning": ".hf_qformer",
    "patch_qformer_attention": ".hf_qformer",
    "read_mask": ".hf_qformer",
    "from_taming": ".quantizers",
    "from_vector_quantize_pytorch": ".quantizers",
    "taming_state_dict": ".quantizers",
    "vector_quantize_pytorch_state_dict": ".quantizers",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
