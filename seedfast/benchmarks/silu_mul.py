"""Benchmark of SwiGLU's fused activation (:func:`seedfast.ops.silu_mul`) against its peers.

Implementations, all run in the same process on the same inputs:

* ``seedfast`` (ours): the public op with ``backend="auto"``, the Triton kernel on CUDA (the
  torch reference on CPU, where numbers claim nothing).
* ``torch``: :func:`~seedfast.ops.silu_mul.silu_mul_reference`, ``F.silu(gate) * up`` as a
  model runs it without the op (two kernels and an intermediate).
* ``torch-compile``: the same reference under ``torch.compile`` (CUDA only: on CPU the compile
  costs far more than the numbers could tell).
* ``flashinfer``: ``flashinfer.activation.silu_and_mul`` on the same ``[gate | up]`` layout, as
  vLLM and SGLang call it. Optional.

Mode ``decode``: one token per row, the fused gate/up projection ``[B, 2·I]`` at SEED-LLaMA's
intermediate widths. ``Case.bytes``: the input read once and the ``[B, I]`` output written.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from seedfast.benchmarks.harness import Case, Impl, PeerUnavailable
from seedfast.models.llama_config import LlamaConfig
from seedfast.ops.silu_mul import silu_mul, silu_mul_reference

NAME = "silu_mul"
MODELS = {"8b": LlamaConfig.seed_llama_8b(), "14b": LlamaConfig.seed_llama_14b()}
BATCHES = (1, 64, 256)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def case_for(b: int, model: str, dt: str) -> Case:
    """The case of ``b`` rows at ``model``'s intermediate width (``"8b"``: 11008, ``"14b"``: 13824) in ``dt``."""
    i = MODELS[model].intermediate_size
    elt = torch.finfo(_DTYPES[dt]).bits // 8
    return Case(NAME, "decode", {"B": b, "model": model, "I": i, "dtype": dt}, bytes=float(3 * b * i * elt), size=b)


def cases(*, quick: bool, device: torch.device) -> list[Case]:
    """On CUDA, SEED-LLaMA 8B and 14B decode steps, B ∈ BATCHES, in bf16 (quick: B ∈ {1, 256});
    on CPU, fp32 regressions at the same widths (quick: 8B, B ∈ {1, 64})."""
    if device.type == "cuda":
        batches, models, dt = ((1, 256) if quick else BATCHES), tuple(MODELS), "bf16"
    else:
        batches, models, dt = ((1, 64) if quick else BATCHES), (("8b",) if quick else tuple(MODELS)), "fp32"
    return [case_for(b, model, dt) for model in models for b in batches]


def make_inputs(case: Case, device: torch.device) -> torch.Tensor:
    """The fused projection ``[B, 2·I]``: gate in the first half, up in the second."""
    p = case.params
    g = torch.Generator(device="cpu").manual_seed(0)
    return (2 * torch.randn(p["B"], 2 * p["I"], generator=g)).to(device=device, dtype=_DTYPES[p["dtype"]])


def _build(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Case, torch.device], Callable[[], object]]:
    def build(case: Case, device: torch.device) -> Callable[[], object]:
        x = make_inputs(case, device)
        return lambda: fn(x)

    return build


def _build_compiled(case: Case, device: torch.device) -> Callable[[], object]:
    if device.type != "cuda":
        raise PeerUnavailable("torch.compile of the reference is timed on CUDA only")
    x = make_inputs(case, device)
    compiled = torch.compile(silu_mul_reference, dynamic=False)
    return lambda: compiled(x)


def _build_flashinfer(case: Case, device: torch.device) -> Callable[[], object]:
    if device.type != "cuda":
        raise PeerUnavailable("FlashInfer runs on CUDA only")
    try:
        from flashinfer.activation import silu_and_mul
    except ImportError as err:
        raise PeerUnavailable("flashinfer is not installed") from err
    x = make_inputs(case, device)
    return lambda: silu_and_mul(x)


impls = [
    Impl("seedfast", _build(silu_mul), ours=True),
    Impl("torch", _build(silu_mul_reference)),
    Impl("torch-compile", _build_compiled),
    Impl("flashinfer", _build_flashinfer),
]
