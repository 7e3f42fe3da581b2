"""Microbenchmarks of seedfast's ops against their peers (``seedfast bench``).

Each suite is a module with ``NAME``, ``cases(quick, device)`` and ``impls``; the shared
harness in :mod:`seedfast.benchmarks.harness` times them side by side.
"""
from __future__ import annotations

import importlib
from types import ModuleType

SUITES = {
    "attention": "seedfast.benchmarks.attention",
    "decode": "seedfast.benchmarks.decode",
    "sampling": "seedfast.benchmarks.sampling",
    "tokenizer": "seedfast.benchmarks.tokenizer",
    "vq": "seedfast.benchmarks.vq",
}


def load_suite(name: str) -> ModuleType:
    """Import the suite module for op ``name``."""
    if name not in SUITES:
        raise ValueError(f"unknown benchmark op {name!r}; choose from {', '.join(SUITES)}")
    return importlib.import_module(SUITES[name])
