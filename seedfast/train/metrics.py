"""What a step cost and how well the hardware did: model FLOPs from the config, MFU, GPU
memory and utilisation (nvidia-ml-py), codebook use.

FLOPs are *model* FLOPs (PaLM's MFU convention): each matmul counts ``2·m·n·k`` in the forward,
the same again for the input gradient where one flows, and again for the weight gradient where
the weight trains. Activation-checkpointing recomputation is not counted. Attention counts
``4·Lq·Lk·d`` per forward (scores and values); the LLM's causal attention counts half of that.
Norms, activations, softmax and losses are left out (well under 1 %).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from seedfast.models.tokenizer_config import NUM_QUERY_TOKENS, SeedTokenizerConfig

PEAK_TFLOPS = (
    # (substring of the device name, dense bf16 TFLOP/s; fp16 tensor cores for V100)
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("V100", 125.0),
)
"""Stated peak dense tensor throughput per GPU (vendor data sheets, no sparsity)."""
V100_PEAK_TFLOPS = 125.0


def peak_tflops(device_name: str) -> float | None:
    """The stated peak of a GPU by name (first matching substring), or None when unknown."""
    for key, value in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def _linear(tokens: float, d_in: float, d_out: float, *, grad_in: bool, trains: bool) -> float:
    return 2.0 * tokens * d_in * d_out * (1 + grad_in + trains)


def _attention(lq: float, lk: float, width: float, *, backward: bool, causal: bool = False) -> float:
    # Backward of attention (dQ, dK, dV) is about twice its forward.
    return 4.0 * lq * lk * width * (0.5 if causal else 1.0) * (3 if backward else 1)


def vit_flops(c: SeedTokenizerConfig) -> float:
    """Forward FLOPs of the frozen EVA ViT for one image."""
    t, w = c.num_patches + 1, c.vit_width
    patch = _linear(c.num_patches, 3 * c.patch_size**2, w, grad_in=False, trains=False)
    block = (_linear(t, w, 3 * w, grad_in=False, trains=False) + _attention(t, t, w, backward=False)
             + _linear(t, w, w, grad_in=False, trains=False) + 2 * _linear(t, w, c.vit_mlp_dim, grad_in=False,
                                                                           trains=False))
    return patch + c.vit_depth * block


def qformer_flops(c: SeedTokenizerConfig, *, trains: bool) -> float:
    """Q-Former FLOPs for one image's 32 queries: forward, or training (forward + backward)."""
    q, h, t, w = NUM_QUERY_TOKENS, c.qformer_hidden, c.num_patches + 1, c.vit_width
    kw = dict(grad_in=trains, trains=trains)
    total = 0.0
    for i in range(c.qformer_layers):
        total += 4 * _linear(q, h, h, **kw) + _attention(q, q, h, backward=trains)
        if i % c.cross_attention_freq == 0:
            total += 2 * _linear(q, h, h, **kw) + 2 * _linear(t, w, h, **kw) + _attention(q, t, h, backward=trains)
        total += 2 * _linear(q, h, c.qformer_intermediate, **kw)
    return total


def text_flops(c: SeedTokenizerConfig, length: int) -> float:
    """Training FLOPs of the stage-1 text path for one caption of ``length`` tokens (padded)."""
    h, kw = c.qformer_hidden, dict(grad_in=True, trains=True)
    layer = 4 * _linear(length, h, h, **kw) + _attention(length, length, h, backward=True) \
        + 2 * _linear(length, h, c.qformer_intermediate, **kw)
    return c.qformer_layers * layer + 2 * _linear(1, h, c.proj_dim, **kw)


def heads_flops(c: SeedTokenizerConfig) -> float:
    """Training FLOPs of stage 2's trained part for one image (codebook search counted forward only)."""
    q, h, d, kw = NUM_QUERY_TOKENS, c.qformer_hidden, c.code_dim, dict(grad_in=True, trains=True)
    block = _linear(q, h, 3 * h, **kw) + _attention(q, q, h, backward=True) + _linear(q, h, h, **kw) \
        + 2 * _linear(q, h, c.head_mlp_dim, **kw)
    d0, d1, d2 = c.image_down_dims
    return (_linear(q, h, h, **kw) + _linear(q, h, d, **kw) + 2.0 * q * c.codebook_size * d
            + _linear(q, d, d, **kw) + _linear(q, d, h, **kw) + 2 * c.head_depth * block
            + _linear(q, h, d0, **kw) + _linear(q, d0, d1, **kw) + _linear(q, d1, d2, **kw)
            + _linear(1, q * d2, c.generation_embed_dim, **kw))


