"""Test setup: without a GPU, Triton kernels run in Triton's CPU interpreter.

``TRITON_INTERPRET`` is read when a kernel is decorated, so it is set here, before any test
imports ``seedfast.kernels``.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    """Where kernels run: the GPU when present, else the CPU under the Triton interpreter."""
    return KERNEL_DEVICE


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
