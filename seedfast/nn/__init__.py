"""Drop-in ``nn.Module`` wrappers of seedfast's fast ops, for SEED and for any other model.

* :class:`VectorQuantizer` over :func:`seedfast.ops.vq_quantize` (VQ layers: SEED, VQGAN/taming,
  VQ-VAE), with optional usage statistics and dead-code restart;
* :class:`QFormerAttention` over :func:`seedfast.ops.qformer_attention` (BLIP-2-style self- and
  cross-attention with causal / key-length masks);
* :class:`ConstrainedSampler` over :func:`seedfast.ops.constrained_sample` (sampling under an
  "opening marker + exactly N sub-vocabulary tokens + closing marker" grammar), with
  :func:`image_positions` to read a row's grammar state from its token ids.

``VisualVocab`` (the grammar's id layout) is re-exported from :mod:`seedfast.ops`.
"""
from seedfast.nn.qformer_attention import QFormerAttention
from seedfast.nn.vq import VectorQuantizer, VectorQuantizerOutput
from seedfast.nn.constrained_sample import ConstrainedSampler, image_positions
from seedfast.ops import VisualVocab

__all__ = [
    "ConstrainedSampler",
    "QFormerAttention",
    "VectorQuantizer",
    "VectorQuantizerOutput",
    "VisualVocab",
    "image_positions",
]
