"""Fast ops with torch references. Each op: ``<op>_reference`` (plain torch, the oracle and the
CPU path), a ``torch.library`` custom op for the fused kernel, and the public ``<op>(...,
backend="auto")`` that validates and dispatches (Triton on CUDA tensors, reference on CPU)."""
from seedfast.ops.add_rms_norm import add_rms_norm, add_rms_norm_reference
from seedfast.ops.constrained_sample import (
    FLAG_NON_FINITE,
    FLAG_NOTHING_ALLOWED,
    VisualVocab,
    constrained_sample,
    constrained_sample_reference,
)
from seedfast.ops.qformer_attention import qformer_attention, qformer_attention_reference
from seedfast.ops.rope_kv_write import rope_kv_write, rope_kv_write_reference
from seedfast.ops.silu_mul import silu_mul, silu_mul_reference
from seedfast.ops.vq import (
    VQOutput,
    nearest_code,
    nearest_code_reference,
    vq_loss_reference,
    vq_quantize,
    vq_quantize_reference,
)

__all__ = [
    "add_rms_norm",
    "add_rms_norm_reference",
    "FLAG_NON_FINITE",
    "FLAG_NOTHING_ALLOWED",
    "VisualVocab",
    "constrained_sample",
    "constrained_sample_reference",
    "qformer_attention",
    "qformer_attention_reference",
    "rope_kv_write",
    "rope_kv_write_reference",
    "silu_mul",
    "silu_mul_reference",
    "VQOutput",
    "nearest_code",
    "nearest_code_reference",
    "vq_loss_reference",
    "vq_quantize",
    "vq_quantize_reference",
]
