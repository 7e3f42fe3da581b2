"""LLaMA decoder (RMSNorm, rotary embeddings, SwiGLU, grouped-query attention) in a few hundred lines.

Three ways through the same layers:

* :meth:`Llama.forward`: a plain causal pass over ``[B, P]`` tokens (no cache): the oracle.
* :meth:`Llama.prefill`: prompts of different lengths into a :class:`~seedfast.models.kv_cache.KVCache`,
  right-padded (SDPA, causal) or packed (flash-attn's varlen kernel); logits of each row's last token.
* :meth:`Llama.decode`: one token per row at that row's own position (``cache.lengths``), through
  SDPA over the cache or ``flash_attn_with_kvcache``. Static shapes, no host synchronisation, so a
  CUDA graph can capture it (:mod:`seedfast.generation.cuda_graphs`).

Around the GEMMs, every path runs three fused ops through their modules (:mod:`seedfast.nn`):
:class:`~seedfast.nn.AddRMSNorm` (each residual add with the norm that follows it), the
feed-forward :class:`~seedfast.nn.SwiGLU` (over ``silu_mul``) and, in a decode step,
:class:`~seedfast.nn.RopeKVWrite` (the rotation of q and k with the cache write). ``backend="auto"``
runs their Triton kernels on CUDA when no gradient is recorded and their torch references
otherwise, which compute exactly what the unfused layers computed: CPU numerics are those of
plain torch.

The shape is a :class:`~seedfast.models.llama_config.LlamaConfig` (re-exported here). Inside,
q/k/v and gate/up are fused into one matrix each (one GEMM instead of three, or two), and the
rotary embedding uses HF's "rotate half" layout, so Hugging Face weights load by key name with no
permutation (:meth:`Llama.from_hf`, :mod:`seedfast.models.llama_hf`).
"""
from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from seedfast._lazy import moved_names
from seedfast.models.kv_cache import KVCache
from seedfast.models.llama_config import SEED_LLAMA_VOCAB, LlamaConfig, RopeScaling
from seedfast.nn.add_rms_norm import AddRMSNorm
from seedfast.nn.rope_kv_write import RopeKVWrite
from seedfast.nn.silu_mul import SwiGLU
from seedfast.ops._inference import INFERENCE_BACKENDS
from seedfast.ops.rope_kv_write import rope_rotate

ATTENTION_BACKENDS = ("auto", "sdpa", "flash")

