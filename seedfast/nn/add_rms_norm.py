"""``AddRMSNorm``: a pre-norm block's residual add and the RMSNorm after it, over :func:`seedfast.ops.add_rms_norm`.

A pre-norm block computes ``residual = residual + sublayer(h)`` and then ``h = norm(residual)``:
two passes over the hidden state where one does. This module takes the sublayer's output and
the residual stream and returns both the normalised sum and the sum (the new stream), as vLLM's
fused RMSNorm does; with no residual (the first layer) it is a plain RMSNorm. The weight is
named ``weight``, as in ``nn.RMSNorm`` and Hugging Face's ``LlamaRMSNorm``, so their state dicts
load as they are.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seedfast._checks import check_positive_ints
from seedfast.ops._inference import check_inference_backend, check_module_input
from seedfast.ops.add_rms_norm import add_rms_norm

# LLaMA-2's and Hugging Face's LlamaRMSNorm default.
DEFAULT_EPS = 1e-6


class AddRMSNorm(nn.Module):
    """Residual add + RMSNorm: ``(rms_norm(residual + x) · weight, residual + x)``.

    Parameters
    ----------
    dim : int
        The normalised (last) dimension, ``N`` (SEED-LLaMA 8B: 4096, 14B: 5120).
    eps : float
        Added to the mean square before the root; > 0.
    backend : {"auto", "triton", "torch"}
        Passed to :func:`seedfast.ops.add_rms_norm`; may be changed by assigning
        ``module.backend`` or overridden per call. ``"auto"``: the Triton kernel on CUDA tensors
        when no gradient is recorded, the differentiable torch reference otherwise.
    device, dtype
        Of the weight.

    Attributes
    ----------
    weight : nn.Parameter ``[dim]``
        Initialised to ones.
    eps : float

    Raises
    ------
    TypeError
        ``dim`` is not an int.
    ValueError
        ``dim`` below 1, ``eps`` not a number > 0, or an unknown ``backend``.

    Notes
    -----
    The norm runs in float32 and is rounded once; Hugging Face's ``LlamaRMSNorm`` rounds to the
    model dtype before the weight, so in bfloat16 the two may differ by one unit in the last
    place (float32: equal up to rounding).
    """

    def __init__(self, dim: int, eps: float = DEFAULT_EPS, *, backend: str = "auto",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive_ints(name, dim=dim)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"{name}: eps must be a number > 0, got {eps!r}")
        check_inference_backend(name, backend)
        self.dim = dim
        self.eps = float(eps)
        self.backend = backend
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, *,
                backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Add ``x`` to ``residual`` and normalise the sum.

        Parameters
        ----------
        x : Tensor ``[..., dim]``, floating
            The sublayer's output; with no ``residual``, the stream itself.
        residual : Tensor ``[..., dim]``, optional
            The residual stream, the shape of ``x``. ``None``: nothing to add, ``x`` is
            normalised through ``F.rms_norm`` (one kernel on CUDA; no backend applies).
        backend : {"auto", "triton", "torch"}, optional
            Overrides ``self.backend`` for this call.

        Returns
        -------
        normed : Tensor ``[..., dim]``
            ``rms_norm(residual + x) · weight``: the next sublayer's input.
        summed : Tensor ``[..., dim]``
            ``residual + x`` (``x`` itself with no ``residual``): the new residual stream.

        Raises
        ------
        TypeError
            ``x`` or ``residual`` is not a tensor (the op raises for dtypes it cannot take).
        ValueError
            ``x``'s last dim is not ``dim``, shapes differ, or an unknown ``backend``.
        """
        check_module_input(type(self).__name__, x, self.dim, backend)
        if residual is None:
            return F.rms_norm(x, (self.dim,), self.weight, self.eps), x
        return add_rms_norm(x, residual, self.weight, self.eps, backend=backend or self.backend)

    def extra_repr(self) -> str:
        parts = [f"{self.dim}", f"eps={self.eps:g}"]
        if self.backend != "auto":
            parts.append(f"backend={self.backend!r}")
        return ", ".join(parts)
