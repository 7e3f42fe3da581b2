"""SwiGLU over :func:`seedfast.ops.silu_mul`: the activation alone, and the whole feed-forward block.

* :class:`SiluMul`: ``silu(gate) · up`` from a fused ``[gate | up]`` projection, for a model
  that keeps its own linear layers (vLLM's ``SiluAndMul`` layout).
* :class:`SwiGLU`: LLaMA's feed-forward ``w2(silu(gate(x)) · up(x))`` with gate and up fused into
  one matrix ``w13`` (one GEMM instead of two), as gpt-fast names it. It owns its linear layers,
  so it is the module a decoder block holds (:mod:`seedfast.models.llama` does). A Hugging Face
  ``LlamaMLP`` maps onto it as ``w13.weight = cat([gate_proj.weight, up_proj.weight])`` and
  ``w2.weight = down_proj.weight``.
"""
from __future__ import annotations

import torch
from torch import nn

from seedfast._checks import check_positive_ints
from seedfast.ops._inference import check_inference_backend, check_module_input
from seedfast.ops.silu_mul import silu_mul


class SiluMul(nn.Module):
    """``silu(x[..., :I]) · x[..., I:]``: SwiGLU's activation on a fused ``[gate | up]`` projection.

    Parameters
    ----------
    backend : {"auto", "triton", "torch"}
        Passed to :func:`seedfast.ops.silu_mul`; may be changed by assigning ``module.backend``
        or overridden per call. ``"auto"``: the Triton kernel on CUDA tensors when no gradient
        is recorded, the differentiable torch reference otherwise.

    Raises
    ------
    ValueError
        An unknown ``backend``.
    """

    def __init__(self, *, backend: str = "auto") -> None:
        super().__init__()
        check_inference_backend(type(self).__name__, backend)
        self.backend = backend

    def forward(self, x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
        """Apply the activation.

        Parameters
        ----------
        x : Tensor ``[..., 2·I]``, float32/float16/bfloat16 (float64: torch backend)
            Gate in the first half of the last dim, up in the second.
        backend : {"auto", "triton", "torch"}, optional
            Overrides ``self.backend`` for this call.

        Returns
        -------
        Tensor ``[..., I]`` in the dtype of ``x``

        Raises
        ------
        TypeError
            ``x`` is not a tensor or has a dtype the op does not take.
        ValueError
            An odd or zero last dim, or an unknown ``backend``.
        """
        if backend is not None:
            check_inference_backend(type(self).__name__, backend)
        return silu_mul(x, backend=backend or self.backend)

    def extra_repr(self) -> str:
        return "" if self.backend == "auto" else f"backend={self.backend!r}"


class SwiGLU(nn.Module):
    """LLaMA's feed-forward block: ``w2(silu(x·W_gateᵀ) · x·W_upᵀ)``, gate and up fused in ``w13``.

    Parameters
    ----------
    dim : int
        Input and output width (SEED-LLaMA 8B: 4096, 14B: 5120).
    hidden_dim : int
        The intermediate width ``I`` (8B: 11008, 14B: 13824).
    bias : bool
        Biases on both projections (LLaMA: False).
    backend : {"auto", "triton", "torch"}
        Passed to :func:`seedfast.ops.silu_mul`, as :class:`SiluMul`'s.
    device, dtype
        Of the projections.

    Attributes
    ----------
    w13 : nn.Linear ``dim → 2·hidden_dim``
        Gate rows first, then up rows.
    w2 : nn.Linear ``hidden_dim → dim``
        The down projection.

    Raises
    ------
    TypeError
        ``dim`` or ``hidden_dim`` is not an int.
    ValueError
        A size below 1 or an unknown ``backend``.
    """

    def __init__(self, dim: int, hidden_dim: int, *, bias: bool = False, backend: str = "auto",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive_ints(name, dim=dim, hidden_dim=hidden_dim)
        check_inference_backend(name, backend)
        self.dim, self.hidden_dim = dim, hidden_dim
        self.backend = backend
        self.w13 = nn.Linear(dim, 2 * hidden_dim, bias=bias, device=device, dtype=dtype)
        self.w2 = nn.Linear(hidden_dim, dim, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
        """Run the block.

        Parameters
        ----------
        x : Tensor ``[..., dim]``, the projections' dtype
        backend : {"auto", "triton", "torch"}, optional
            Overrides ``self.backend`` for this call.

        Returns
        -------
        Tensor ``[..., dim]``

        Raises
        ------
        TypeError
            ``x`` is not a tensor.
        ValueError
            ``x``'s last dim is not ``dim``, or an unknown ``backend``.
        """
        check_module_input(type(self).__name__, x, self.dim, backend)
        return self.w2(silu_mul(self.w13(x), backend=backend or self.backend))

    def extra_repr(self) -> str:
        parts = [f"dim={self.dim}", f"hidden_dim={self.hidden_dim}"]
        if self.backend != "auto":
            parts.append(f"backend={self.backend!r}")
        return ", ".join(parts)
