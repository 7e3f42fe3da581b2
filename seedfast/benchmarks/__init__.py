"""Microbenchmarks of seedfast's ops against their peers (``seedfast bench``).

Each suite is a module with ``NAME``, ``cases(quick, device)`` and ``impls``; the shared
harness in :mod:`seedfast.benchmarks.harness` times them side by side. An op's suite has the
op's name (``seedfast.benchmarks.<op>``, ``bench/bench_<op>.py``); ``tokenizer`` and ``decode``
time whole models. :mod:`~seedfast.benchmarks.train_step` is no suite: it times training steps
for ``seedfast budget``; :mod:`~seedfast.benchmarks.cli` holds both commands.
"""
from __future__ import annotations

import importlib
import warnings
from types import ModuleType

SUITES = {
    "add_rms_norm": "seedfast.benchmarks.add_rms_norm",
    "constrained_sample": "seedfast.benchmarks.constrained_sample",
    "decode": "seedfast.benchmarks.decode",
    "qformer_attention": "seedfast.benchmarks.qformer_attention",
    "rope_kv_write": "seedfast.benchmarks.rope_kv_write",
    "silu_mul": "seedfast.benchmarks.silu_mul",
    "tokenizer": "seedfast.benchmarks.tokenizer",
    "vq": "seedfast.benchmarks.vq",
}

# The suites' names before they took their op's name; accepted for one release.
DEPRECATED_NAMES = {"attention": "qformer_attention", "sampling": "constrained_sample"}


def load_suite(name: str) -> ModuleType:
    """Import the suite module for op ``name``.

    Raises
    ------
    ValueError
        ``name`` is not a suite.
    """
    if name in DEPRECATED_NAMES:
        new = DEPRECATED_NAMES[name]
        warnings.warn(f"benchmark op {name!r} is now called {new!r}; the old name goes in the next release",
                      FutureWarning, stacklevel=2)
        name = new
    if name not in SUITES:
        raise ValueError(f"unknown benchmark op {name!r}; choose from {', '.join(SUITES)}")
    return importlib.import_module(SUITES[name])
