"""EVA ViT-g/14, the SEED tokenizer's frozen image encoder (spec §3), and ``ln_vision``.

Module and parameter names follow the official ``eva_vit.py`` so that ``eva_vit_g.pth`` loads by
name: ``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.{norm1, attn.qkv,
attn.q_bias, attn.v_bias, attn.proj, norm2, mlp.fc1, mlp.fc2}``.

Differences from the official code, none of which changes the function computed:

* The q/k/v biases are applied as three GEMMs on row slices (views) of the fused ``qkv``
  weight, ``q`` and ``v`` with their bias in the GEMM epilogue and ``k`` without one, instead
  of building ``cat(q_bias, zeros, v_bias)`` on every call (spec §13 item 3). The three GEMMs
  together do the work of the fused one.
* Attention goes through ``torch.nn.functional.scaled_dot_product_attention`` (FlashAttention
  / memory-efficient kernels on GPU) rather than an explicit ``[B, 16, 257, 257]`` softmax.
* Drop-path and dropout are not built: SEED never trains the ViT and runs it with rate 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seedfast.models.heads import Block


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided convolution (``patch_embed.proj``, with bias).

    Parameters
    ----------
    patch_size : int
    width : int
        Output channels (the ViT width).
    """

    def __init__(self, patch_size: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` → ``[B, (S/p)², width]``."""
        return self.proj(images).flatten(2).transpose(1, 2)


class EvaAttention(nn.Module):
    """Multi-head self-attention with a bias-free fused ``qkv`` and separate ``q_bias``/``v_bias``.

    Parameters
    ----------
    width : int
    num_heads : int
        ``width`` must be divisible by it; the scale is ``(width / num_heads) ** -0.5``.
    """

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, C]`` → ``[B, L, C]``; every token sees every token."""
        b, n, c = x.shape
        w = self.qkv.weight
        # The effective bias is (q_bias, 0, v_bias): k simply gets no bias.
        q = F.linear(x, w[:c], self.q_bias)
        k = F.linear(x, w[c:2 * c])
        v = F.linear(x, w[2 * c:], self.v_bias)
        heads = (b, n, self.num_heads, c // self.num_heads)
        out = F.scaled_dot_product_attention(
            q.view(heads).transpose(1, 2), k.view(heads).transpose(1, 2), v.view(heads).transpose(1, 2)
        )
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class EvaVisionTransformer(nn.Module):
    """EVA ViT without final norm or pooling: all tokens of the last built block.

    SEED builds 39 of EVA-CLIP-g's 40 blocks (BLIP-2's "second-to-last layer" features).

    Parameters
    ----------
    image_size, patch_size : int
        ``image_size`` must be a multiple of ``patch_size``.
    width, depth, num_heads, mlp_dim : int
    eps : float
        Block LayerNorm epsilon.
    """

    def __init__(
        self, *, image_size: int, patch_size: int, width: int, depth: int, num_heads: int, mlp_dim: int, eps: float
    ) -> None:
        super().__init__()
        self.image_size = image_size
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = PatchEmbed(patch_size, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, width))
        self.blocks = nn.ModuleList(Block(width, num_heads, mlp_dim, eps, EvaAttention) for _ in range(depth))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Image tokens.

        Parameters
        ----------
        images : Tensor ``[B, 3, S, S]``, dtype of the weights (preprocessed, spec §2)

        Returns
        -------
        Tensor ``[B, 1 + (S/p)², width]``: the CLS token first, then patches in raster order.
        """
        patches = self.patch_embed(images)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        x = torch.cat((cls, patches), dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back to the input dtype (``ln_vision``, spec §3).

    Half-precision inputs are upcast together with the weights, so the result is the float32
    normalisation rounded once; float32 inputs are unchanged by the casts.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)
