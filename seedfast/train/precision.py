"""The precision a run computes in: ``train.precision`` resolved for a device, and its autocast.

Its own module because the run builder, the feature precompute and the step benchmark all
need it, and none of them may import another for it.
"""
from __future__ import annotations

import contextlib

import torch

from seedfast.train.config import RunConfig


def compute_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA (``precision="auto"``) or when asked; else float32.

    Parameters
    ----------
    cfg : the run's settings (``train.precision``)
    device : where the run computes

    Returns
    -------
    ``torch.bfloat16`` or ``torch.float32``.
    """
    p = cfg.train.precision
    return torch.bfloat16 if p == "bf16" or (p == "auto" and device.type == "cuda") else torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """A fresh autocast context to ``dtype`` on ``device`` (nothing to do for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
