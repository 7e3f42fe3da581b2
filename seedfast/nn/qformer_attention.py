"""``QFormerAttention``: multi-head self- or cross-attention over :func:`seedfast.ops.qformer_attention`.

The attention block of a BLIP-2-style Q-Former without its residual and LayerNorm: q/k/v
projections, heads, the op with its index-computed mask (``causal``, ``kv_lens``), and the
output projection. SEED's Causal Q-Former uses it three ways (spec §4): causal self-attention
among the 32 queries, cross-attention from the queries to the image tokens (keys of width 1408
projected to 768), and bidirectional self-attention with padded text (``kv_lens``).

``layout="bert"`` names the projections as BERT does (``query``, ``key``, ``value``, the output
projection left to the caller's residual block), so BERT- and BLIP-2-named state dicts load as
they are; ``attention=`` swaps the op for any function of the same signature.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from seedfast._checks import check_positive_ints
from seedfast.ops import qformer_attention
from seedfast.ops._common import BACKENDS

AttentionFn = Callable[..., torch.Tensor]
"""``fn(q, k, v, *, causal: bool, kv_lens: Tensor | None) -> Tensor``, layout ``[B, H, L, D]``."""

LAYOUTS: dict[str, tuple[str, str, str, str | None]] = {
    # Attribute names of the query, key, value and output projections.
    "qkvo": ("q_proj", "k_proj", "v_proj", "out_proj"),
    # BERT's BertSelfAttention: its output projection is BertSelfOutput.dense, beside the residual.
    "bert": ("query", "key", "value", None),
}


class QFormerAttention(nn.Module):
    """Multi-head attention with ``causal`` / key-length masks computed from indices.

    Parameters
    ----------
    dim : int
        Width of the queries and of the output (SEED: 768).
    num_heads : int
        Number of heads; must divide ``dim`` (SEED: 12, head dim 64).
    kv_dim : int or None
        Width of the keys/values input for cross-attention (SEED's image tokens: 1408).
        ``None``: ``dim``.
    causal : bool
        Default of ``forward``'s ``causal``: query ``i`` sees keys ``j <= i`` (top-left aligned).
    bias : bool
        Biases on the projections (BERT/BLIP-2: True).
    backend : {"auto", "triton", "torch"}
        Passed to :func:`seedfast.ops.qformer_attention`; may be changed by assigning
        ``module.backend``.
    layout : {"qkvo", "bert"}
        ``"qkvo"`` (default): the four projections below. ``"bert"``: ``query``, ``key`` and
        ``value`` only, as BERT's ``BertSelfAttention`` (e.g. SEED's
        ``Qformer.bert.encoder.layer.0.attention.self.query``); the output is the heads merged,
        ``[B, Lq, dim]``, and the output projection belongs to the caller (BERT's
        ``BertSelfOutput.dense``, applied with the residual and LayerNorm).
    attention : callable, optional
        Used instead of :func:`seedfast.ops.qformer_attention` (``backend`` is then unused):
        ``fn(q, k, v, *, causal, kv_lens)`` on ``[B, H, L, D]`` tensors, e.g. an explicit-mask
        SDPA or a benchmark's peer. May be changed by assigning ``module.attend``.
    device, dtype
        Of the projections.

    Attributes
    ----------
    q_proj : nn.Linear ``dim → dim``
        ``query`` with ``layout="bert"``.
    k_proj, v_proj : nn.Linear ``kv_dim → dim``
        ``key``, ``value`` with ``layout="bert"``.
    out_proj : nn.Linear ``dim → dim``
        Absent with ``layout="bert"``.
    attend : callable or None
        The ``attention`` argument.

    Raises
    ------
    TypeError
        ``dim``, ``num_heads`` or ``kv_dim`` is not an int.
    ValueError
        A size below 1, ``num_heads`` does not divide ``dim``, or an unknown ``backend`` or
        ``layout``.

    Notes
    -----
    There is no attention-probability dropout (the op has none); a query row that sees no key
    outputs ``out_proj``'s bias (the op returns zeros for it, where softmax would give NaN).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        kv_dim: int | None = None,
        causal: bool = False,
        bias: bool = True,
        backend: str = "auto",
        layout: str = "qkvo",
        attention: AttentionFn | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        sizes = {"dim": dim, "num_heads": num_heads}
        if kv_dim is not None:
            sizes["kv_dim"] = kv_dim
        check_positive_ints(name, **sizes)
        if backend not in BACKENDS:
            raise ValueError(f"{name}: backend must be one of {BACKENDS}, got {backend!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"{name}: layout must be one of {tuple(LAYOUTS)}, got {layout!r}")
        if dim % num_heads:
            raise ValueError(f"{name}: num_heads ({num_heads}) must divide dim ({dim})")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.kv_dim = dim if kv_dim is None else kv_dim
        self.causal = bool(causal)
        self.backend = backend
        self.layout = layout
        self.attend = attention
        factory = {"device": device, "dtype": dtype}
        q_name, k_name, v_name, out_name = LAYOUTS[layout]
        self.add_module(q_name, nn.Linear(dim, dim, bias=bias, **factory))
        self.add_module(k_name, nn.Linear(self.kv_dim, dim, bias=bias, **factory))
        self.add_module(v_name, nn.Linear(self.kv_dim, dim, bias=bias, **factory))
        if out_name is not None:
            self.add_module(out_name, nn.Linear(dim, dim, bias=bias, **factory))

    @property
    def projections(self) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear | None]:
        """The query, key, value and output projections whatever the layout (output None for ``"bert"``)."""
        q, k, v, out = (None if n is None else getattr(self, n) for n in LAYOUTS[self.layout])
        return q, k, v, out

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        kv_lens: torch.Tensor | None = None,
        causal: bool | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` to ``context`` (cross-attention) or to ``x`` itself.

        Parameters
        ----------
        x : Tensor ``[B, Lq, dim]``, floating
            The queries' input (SEED: the 32 query tokens). With ``context``, ``x`` may have
            batch 1: queries shared by every context row are projected once and broadcast.
        context : Tensor ``[B, Lk, kv_dim]``, optional
            The keys/values' input for cross-attention; ``None`` for self-attention.
        kv_lens : Tensor ``[B]``, integer, optional
            Keys at index ``>= kv_lens[b]`` are masked (padding); clamped to ``[0, Lk]``.
        causal : bool, optional
            Overrides the constructor's ``causal`` for this call.

        Returns
        -------
        Tensor ``[B, Lq, dim]``, dtype of the projections' output (``B``: ``context``'s batch
        when given).

        Raises
        ------
        TypeError
            ``x`` or ``context`` is not a tensor.
        ValueError
            ``x`` or ``context`` is not 3-D with the expected width, or batch sizes differ and
            ``x``'s is not 1 (the op raises for ``kv_lens`` of the wrong shape or dtype).
        """
        name = type(self).__name__
        _check_input(name, "x", x, self.dim)
        source = x
        if context is not None:
            _check_input(name, "context", context, self.kv_dim)
            if context.shape[0] != x.shape[0] and x.shape[0] != 1:
                raise ValueError(
                    f"{name}: context batch ({context.shape[0]}) must equal x's batch ({x.shape[0]})"
                )
            source = context
        elif self.kv_dim != self.dim:
            raise ValueError(f"{name}: built for cross-attention (kv_dim={self.kv_dim}); pass context")
        bq, lq, _ = x.shape
        b, lk, _ = source.shape
        q_proj, k_proj, v_proj, out_proj = self.projections
        q = q_proj(x).view(bq, lq, self.num_heads, self.head_dim).transpose(1, 2).expand(b, -1, -1, -1)
        k = k_proj(source).view(b, lk, self.num_heads, self.head_dim).transpose(1, 2)
        v = v_proj(source).view(b, lk, self.num_heads, self.head_dim).transpose(1, 2)
        causal = self.causal if causal is None else causal
        if self.attend is None:
            out = qformer_attention(q, k, v, causal=causal, kv_lens=kv_lens, backend=self.backend)
        else:
            out = self.attend(q, k, v, causal=causal, kv_lens=kv_lens)
        out = out.transpose(1, 2).reshape(b, lq, self.dim)
        return out if out_proj is None else out_proj(out)

    def extra_repr(self) -> str:
        parts = [f"dim={self.dim}", f"num_heads={self.num_heads}"]
        if self.kv_dim != self.dim:
            parts.append(f"kv_dim={self.kv_dim}")
        if self.causal:
            parts.append("causal=True")
        if self.backend != "auto":
            parts.append(f"backend={self.backend!r}")
        if self.layout != "qkvo":
            parts.append(f"layout={self.layout!r}")
        return ", ".join(parts)


def _check_input(name: str, arg: str, value: object, width: int) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != 3 or value.shape[-1] != width:
        raise ValueError(f"{name}: {arg} must have shape [B, L, {width}], got {tuple(value.shape)}")
