"""The accuracy rule of every kernel test: compare against a float64 oracle by relative norm
error, and allow the kernel at most twice the error of the same-precision torch baseline."""
from __future__ import annotations

import torch


def rel_err(x: torch.Tensor, oracle: torch.Tensor) -> float:
    """‖x − oracle‖ / ‖oracle‖ in float64 (absolute error when the oracle is zero)."""
    x64, o64 = x.detach().double(), oracle.detach().double()
    assert x64.shape == o64.shape, f"shape {tuple(x64.shape)} != oracle shape {tuple(o64.shape)}"
    assert torch.isfinite(x64).all(), "non-finite values in the result"
    num = (x64 - o64).norm().item()
    den = o64.norm().item()
    return num / den if den > 0 else num


def assert_within_baseline(x: torch.Tensor, baseline: torch.Tensor, oracle: torch.Tensor, *, floor: float, what: str) -> None:
    """Kernel error ≤ 2 × baseline error + ``floor`` (the floor absorbs baselines that are exact)."""
    err, base = rel_err(x, oracle), rel_err(baseline, oracle)
    assert err <= 2.0 * base + floor, f"{what}: kernel error {err:.3e} > 2 × baseline {base:.3e} + {floor:.0e}"