def tokenizer_step_flops(c: SeedTokenizerConfig, stage: int, *, text_length: int = 32,
                         features: str | None = None) -> float:
    """Model FLOPs of one training sample of stage 1 or 2.

    Parameters
    ----------
    features : {None, "vit", "causal"}
        What was precomputed: ``vit`` drops the ViT forward, ``causal`` also the frozen Q-Former's.
    """
    vit = 0.0 if features in ("vit", "causal") else vit_flops(c)
    if stage == 1:
        return vit + qformer_flops(c, trains=True) + text_flops(c, text_length)
    frozen_qformer = 0.0 if features == "causal" else qformer_flops(c, trains=False)
    return vit + frozen_qformer + heads_flops(c)


def llm_step_flops(c, seq_len: int, *, lora: bool, lora_r: int = 0) -> float:
    """Model FLOPs of one stage-3 sequence of ``seq_len`` tokens through a LLaMA of config ``c``.

    LoRA: frozen projections get forward + input gradient only; adapters and the (trained)
    LM head get the full ``3×``.
    """
    hd = c.head_dim
    q_out, kv_out = c.n_heads * hd, c.n_kv_heads * hd
    base = dict(grad_in=True, trains=not lora)
    per_layer = (_linear(seq_len, c.dim, q_out + 2 * kv_out, **base) + _linear(seq_len, q_out, c.dim, **base)
                 + _linear(seq_len, c.dim, 2 * c.intermediate_size, **base)
                 + _linear(seq_len, c.intermediate_size, c.dim, **base)
                 + _attention(seq_len, seq_len, q_out, backward=True, causal=True))
    if lora:
        full = dict(grad_in=True, trains=True)
        r = lora_r
        adapters = ((c.dim + q_out + 2 * kv_out) * 3 * r + (q_out + c.dim) * r
                    + (c.dim + 2 * c.intermediate_size) * 2 * r + (c.intermediate_size + c.dim) * r)
        per_layer += _linear(seq_len, 1, adapters, **full)
    head = _linear(seq_len, c.dim, c.vocab_size, grad_in=True, trains=True)
    return c.n_layers * per_layer + head


def mfu(flops_per_step: float, step_seconds: float, world_size: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation per GPU, or None without a known peak."""
    if not peak or step_seconds <= 0:
        return None
    return flops_per_step / step_seconds / world_size / (peak * 1e12)


@dataclass
class CodebookStats:
    """How many codes a step used and the perplexity of their distribution."""

    used: int
    size: int
    perplexity: float


def codebook_stats(counts: torch.Tensor) -> CodebookStats:
    """From per-code counts ``[K]``: codes used at least once, and ``exp(entropy)`` of the usage."""
    total = float(counts.sum())
    p = counts.double() / max(total, 1.0)
    entropy = -float((p[p > 0] * p[p > 0].log()).sum())
    return CodebookStats(used=int((counts > 0).sum()), size=counts.numel(), perplexity=math.exp(entropy))


def _nvml_handle(pynvml: Any, device: torch.device) -> Any:
    """NVML's handle of a CUDA device. NVML numbers GPUs without regard to
    ``CUDA_VISIBLE_DEVICES``; the PCI address is the same for both (torch builds without it:
    the index, right when all GPUs are visible)."""
    p = torch.cuda.get_device_properties(device)
    if all(hasattr(p, a) for a in ("pci_domain_id", "pci_bus_id", "pci_device_id")):
        return pynvml.nvmlDeviceGetHandleByPciBusId(
            f"{p.pci_domain_id:08X}:{p.pci_bus_id:02X}:{p.pci_device_id:02X}.0")
    return pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)


class GpuMonitor:
    """Utilisation and memory of this process's GPU through nvidia-ml-py; says why when there is none.

    Parameters
    ----------
    device : torch.device
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.handle = None
        self.note = ""
        if device.type != "cuda":
            self.note = "no GPU (CPU run)"
            return
        try:
            import pynvml
        except ImportError:
            self.note = "nvidia-ml-py is not installed: no GPU utilisation"
            return
        try:
            pynvml.nvmlInit()
            self.handle = _nvml_handle(pynvml, device)
        except pynvml.NVMLError as err:
            self.note = f"no NVIDIA GPU (NVML: {err})"

    def sample(self) -> dict[str, float | int | None]:
        """``gpu_util`` (%), ``gpu_mem_gib`` (NVML, whole device) and ``peak_mem_gib`` (this
        process's allocator peak since the previous sample); None where unavailable."""
        out: dict[str, float | int | None] = {"gpu_util": None, "gpu_mem_gib": None, "peak_mem_gib": None}
        if self.device.type == "cuda":
            out["peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.handle is not None:
            import pynvml

            out["gpu_util"] = pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
            out["gpu_mem_gib"] = pynvml.nvmlDeviceGetMemoryInfo(self.handle).used / 2**30
        return out
