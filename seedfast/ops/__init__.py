"""Fast ops with torch references. Each op: ``<op>_reference`` (plain torch, the oracle and the
CPU path), a ``torch.library`` custom op for the fused kernel, and the public ``<op>(...,
backend="auto")`` that validates and dispatches (Triton on CUDA tensors, reference on CPU)."""
from seedfast.ops.constrained_sample import (
    FLAG_NON_FINITE,
    FLAG_NOTHING_ALLOWED,
    VisualVocab,
    constrained_sample,
    constrained_sample_reference,
)
from seedfast.ops.qformer_attention import qformer_attention, qformer_attention_reference
from seedfast.ops.vq import (
    VQOutput,
    nearest_code,
    nearest_code_reference,
    vq_loss_reference,
    vq_quantize,
    vq_quantize_reference,
)

__all__ = [
    "FLAG_NON_FINITE",
    "FLAG_NOTHING_ALLOWED",
    "VisualVocab",
    "constrained_sample",
    "constrained_sample_reference",
    "qformer_attention",
    "qformer_attention_reference",
    "VQOutput",
    "nearest_code",
    "nearest_code_reference",
    "vq_loss_reference",
    "vq_quantize",
    "vq_quantize_reference",
]
