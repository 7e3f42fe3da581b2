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

import torch

from seedfast.benchmarks.decode_ops import DTYPES, MODELS, compiled, decode_cases, eager, element_size, flashinfer
from seedfast.benchmarks.harness import Case, Impl
from seedfast.ops.silu_mul import silu_mul, silu_mul_reference

NAME = "silu_mul"


def case_for(b: int, model: str, dt: str) -> Case:
    """The case of ``b`` rows at ``model``'s intermediate width (``"8b"``: 11008, ``"14b"``: 13824) in ``dt``."""
    i = MODELS[model].intermediate_size
    elt = element_size(dt)
    return Case(NAME, "decode", {"B": b, "model": model, "I": i, "dtype": dt}, bytes=float(3 * b * i * elt), size=b)


def cases(*, quick: bool, device: torch.device) -> list[Case]:
    """On CUDA, SEED-LLaMA 8B and 14B decode steps, B ∈ BATCHES, in bf16 (quick: B ∈ {1, 256});
    on CPU, fp32 regressions at the same widths (quick: 8B, B ∈ {1, 64})."""
    return decode_cases(case_for, quick=quick, device=device)


def make_inputs(case: Case, device: torch.device) -> torch.Tensor:
    """The fused projection ``[B, 2·I]``: gate in the first half, up in the second."""
    p = case.params
    g = torch.Generator(device="cpu").manual_seed(0)
    return (2 * torch.randn(p["B"], 2 * p["I"], generator=g)).to(device=device, dtype=DTYPES[p["dtype"]])


impls = [
    Impl("seedfast", eager(silu_mul, make_inputs), ours=True),
    Impl("torch", eager(silu_mul_reference, make_inputs)),
    Impl("torch-compile", compiled(silu_mul_reference, make_inputs)),
    Impl("flashinfer", flashinfer("flashinfer.activation", "silu_and_mul", make_inputs)),
]
