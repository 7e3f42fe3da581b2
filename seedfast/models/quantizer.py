"""SEED's codebook (``quantize.embedding.weight``, spec §6) over the fused VQ ops.

Inference uses :func:`seedfast.ops.nearest_code` only (no distance matrix, no unused loss or
straight-through arithmetic, spec §13 item 1); training uses :func:`seedfast.ops.vq_quantize`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seedfast.ops import VQOutput, nearest_code, vq_quantize

BETA = 0.25
"""Weight of the codebook term of the legacy VQ loss (commitment term weight 1)."""


class VectorQuantizer(nn.Module):
    """A codebook of ``codebook_size`` codes of ``code_dim``, nearest code by L2 distance.

    Parameters
    ----------
    codebook_size, code_dim : int
        8192 × 32 in SEED.
    beta : float
        Codebook-term weight of the loss (0.25).
    """

    def __init__(self, codebook_size: int, code_dim: int, beta: float = BETA) -> None:
        super().__init__()
        self.beta = beta
        self.embedding = nn.Embedding(codebook_size, code_dim)

    @property
    def codebook(self) -> torch.Tensor:
        """``[K, D]``."""
        return self.embedding.weight

    def forward(self, z: torch.Tensor) -> VQOutput:
        """Training: ``(z_q, codes, loss)`` with the straight-through gradient (see :func:`seedfast.ops.vq_quantize`).

        Parameters
        ----------
        z : Tensor ``[..., D]``

        Returns
        -------
        VQOutput
            ``z_q [..., D]`` (dtype of ``z``), ``codes [...]`` int64, ``loss []`` float32.
        """
        return vq_quantize(z, self.embedding.weight, self.beta)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Inference: ``[..., D]`` → code ids ``[...]`` int64 (ties to the lowest id)."""
        return nearest_code(z, self.embedding.weight)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes [...]`` int64 → ``[..., D]`` codebook entries (``get_codebook_entry``)."""
        return F.embedding(codes, self.embedding.weight)
