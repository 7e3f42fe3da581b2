"""A static, preallocated key/value cache with a length per row.

Layout: ``k, v [n_layers, B, S, Hkv, D]`` (flash-attn's ``[batch, seq, heads, dim]`` per layer,
so ``flash_attn_with_kvcache`` takes ``k[i, :b]`` as it is and SDPA takes a transposed view).
Row ``b`` holds its tokens at positions ``0 .. lengths[b] - 1``; ``lengths`` is an int32 device
tensor, so rows of different prompt lengths share one batch without padding their positions and
without any recomputation, and a decode step reads it without a host synchronisation.

The cache lives with the model, as in gpt-fast: :meth:`seedfast.models.llama.Llama.prefill` and
``decode`` write it, and the generation layer only allocates and resets it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from seedfast.models.llama_config import LlamaConfig


@dataclass
class KVCache:
    """Keys, values and per-row lengths.

    Attributes
    ----------
    k, v : Tensor ``[n_layers, B, S, n_kv_heads, head_dim]``
    lengths : Tensor ``[B]``, int32
        Valid positions per row.
    """

    k: torch.Tensor
    v: torch.Tensor
    lengths: torch.Tensor

    @classmethod
    def allocate(cls, config: LlamaConfig, batch_size: int, max_seq_len: int, *, dtype: torch.dtype,
                 device: torch.device | str) -> KVCache:
        """An empty cache (all lengths 0) of ``batch_size`` rows × ``max_seq_len`` positions.

        Raises
        ------
        ValueError
            Non-positive sizes.
        """
        if batch_size < 1 or max_seq_len < 1:
            raise ValueError(f"KVCache.allocate: batch_size and max_seq_len must be >= 1, "
                             f"got {batch_size} and {max_seq_len}")
        shape = (config.n_layers, batch_size, max_seq_len, config.n_kv_heads, config.head_dim)
        # Zeros, not empty: positions past a row's length are masked, but a NaN there would still
        # poison SDPA's masked products (0 * NaN).
        return cls(k=torch.zeros(shape, dtype=dtype, device=device), v=torch.zeros(shape, dtype=dtype, device=device),
                   lengths=torch.zeros(batch_size, dtype=torch.int32, device=device))

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_seq_len(self) -> int:
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.lengths.nbytes

    def reset(self) -> None:
        """Forget every row's tokens (lengths → 0; the stale keys and values are masked)."""
        self.lengths.zero_()


def cache_bytes_per_token(config: LlamaConfig, dtype: torch.dtype) -> int:
    """Bytes of keys and values one cached token holds, over all layers."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * config.n_layers * config.n_kv_heads * config.head_dim * itemsize


__all__ = ["KVCache", "cache_bytes_per_token"]
