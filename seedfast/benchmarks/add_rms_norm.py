"""Benchmark of the fused residual add + RMSNorm (:func:`seedfast.ops.add_rms_norm`) against its peers.

Implementations, all run in the same process on the same inputs:

* ``seedfast`` (ours): the public op with ``backend="auto"``, the Triton kernel on CUDA (the
  torch reference on CPU, where numbers claim nothing).
* ``torch``: :func:`~seedfast.ops.add_rms_norm.add_rms_norm_reference`, the unfused
  ``residual + x`` then ``F.rms_norm`` a model runs without the op.
* ``torch-compile``: the same reference under ``torch.compile`` (CUDA only: on CPU the compile
  costs far more than the numbers could tell), which fuses the add into the norm as well.
* ``flashinfer``: ``flashinfer.norm.fused_add_rmsnorm``, which works in place (the residual
  takes the sum, the input the normalised sum), as vLLM and SGLang call it. Optional.

Mode ``decode``: one token per row, ``[B, N]`` at SEED-LLaMA's widths. ``Case.bytes`` is what a
fused kernel must move: x and the residual read, the normalised sum and the sum written, the
weight read once.
"""
from __future__ import annotations

import torch

from seedfast.benchmarks.decode_ops import DTYPES, MODELS, compiled, decode_cases, eager, element_size, flashinfer
from seedfast.benchmarks.harness import Case, Impl
from seedfast.ops.add_rms_norm import add_rms_norm, add_rms_norm_reference

NAME = "add_rms_norm"


def case_for(b: int, model: str, dt: str) -> Case:
    """The case of ``b`` rows at ``model``'s hidden width (``"8b"``: 4096, ``"14b"``: 5120) in ``dt``."""
    n = MODELS[model].dim
    elt = element_size(dt)
    moved = (4 * b * n + n) * elt
    return Case(NAME, "decode", {"B": b, "model": model, "N": n, "dtype": dt}, bytes=float(moved), size=b)


def cases(*, quick: bool, device: torch.device) -> list[Case]:
    """On CUDA, SEED-LLaMA 8B and 14B decode steps, B ∈ BATCHES, in bf16 (quick: B ∈ {1, 256});
    on CPU, fp32 regressions at the same widths (quick: 8B, B ∈ {1, 64})."""
    return decode_cases(case_for, quick=quick, device=device)


def make_inputs(case: Case, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """``(x, residual, weight, eps)``: a sublayer output, a residual stream and a weight around 1."""
    p = case.params
    g = torch.Generator(device="cpu").manual_seed(0)
    dtype = DTYPES[p["dtype"]]
    x = torch.randn(p["B"], p["N"], generator=g).to(device=device, dtype=dtype)
    residual = (4 * torch.randn(p["B"], p["N"], generator=g)).to(device=device, dtype=dtype)
    weight = (1 + 0.1 * torch.randn(p["N"], generator=g)).to(device=device, dtype=dtype)
    return x, residual, weight, MODELS[p["model"]].norm_eps


impls = [
    Impl("seedfast", eager(add_rms_norm, make_inputs), ours=True),
    Impl("torch", eager(add_rms_norm_reference, make_inputs)),
    Impl("torch-compile", compiled(add_rms_norm_reference, make_inputs)),
    # In place: each call adds x (by then the previous call's normalised sum) to the stream again,
    # so the values stay bounded and the bytes moved are those of one fused call.
    Impl("flashinfer", flashinfer("flashinfer.norm", "fused_add_rmsnorm", make_inputs)),
]