RopeTable = tuple[torch.Tensor, torch.Tensor]
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# ``mix(i, qkv)``: layer i's fused projection ``[..., (H + 2·Hkv)·D]`` → attention output ``[..., H, D]``
# (rotary embedding, cache write and attention: what differs between forward, prefill and decode).
Mix = Callable[[int, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Rotary embeddings


def rope_inv_freq(config: LlamaConfig) -> torch.Tensor:
    """Inverse frequencies ``[head_dim / 2]`` (float32), with ``config.rope_scaling`` applied."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    s = config.rope_scaling
    if s is None:
        return inv_freq
    if s.kind == "linear":
        return inv_freq / s.factor
    wavelen = 2 * math.pi / inv_freq
    low_wavelen = s.original_max_position / s.low_freq_factor
    high_wavelen = s.original_max_position / s.high_freq_factor
    scaled = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_table(config: LlamaConfig, length: int, device: torch.device | str) -> RopeTable:
    """``(cos, sin)``, each ``[length, head_dim]`` float32, for positions ``0 .. length - 1``.

    ``cos = [cos θ, cos θ]`` and ``sin = [-sin θ, sin θ]`` over the two halves of a head, so the
    "rotate half" rotation is ``x * cos + swap_halves(x) * sin`` (:func:`apply_rope`). Callers
    own their table (the decode runner keeps one per cache), so a captured CUDA graph never
    reads a buffer that someone else reallocated.
    """
    freqs = torch.arange(length, dtype=torch.float32)[:, None] * rope_inv_freq(config)[None, :]
    cos, sin = freqs.cos(), freqs.sin()
    return torch.cat((cos, cos), -1).to(device), torch.cat((-sin, sin), -1).to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [..., H, D]`` by per-token ``cos, sin [..., D]`` (from :func:`rope_table`), in float32.

    ``[x1, x2] → [x1 cos - x2 sin, x2 cos + x1 sin]``, HF's "rotate half" layout, in five
    kernels: the path of ``forward`` and ``prefill``; a decode step fuses it with the cache
    write (:func:`seedfast.ops.rope_kv_write`, whose reference is this same computation).
    """
    return rope_rotate(x, cos, sin)


# ---------------------------------------------------------------------------------------------
# Layers


class Attention(nn.Module):
    """Fused q/k/v projection and the output projection; rotation, cache and attention are the caller's ``mix``."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.wqkv = nn.Linear(config.dim, (config.n_heads + 2 * config.n_kv_heads) * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor, mix: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``x [..., dim]`` → ``[..., dim]``; ``mix(qkv)`` rotates, caches and attends (see :data:`Mix`)."""
        return self.wo(mix(self.wqkv(x)).reshape(*x.shape[:-1], self.n_heads * self.head_dim))


class TransformerBlock(nn.Module):
    """Pre-norm attention and feed-forward, each added to the residual stream.

    The residual stream travels as ``(x, delta)`` with ``x + delta`` its value: each add is
    left to the norm that reads its result, so one :class:`~seedfast.nn.AddRMSNorm` does both.
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.attention_norm = AddRMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = AddRMSNorm(config.dim, config.norm_eps)
        self.feed_forward = SwiGLU(config.dim, config.intermediate_size)

    def forward(self, x: torch.Tensor, delta: torch.Tensor | None, mix: Callable[[torch.Tensor], torch.Tensor],
                backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, delta)`` in (``delta=None``: nothing pending) → ``(x', delta')`` out, ``[..., dim]`` each."""
        h, x = _add_norm(self.attention_norm, x, delta, backend)
        h, x = self.ffn_norm(self.attention(h, mix), x, backend=backend)
        return x, self.feed_forward(h, backend=backend)


def _add_norm(norm: AddRMSNorm, x: torch.Tensor, delta: torch.Tensor | None,
              backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(norm(x + delta), x + delta)``; with no ``delta``, ``(norm(x), x)``."""
    return norm(x) if delta is None else norm(delta, x, backend=backend)


# ---------------------------------------------------------------------------------------------
# Attention paths. Each ``attend(i, q, k, v)`` gets rotated q [..., H, D] and k, v [..., Hkv, D].


def _rope_attend(i: int, qkv: torch.Tensor, *, attend: Attend, cos: torch.Tensor, sin: torch.Tensor,
                 n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """The :data:`Mix` of ``forward`` and ``prefill``: split, rotate (unfused), then ``attend``."""
    lead = qkv.shape[:-1]
    d = qkv.shape[-1] // (n_heads + 2 * n_kv_heads)
    qk, v = qkv.split([(n_heads + n_kv_heads) * d, n_kv_heads * d], dim=-1)
    # q and k sit side by side in the fused projection: one rotation covers both.
    qk = apply_rope(qk.view(*lead, n_heads + n_kv_heads, d), cos, sin)
    q, k = qk.split([n_heads, n_kv_heads], dim=-2)
    return attend(i, q, k, v.view(*lead, n_kv_heads, d))


@functools.cache
def flash_attn_available() -> bool:
    """Whether the ``flash_attn`` package (its CUDA kernels) imports."""
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_attention(attention: str, device: torch.device, dtype: torch.dtype) -> str:
    """``"auto"`` → ``"flash"`` for fp16/bf16 CUDA models when flash-attn is installed, else ``"sdpa"``.

    Raises
    ------
    ValueError
        Unknown name, or ``"flash"`` where flash-attn cannot run.
    """
    if attention not in ATTENTION_BACKENDS:
        raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {attention!r}")
    usable = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and flash_attn_available()
    if attention == "auto":
        return "flash" if usable else "sdpa"
    if attention == "flash" and not usable:
        raise ValueError(f"attention='flash' needs the flash-attn package and an fp16/bf16 CUDA model; "
                         f"got {dtype} on {device}, flash-attn {'installed' if flash_attn_available() else 'missing'}")
    return attention


def _causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``[B, P, H(kv), D]`` causal attention → ``[B, P, H, D]`` (FlashAttention/efficient kernels on GPU)."""
    gqa = q.shape[-2] != k.shape[-2]
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=True, enable_gqa=gqa)
    return o.transpose(1, 2)


def _decode_sdpa(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One query per row over its cache: q ``[B, H, D]``, caches ``[B, S, Hkv, D]``, additive mask ``[B, 1, 1, S]``.

    The ``G = H / Hkv`` query heads of a group share one kv head, so they ride as G "query
    positions" of that head: no repeat of the cache, and the row's mask covers all of them.
    """
    b, h, d = q.shape
    hkv = k_cache.shape[2]
    o = F.scaled_dot_product_attention(q.view(b, hkv, h // hkv, d), k_cache.transpose(1, 2),
                                       v_cache.transpose(1, 2), attn_mask=mask)
    return o.reshape(b, h, d)


# ---------------------------------------------------------------------------------------------
# The model


class Llama(nn.Module):
    """LLaMA decoder with a static-cache prefill/decode interface.

    Parameters
    ----------
    config : LlamaConfig
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = AddRMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.output.weight = self.tok_embeddings.weight

    @property
    def device(self) -> torch.device:
        return self.output.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.output.weight.dtype

    def _layers(self, x: torch.Tensor, mix: Mix, backend: str) -> torch.Tensor:
        delta = None
        for i, layer in enumerate(self.layers):
            x, delta = layer(x, delta, functools.partial(mix, i), backend)
        return _add_norm(self.norm, x, delta, backend)[0]

    def _rope_mix(self, attend: Attend, cos: torch.Tensor, sin: torch.Tensor) -> Mix:
        return functools.partial(_rope_attend, attend=attend, cos=cos, sin=sin, n_heads=self.config.n_heads,
                                 n_kv_heads=self.config.n_kv_heads)

    def forward(self, tokens: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
        """Causal pass without a cache.

        Parameters
        ----------
        tokens : LongTensor ``[B, P]``
        backend : {"auto", "triton", "torch"}
            The fused ops' implementation (``add_rms_norm``, ``silu_mul``).

        Returns
        -------
        Tensor ``[B, P, vocab_size]`` in the model dtype
        """
        _check_tokens("Llama.forward", tokens, 2, self.config.vocab_size)
        _check_backend("Llama.forward", backend)
        cos, sin = rope_table(self.config, tokens.shape[1], tokens.device)
        mix = self._rope_mix(lambda i, q, k, v: _causal_sdpa(q, k, v), cos, sin)
        return self.output(self._layers(self.tok_embeddings(tokens), mix, backend))

    def prefill(self, tokens: torch.Tensor, lengths: Sequence[int], cache: KVCache, rope: RopeTable, *,
                attention: str = "sdpa", backend: str = "auto") -> torch.Tensor:
        """Run right-padded prompts into rows ``0 .. B-1`` of ``cache``; logits of each row's last token.

        Row ``b``'s keys and values land at positions ``0 .. lengths[b] - 1`` and
        ``cache.lengths[b]`` is set to ``lengths[b]``. With ``attention="sdpa"`` the padded batch
        runs causally (padding sits after every real token, so causality alone masks it); with
        ``"flash"`` the real tokens are packed and go through ``flash_attn_varlen_func``.

        Parameters
        ----------
        tokens : LongTensor ``[B, P]``, right-padded (padding ids are never attended to)
        lengths : sequence of B ints in ``[1, P]``
        cache : KVCache with at least B rows and P positions
        rope : RopeTable covering P positions
        attention : {"sdpa", "flash"}
        backend : {"auto", "triton", "torch"}
            The fused ops' implementation (``add_rms_norm``, ``silu_mul``).

        Returns
        -------
        Tensor ``[B, vocab_size]`` in the model dtype

        Raises
        ------
        ValueError
            Shapes, lengths or a cache too small.
        """
        op = "Llama.prefill"
        _check_tokens(op, tokens, 2, self.config.vocab_size)
        _check_backend(op, backend)
        b, p = tokens.shape
        lengths = [int(n) for n in lengths]
        if len(lengths) != b or not all(1 <= n <= p for n in lengths):
            raise ValueError(f"{op}: lengths must be {b} ints in [1, {p}], got {lengths}")
        if b > cache.batch_size or p > cache.max_seq_len:
            raise ValueError(f"{op}: [B, P] = [{b}, {p}] does not fit a cache of {cache.batch_size} rows × "
                             f"{cache.max_seq_len} positions")
        if rope[0].shape[0] < p:
            raise ValueError(f"{op}: rope table covers {rope[0].shape[0]} positions, prompts need {p}")
        dev = tokens.device
        lengths_t = torch.tensor(lengths, dtype=torch.int32, device=dev)
        if attention == "flash":
            keep = torch.arange(p, device=dev)[None, :] < lengths_t[:, None]
            flat = tokens[keep]
            rows = torch.arange(b, device=dev)[:, None].expand(b, p)[keep]
            pos = torch.arange(p, device=dev)[None, :].expand(b, p)[keep]
            cu = F.pad(lengths_t.cumsum(0, dtype=torch.int32), (1, 0))
            attend = functools.partial(_prefill_varlen, cache=cache, rows=rows, pos=pos, cu=cu, max_len=max(lengths))
            h = self._layers(self.tok_embeddings(flat), self._rope_mix(attend, rope[0][pos], rope[1][pos]), backend)
            last = h[cu[1:].long() - 1]
        elif attention == "sdpa":
            attend = functools.partial(_prefill_padded, cache=cache)
            h = self._layers(self.tok_embeddings(tokens), self._rope_mix(attend, rope[0][:p], rope[1][:p]), backend)
            last = h[torch.arange(b, device=dev), lengths_t.long() - 1]
        else:
            raise ValueError(f"{op}: attention must be 'sdpa' or 'flash', got {attention!r}")
        cache.lengths[:b] = lengths_t
        return self.output(last)

    def decode(self, tokens: torch.Tensor, cache: KVCache, rope: RopeTable, *, seq_len: int | None = None,
               attention: str = "sdpa", backend: str = "auto") -> torch.Tensor:
        """One token per row: write its key/value at ``cache.lengths[b]`` and attend to ``0 .. lengths[b]``.

        ``cache.lengths`` is read, not advanced (the caller decides which rows advance). No host
        synchronisation: capturable in a CUDA graph.

        Parameters
        ----------
        tokens : LongTensor ``[B]``
        cache : KVCache with at least B rows; rows ``0 .. B-1`` are used
        rope : RopeTable covering every position in ``cache.lengths[:B]``
            Held as it is (no copy) by the step's :class:`~seedfast.nn.RopeKVWrite`, which checks it.
        seq_len : int, optional
            Attend over the first ``seq_len`` cache positions only (SDPA; default: the whole cache).
            Every ``cache.lengths[b]`` must be below it.
        attention : {"sdpa", "flash"}
            ``"flash"`` uses ``flash_attn_with_kvcache``, which reads only each row's valid prefix.
        backend : {"auto", "triton", "torch"}
            The fused ops' implementation (``rope_kv_write``, ``add_rms_norm``, ``silu_mul``).

        Returns
        -------
        Tensor ``[B, vocab_size]`` in the model dtype
        """
        _check_backend("Llama.decode", backend)
        b = tokens.shape[0]
        s = cache.max_seq_len if seq_len is None else seq_len
        positions = cache.lengths[:b]
        # The caller's table, held as it is (no copy): what a captured CUDA graph reads.
        rotate_write = RopeKVWrite(*rope, backend=backend)
        if attention == "flash":
            # The cache already holds the new token when flash-attn runs: it attends to lengths + 1.
            mix = functools.partial(_decode_flash, cache=cache, rotate_write=rotate_write, positions=positions,
                                    seqlens=positions + 1)
        elif attention == "sdpa":
            # Additive, in the model dtype, built once per step rather than converted in every layer.
            beyond = torch.arange(s, device=tokens.device)[None, :] > positions[:, None]
            mask = torch.zeros(beyond.shape, dtype=self.dtype, device=tokens.device).masked_fill_(beyond, -math.inf)
            mask = mask[:, None, None, :]
            mix = functools.partial(_decode_padded, cache=cache, rotate_write=rotate_write, positions=positions,
                                    seq_len=s, mask=mask)
        else:
            raise ValueError(f"Llama.decode: attention must be 'sdpa' or 'flash', got {attention!r}")
        return self.output(self._layers(self.tok_embeddings(tokens), mix, backend))

    # -- Hugging Face checkpoints ------------------------------------------------------------

    @staticmethod
    def from_hf(path_or_state_dict: str | Path | Mapping[str, torch.Tensor],
                config: LlamaConfig | Mapping | None = None, *, dtype: torch.dtype | None = None,
                device: torch.device | str = "cpu") -> Llama:
        """Load Hugging Face LLaMA weights (``LlamaForCausalLM`` key names) from a folder or a state dict.

        See :func:`seedfast.models.llama_hf.load_hf` for the parameters and errors.
        """
        return _llama_hf().load_hf(path_or_state_dict, config, dtype=dtype, device=device)

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under Hugging Face ``LlamaForCausalLM`` key names, as views (no copies)."""
        return _llama_hf().to_hf_state_dict(self)


def _llama_hf() -> ModuleType:
    # Imported by name: llama_hf builds on this module, so a static import would be a cycle.
    return importlib.import_module("seedfast.models.llama_hf")


def _prefill_padded(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, cache: KVCache) -> torch.Tensor:
    b, p = k.shape[:2]
    cache.k[i, :b, :p] = k
    cache.v[i, :b, :p] = v
    return _causal_sdpa(q, k, v)


def _prefill_varlen(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, cache: KVCache,
                    rows: torch.Tensor, pos: torch.Tensor, cu: torch.Tensor, max_len: int) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    cache.k[i][rows, pos] = k
    cache.v[i][rows, pos] = v
    return flash_attn_varlen_func(q, k, v, cu, cu, max_len, max_len, causal=True)


def _decode_padded(i: int, qkv: torch.Tensor, *, cache: KVCache, rotate_write: RopeKVWrite, positions: torch.Tensor,
                   seq_len: int, mask: torch.Tensor) -> torch.Tensor:
    b = qkv.shape[0]
    q = rotate_write(qkv, positions, cache.k[i], cache.v[i])
    return _decode_sdpa(q, cache.k[i, :b, :seq_len], cache.v[i, :b, :seq_len], mask)


def _decode_flash(i: int, qkv: torch.Tensor, *, cache: KVCache, rotate_write: RopeKVWrite, positions: torch.Tensor,
                  seqlens: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_with_kvcache

    b = qkv.shape[0]
    q = rotate_write(qkv, positions, cache.k[i], cache.v[i])
    # Attends to positions 0 .. seqlens[b] - 1, the new token (written above) included.
    o = flash_attn_with_kvcache(q[:, None], cache.k[i, :b], cache.v[i, :b], cache_seqlens=seqlens, causal=True)
    return o[:, 0]


def _check_tokens(op: str, tokens: object, ndim: int, vocab_size: int) -> None:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{op}: tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{op}: tokens must be int64 (or int32), got {tokens.dtype}")
    if tokens.dim() != ndim or 0 in tokens.shape:
        raise ValueError(f"{op}: tokens must be a non-empty {ndim}-d tensor, got shape {tuple(tokens.shape)}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{op}: token ids must be in [0, {vocab_size}), got ids from {lo} to {hi}")


def _check_backend(op: str, backend: object) -> None:
    if backend not in INFERENCE_BACKENDS:
        raise ValueError(f"{op}: backend must be one of {INFERENCE_BACKENDS}, got {backend!r}")


def parameter_count(config: LlamaConfig) -> int:
    """Number of parameters (the tied matrix counted once), from a weightless build on meta."""
    with torch.device("meta"):
        return sum(p.numel() for p in Llama(config).parameters())


__getattr__ = moved_names(__name__, {"expected_hf_shapes": "seedfast.models.llama_hf",
                                     "hf_to_state_dict": "seedfast.models.llama_hf"})

__all__ = [
    "ATTENTION_BACKENDS",
    "KVCache",
    "Llama",
    "LlamaConfig",
    "RopeScaling",
    "RopeTable",
    "SEED_LLAMA_VOCAB",
    "apply_rope",
    "flash_attn_available",
    "parameter_count",
    "resolve_attention",
    "rope_inv_freq",
    "rope_table",
]
