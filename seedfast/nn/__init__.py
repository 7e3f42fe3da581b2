"""Drop-in ``nn.Module`` wrappers of seedfast's fast ops, for SEED and for any other model.

* :class:`VectorQuantizer` over :func:`seedfast.ops.vq_quantize` (VQ layers: SEED, VQGAN/taming,
  VQ-VAE), with optional usage statistics and dead-code restart;
* :class:`QFormerAttention` over :func:`seedfast.ops.qformer_attention` (BLIP-2-style self- and
  cross-attention with causal / key-length masks);
* :class:`ConstrainedSampler` over :func:`seedfast.ops.constrained_sample` (sampling under an
  "opening marker + exactly N sub-vocabulary tokens + closing marker" grammar), with
  :func:`image_positions` to read a row's grammar state from its token ids;
* the decoder's fused inference ops (Triton on CUDA without gradients, the differentiable torch
  reference otherwise): :class:`AddRMSNorm` over :func:`seedfast.ops.add_rms_norm` (residual add
  + RMSNorm), :class:`SwiGLU` and :class:`SiluMul` over :func:`seedfast.ops.silu_mul` (LLaMA's
  feed-forward block, and its activation alone), :class:`RopeKVWrite` over
  :func:`seedfast.ops.rope_kv_write` (a decode step's rotary embedding and KV-cache write).

``VisualVocab`` (the grammar's id layout) is re-exported from :mod:`seedfast.ops`.
"""
from seedfast.nn.add_rms_norm import AddRMSNorm
from seedfast.nn.qformer_attention import QFormerAttention
from seedfast.nn.rope_kv_write import RopeKVWrite
from seedfast.nn.silu_mul import SiluMul, SwiGLU
from seedfast.nn.vq import VectorQuantizer, VectorQuantizerOutput
from seedfast.nn.constrained_sample import ConstrainedSampler, image_positions
from seedfast.ops import VisualVocab

__all__ = [
    "AddRMSNorm",
    "ConstrainedSampler",
    "QFormerAttention",
    "RopeKVWrite",
    "SiluMul",
    "SwiGLU",
    "VectorQuantizer",
    "VectorQuantizerOutput",
    "VisualVocab",
    "image_positions",
]
