"""The stage-2 heads around the codebook (spec §7): task layers, the timm-style transformer
``Block`` of the reconstruction and generation branches, and the ``image_down`` MLP.

Parameter names follow the official modules (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
``mlp.fc1``, ``mlp.fc2``; ``Sequential`` indices ``0``/``2``/``4`` for the task layers and
``image_down``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with a fused, biased ``qkv`` (timm ``Attention``).

    Parameters
    ----------
    width, num_heads : int
        Scale ``(width / num_heads) ** -0.5``.
    """

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, C]`` → ``[B, L, C]``."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` with the exact (erf) GELU."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block (``models/seed_qformer/vit.py::Block``; EVA's block too):
    ``x += attn(norm1(x)); x += mlp(norm2(x))``, no mask, no drop-path, no layer scale.

    Parameters
    ----------
    width, num_heads, mlp_dim : int
    eps : float
        LayerNorm epsilon (1e-6).
    attention : type
        The attention module, built as ``attention(width, num_heads)``: the fused-bias
        :class:`Attention` of SEED's heads, or EVA's q/v-bias variant.
    """

    def __init__(self, width: int, num_heads: int, mlp_dim: int, eps: float,
                 attention: type[nn.Module] = Attention) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = attention(width, num_heads)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def task_layer(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """``Linear → Tanh → Linear`` (``encode_task_layer`` 768→768→32, ``decode_task_layer`` 32→32→768)."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, out_features))


def image_down(width: int, dims: tuple[int, int, int]) -> nn.Sequential:
    """Bias-free ``Linear → ReLU → Linear → ReLU → Linear`` (768→256→128→32 in SEED)."""
    d1, d2, d3 = dims
    return nn.Sequential(
        nn.Linear(width, d1, bias=False), nn.ReLU(),
        nn.Linear(d1, d2, bias=False), nn.ReLU(),
        nn.Linear(d2, d3, bias=False),
    )
