"""seedfast: a fast, faithful SEED visual tokenizer and SEED-LLaMA.

Fused Triton kernels with exact torch references (``seedfast.ops``), the tokenizer and LLM
(``seedfast.models``), batched generation (``seedfast.generation``) and a lean training loop
(``seedfast.train``). Importing this package is cheap: subpackages, torch and triton load on
first use.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBPACKAGES = ("benchmarks", "data", "generation", "integrations", "models", "nn", "ops", "train")


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"seedfast.{name}")
    raise AttributeError(f"module 'seedfast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBPACKAGES])
