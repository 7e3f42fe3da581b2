"""What the fused decode ops' suites (``rope_kv_write``, ``add_rms_norm``, ``silu_mul``) share:
SEED-LLaMA's decode shapes, the case list and how each peer is built from a suite's inputs.

A suite's ``make_inputs(case, device)`` returns the op's arguments: a dict (keywords), a tuple
(positional) or one tensor; every peer is called with the same arguments.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from seedfast.benchmarks.harness import Case, PeerUnavailable
from seedfast.models.llama_config import LlamaConfig

MODELS = {"8b": LlamaConfig.seed_llama_8b(), "14b": LlamaConfig.seed_llama_14b()}
BATCHES = (1, 64, 256)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

Builder = Callable[[Case, torch.device], Callable[[], object]]
MakeInputs = Callable[[Case, torch.device], Any]


def element_size(dt: str) -> int:
    """Bytes per element of ``"fp32"`` or ``"bf16"``."""
    return torch.finfo(DTYPES[dt]).bits // 8


def decode_cases(case_for: Callable[[int, str, str], Case], *, quick: bool, device: torch.device) -> list[Case]:
    """On CUDA, SEED-LLaMA 8B and 14B decode steps, B ∈ :data:`BATCHES`, in bf16 (quick: B ∈ {1,
    256}); on CPU, fp32 regressions at the same widths (quick: 8B, B ∈ {1, 64})."""
    if device.type == "cuda":
        batches, models, dt = ((1, 256) if quick else BATCHES), tuple(MODELS), "bf16"
    else:
        batches, models, dt = ((1, 64) if quick else BATCHES), (("8b",) if quick else tuple(MODELS)), "fp32"
    return [case_for(b, model, dt) for model in models for b in batches]


def _call(fn: Callable, inputs: Any) -> Callable[[], object]:
    if isinstance(inputs, dict):
        return lambda: fn(**inputs)
    if isinstance(inputs, tuple):
        return lambda: fn(*inputs)
    return lambda: fn(inputs)


def eager(fn: Callable, make_inputs: MakeInputs) -> Builder:
    """The peer that calls ``fn`` as it is."""
    return lambda case, device: _call(fn, make_inputs(case, device))


def compiled(reference: Callable, make_inputs: MakeInputs) -> Builder:
    """``reference`` under ``torch.compile`` (CUDA only: on CPU the compile costs far more than the
    numbers could tell); ``dynamic=False``, as a decode step's shapes are fixed."""
    def build(case: Case, device: torch.device) -> Callable[[], object]:
        if device.type != "cuda":
            raise PeerUnavailable("torch.compile of the reference is timed on CUDA only")
        return _call(torch.compile(reference, dynamic=False), make_inputs(case, device))

    return build


def flashinfer(module: str, name: str, make_inputs: MakeInputs) -> Builder:
    """FlashInfer's ``module.name`` (CUDA only; unavailable when flashinfer is not installed)."""
    def build(case: Case, device: torch.device) -> Callable[[], object]:
        if device.type != "cuda":
            raise PeerUnavailable("FlashInfer runs on CUDA only")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            raise PeerUnavailable(f"flashinfer is not installed ({module}.{name})") from err
        return _call(fn, make_inputs(case, device))

    return build


__all__ = ["BATCHES", "DTYPES", "MODELS", "compiled", "decode_cases", "eager", "element_size", "flashinfer"]
