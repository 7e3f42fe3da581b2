"""LLaMA decoder (RMSNorm, rotary embeddings, SwiGLU, grouped-query attention) in a few hundred lines.

Three ways through the same layers:

* :meth:`Llama.forward`: a plain causal pass over ``[B, P]`` tokens (no cache): the oracle.
* :meth:`Llama.prefill`: prompts of different lengths into a :class:`~seedfast.generation.kv_cache.KVCache`,
  right-padded (SDPA, causal) or packed (flash-attn's varlen kernel); logits of each row's last token.
* :meth:`Llama.decode`: one token per row at that row's own position (``cache.lengths``), through
  SDPA over the cache or ``flash_attn_with_kvcache``. Static shapes, no host synchronisation, so a
  CUDA graph can capture it (:mod:`seedfast.generation.cuda_graphs`).

Weights load from Hugging Face LLaMA checkpoints by their key names (:meth:`Llama.from_hf`); inside,
q/k/v and gate/up are fused into one matrix each (one GEMM instead of three, or two), and the
rotary embedding uses HF's "rotate half" layout, so HF weights need no permutation.
"""
from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from seedfast.generation.kv_cache import KVCache

ATTENTION_BACKENDS = ("auto", "sdpa", "flash")
SEED_LLAMA_VOCAB = 32000 + 8192 + 2  # text + codes + <img>, </img> (spec §11.2)

RopeTable = tuple[torch.Tensor, torch.Tensor]
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RopeScaling:
    """Rotary frequency scaling as Hugging Face names it.

    Attributes
    ----------
    kind : {"linear", "llama3"}
        ``linear`` divides every frequency by ``factor``; ``llama3`` is Llama 3.1's piecewise rule.
    factor : float
    low_freq_factor, high_freq_factor : float
        ``llama3`` only.
    original_max_position : int
        ``llama3`` only: the context length the frequencies were trained for.
    """

    kind: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "llama3"):
            raise ValueError(f"RopeScaling: kind must be 'linear' or 'llama3', got {self.kind!r}")
        if not self.factor > 0:
            raise ValueError(f"RopeScaling: factor must be > 0, got {self.factor}")


@dataclass(frozen=True)
class LlamaConfig:
    """Shape of a LLaMA decoder.

    Attributes
    ----------
    vocab_size, dim, n_layers, n_heads : int
    n_kv_heads : int
        Key/value heads (grouped-query attention when below ``n_heads``); defaults to ``n_heads``.
    intermediate_size : int
        SwiGLU hidden width.
    head_dim : int
        Defaults to ``dim // n_heads``.
    norm_eps : float
        RMSNorm epsilon.
    rope_theta : float
    rope_scaling : RopeScaling or None
    max_seq_len : int
        The trained context (``max_position_embeddings``); longer caches still work (rotary
        tables are computed for whatever length a cache has).
    tie_word_embeddings : bool
        The output projection shares the embedding matrix.
    """

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    intermediate_size: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 2048
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"LlamaConfig: dim={self.dim} is not a multiple of n_heads={self.n_heads}; "
                                 "give head_dim")
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "intermediate_size", "head_dim",
                     "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"LlamaConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"LlamaConfig: n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: head_dim must be even for rotary embeddings, got {self.head_dim}")

    @classmethod
    def seed_llama_8b(cls) -> LlamaConfig:
        """SEED-LLaMA 8B: Vicuna-7B v1.1 with the visual vocabulary (40194 ids)."""
        return cls(vocab_size=SEED_LLAMA_VOCAB, dim=4096, n_layers=32, n_heads=32, intermediate_size=11008,
                   norm_eps=1e-6, max_seq_len=2048)

    @classmethod
    def seed_llama_14b(cls) -> LlamaConfig:
        """SEED-LLaMA 14B: LLaMA-2-13B-chat with the visual vocabulary (40194 ids)."""
        return cls(vocab_size=SEED_LLAMA_VOCAB, dim=5120, n_layers=40, n_heads=40, intermediate_size=13824,
                   norm_eps=1e-5, max_seq_len=4096)

    @classmethod
    def tiny(cls) -> LlamaConfig:
        """A test-sized model over :func:`seedfast.models.seed_llama.tiny_visual_vocab` 's 322 ids (GQA, 2 layers)."""
        return cls(vocab_size=322, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=160,
                   norm_eps=1e-5, max_seq_len=512)

    @classmethod
    def from_name(cls, name: str) -> LlamaConfig:
        """``"seed-llama-8b"``, ``"seed-llama-14b"`` or ``"tiny"``."""
        presets = {"seed-llama-8b": cls.seed_llama_8b, "seed-llama-14b": cls.seed_llama_14b, "tiny": cls.tiny}
        if name not in presets:
            raise ValueError(f"LlamaConfig.from_name: name must be one of {sorted(presets)}, got {name!r}")
        return presets[name]()

    @classmethod
    def from_hf_dict(cls, hf: Mapping) -> LlamaConfig:
        """From a Hugging Face ``config.json`` (transformers 4.x ``rope_scaling`` or 5.x ``rope_parameters``).

        Raises
        ------
        ValueError
            Features this decoder does not implement (biases, another activation or rotary type).
        """
        for key, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
            if hf.get(key, ok) != ok:
                raise ValueError(f"LlamaConfig.from_hf_dict: {key} must be {ok!r}, got {hf[key]!r}")
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        kind = rope.get("rope_type", rope.get("type", "default"))
        theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
        scaling = None
        if kind == "linear":
            scaling = RopeScaling("linear", float(rope["factor"]))
        elif kind == "llama3":
            scaling = RopeScaling("llama3", float(rope["factor"]), float(rope["low_freq_factor"]),
                                  float(rope["high_freq_factor"]), int(rope["original_max_position_embeddings"]))
        elif kind != "default":
            raise ValueError(f"LlamaConfig.from_hf_dict: rope type {kind!r} is not supported "
                             "(supported: default, linear, llama3)")
        return cls(
            vocab_size=int(hf["vocab_size"]), dim=int(hf["hidden_size"]), n_layers=int(hf["num_hidden_layers"]),
            n_heads=int(hf["num_attention_heads"]), n_kv_heads=hf.get("num_key_value_heads"),
            intermediate_size=int(hf["intermediate_size"]), head_dim=hf.get("head_dim"),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling,
            max_seq_len=int(hf.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )

    def to_hf_dict(self) -> dict:
        """Keyword arguments for ``transformers.LlamaConfig`` (5.x ``rope_parameters`` form)."""
        rope: dict = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            s = self.rope_scaling
            rope.update(rope_type=s.kind, factor=s.factor)
            if s.kind == "llama3":
                rope.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                            original_max_position_embeddings=s.original_max_position)
        return dict(vocab_size=self.vocab_size, hidden_size=self.dim, num_hidden_layers=self.n_layers,
                    num_attention_heads=self.n_heads, num_key_value_heads=self.n_kv_heads,
                    intermediate_size=self.intermediate_size, head_dim=self.head_dim, rms_norm_eps=self.norm_eps,
                    rope_parameters=rope, max_position_embeddings=self.max_seq_len,
                    tie_word_embeddings=self.tie_word_embeddings, hidden_act="silu")


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
    kernels (a decode step runs it once per layer for q and k together).
    """
    x32 = x.float()
    c, s = cos[..., None, :], sin[..., None, :]
    return torch.addcmul(x32 * c, x32.roll(x.shape[-1] // 2, -1), s).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Layers


class RMSNorm(nn.Module):
    """``weight * x / rms(x)`` through ``F.rms_norm`` (one fused kernel on CUDA).

    Computed in float32 and rounded once; HF rounds to the model dtype before the weight, so in
    bf16 the two may differ by one unit in the last place (fp32: identical up to rounding).
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Attention(nn.Module):
    """Fused q/k/v projection and rotary embedding; the attention itself is the caller's ``attend``."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.wqkv = nn.Linear(config.dim, (config.n_heads + 2 * config.n_kv_heads) * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Callable) -> torch.Tensor:
        lead = x.shape[:-1]
        hq, hkv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        qk, v = self.wqkv(x).split([hq + hkv, hkv], dim=-1)
        # q and k sit side by side in the fused projection: one rotation covers both.
        qk = apply_rope(qk.view(*lead, self.n_heads + self.n_kv_heads, self.head_dim), cos, sin)
        q, k = qk.split([self.n_heads, self.n_kv_heads], dim=-2)
        v = v.view(*lead, self.n_kv_heads, self.head_dim)
        return self.wo(attend(q, k, v).reshape(*lead, hq))


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(gate(x)) * up(x))`` with gate and up fused into ``w13``."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.w13 = nn.Linear(config.dim, 2 * config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Callable) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, attend)
        return x + self.feed_forward(self.ffn_norm(x))


# ---------------------------------------------------------------------------------------------
# Attention paths. Each ``attend(q, k, v)`` gets rotated q [..., H, D] and k, v [..., Hkv, D].


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
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.output.weight = self.tok_embeddings.weight

    @property
    def device(self) -> torch.device:
        return self.output.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.output.weight.dtype

    def _layers(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, functools.partial(attend, i))
        return self.norm(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Causal pass without a cache.

        Parameters
        ----------
        tokens : LongTensor ``[B, P]``

        Returns
        -------
        Tensor ``[B, P, vocab_size]`` in the model dtype
        """
        _check_tokens("Llama.forward", tokens, 2, self.config.vocab_size)
        cos, sin = rope_table(self.config, tokens.shape[1], tokens.device)
        h = self._layers(self.tok_embeddings(tokens), cos, sin, lambda i, q, k, v: _causal_sdpa(q, k, v))
        return self.output(h)

    def prefill(self, tokens: torch.Tensor, lengths: Sequence[int], cache: KVCache, rope: RopeTable, *,
                attention: str = "sdpa") -> torch.Tensor:
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
            h = self._layers(self.tok_embeddings(flat), rope[0][pos], rope[1][pos], attend)
            last = h[cu[1:].long() - 1]
        elif attention == "sdpa":
            attend = functools.partial(_prefill_padded, cache=cache)
            h = self._layers(self.tok_embeddings(tokens), rope[0][:p], rope[1][:p], attend)
            last = h[torch.arange(b, device=dev), lengths_t.long() - 1]
        else:
            raise ValueError(f"{op}: attention must be 'sdpa' or 'flash', got {attention!r}")
        cache.lengths[:b] = lengths_t
        return self.output(last)

    def decode(self, tokens: torch.Tensor, cache: KVCache, rope: RopeTable, *, seq_len: int | None = None,
               attention: str = "sdpa") -> torch.Tensor:
        """One token per row: write its key/value at ``cache.lengths[b]`` and attend to ``0 .. lengths[b]``.

        ``cache.lengths`` is read, not advanced (the caller decides which rows advance). No host
        synchronisation: capturable in a CUDA graph.

        Parameters
        ----------
        tokens : LongTensor ``[B]``
        cache : KVCache with at least B rows; rows ``0 .. B-1`` are used
        rope : RopeTable covering every position in ``cache.lengths[:B]``
        seq_len : int, optional
            Attend over the first ``seq_len`` cache positions only (SDPA; default: the whole cache).
            Every ``cache.lengths[b]`` must be below it.
        attention : {"sdpa", "flash"}
            ``"flash"`` uses ``flash_attn_with_kvcache``, which reads only each row's valid prefix.

        Returns
        -------
        Tensor ``[B, vocab_size]`` in the model dtype
        """
        b = tokens.shape[0]
        s = cache.max_seq_len if seq_len is None else seq_len
        positions = cache.lengths[:b].long()
        cos, sin = rope[0][positions], rope[1][positions]
        if attention == "flash":
            attend = functools.partial(_decode_flash, cache=cache, seqlens=cache.lengths[:b])
        elif attention == "sdpa":
            # Additive, in the model dtype, built once per step rather than converted in every layer.
            beyond = torch.arange(s, device=tokens.device)[None, :] > positions[:, None]
            mask = torch.zeros(beyond.shape, dtype=self.dtype, device=tokens.device).masked_fill_(beyond, -math.inf)
            mask = mask[:, None, None, :]
            attend = functools.partial(_decode_padded, cache=cache, positions=positions, seq_len=s, mask=mask)
        else:
            raise ValueError(f"Llama.decode: attention must be 'sdpa' or 'flash', got {attention!r}")
        return self.output(self._layers(self.tok_embeddings(tokens), cos, sin, attend))

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def from_hf(cls, path_or_state_dict: str | Path | Mapping[str, torch.Tensor],
                config: LlamaConfig | Mapping | None = None, *, dtype: torch.dtype | None = None,
                device: torch.device | str = "cpu") -> Llama:
        """Load Hugging Face LLaMA weights (``LlamaForCausalLM`` key names).

        Parameters
        ----------
        path_or_state_dict : path or mapping
            A directory with ``config.json`` and ``model.safetensors`` / ``model-*.safetensors``
            (with or without an index) or ``pytorch_model*.bin``, or a state dict.
        config : LlamaConfig or HF config dict, optional
            Required with a state dict; read from ``config.json`` otherwise.
        dtype : torch.dtype, optional
            Default: each tensor keeps the checkpoint's dtype.
        device : device
            Tensors already of this dtype and device are used as they are, not copied (a state
            dict's tensors are then shared with the caller; a ``.bin`` shard stays memory-mapped).

        Raises
        ------
        FileNotFoundError
            No config or weights in the directory.
        ValueError
            Missing or unexpected keys (listed), or a tensor of the wrong shape (named, expected vs got).
        """
        op = "Llama.from_hf"
        if isinstance(path_or_state_dict, Mapping):
            if config is None:
                raise ValueError(f"{op}: config is required when loading a state dict")
            tensors: Mapping[str, torch.Tensor] = path_or_state_dict
        else:
            root = Path(path_or_state_dict)
            if config is None:
                cfg_path = root / "config.json"
                if not cfg_path.is_file():
                    raise FileNotFoundError(f"{op}: {cfg_path} not found; pass config=")
                config = json.loads(cfg_path.read_text(encoding="utf-8"))
            tensors = _read_checkpoint(root)
        if not isinstance(config, LlamaConfig):
            config = LlamaConfig.from_hf_dict(config)
        state = hf_to_state_dict(tensors, config, dtype=dtype, device=device)
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(state, strict=True, assign=True)
        if config.tie_word_embeddings:
            model.output.weight = model.tok_embeddings.weight
        return model.eval()

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under Hugging Face ``LlamaForCausalLM`` key names, as views (no copies)."""
        c = self.config
        hq, hkv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        out = {"model.embed_tokens.weight": self.tok_embeddings.weight, "model.norm.weight": self.norm.weight}
        if not c.tie_word_embeddings:
            out["lm_head.weight"] = self.output.weight
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            q, k, v = layer.attention.wqkv.weight.split([hq, hkv, hkv])
            gate, up = layer.feed_forward.w13.weight.chunk(2)
            out.update({
                p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k, p + "self_attn.v_proj.weight": v,
                p + "self_attn.o_proj.weight": layer.attention.wo.weight,
                p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up,
                p + "mlp.down_proj.weight": layer.feed_forward.w2.weight,
                p + "input_layernorm.weight": layer.attention_norm.weight,
                p + "post_attention_layernorm.weight": layer.ffn_norm.weight,
            })
        return out


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


def _decode_padded(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, cache: KVCache,
                   positions: torch.Tensor, seq_len: int, mask: torch.Tensor) -> torch.Tensor:
    b = q.shape[0]
    k_cache, v_cache = cache.k[i, :b], cache.v[i, :b]
    rows = torch.arange(b, device=q.device)
    k_cache[rows, positions] = k
    v_cache[rows, positions] = v
    return _decode_sdpa(q, k_cache[:, :seq_len], v_cache[:, :seq_len], mask)


def _decode_flash(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, cache: KVCache,
                  seqlens: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_with_kvcache

    b = q.shape[0]
    # Appends k, v at seqlens[b] in place and attends to positions 0 .. seqlens[b].
    o = flash_attn_with_kvcache(q[:, None], cache.k[i, :b], cache.v[i, :b], k=k[:, None], v=v[:, None],
                                cache_seqlens=seqlens, causal=True)
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


# ---------------------------------------------------------------------------------------------
# Hugging Face checkpoints

_IGNORED_HF_KEYS = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


def expected_hf_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every ``LlamaForCausalLM`` key for ``config`` and its shape."""
    c = config
    shapes = {"model.embed_tokens.weight": (c.vocab_size, c.dim), "model.norm.weight": (c.dim,)}
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, c.dim)
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (c.n_heads * c.head_dim, c.dim),
            p + "self_attn.k_proj.weight": (c.n_kv_heads * c.head_dim, c.dim),
            p + "self_attn.v_proj.weight": (c.n_kv_heads * c.head_dim, c.dim),
            p + "self_attn.o_proj.weight": (c.dim, c.n_heads * c.head_dim),
            p + "mlp.gate_proj.weight": (c.intermediate_size, c.dim),
            p + "mlp.up_proj.weight": (c.intermediate_size, c.dim),
            p + "mlp.down_proj.weight": (c.dim, c.intermediate_size),
            p + "input_layernorm.weight": (c.dim,),
            p + "post_attention_layernorm.weight": (c.dim,),
        })
    return shapes


def _listing(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def hf_to_state_dict(tensors: Mapping[str, torch.Tensor], config: LlamaConfig, *,
                     dtype: torch.dtype | None = None, device: torch.device | str | None = None
                     ) -> dict[str, torch.Tensor]:
    """Hugging Face ``LlamaForCausalLM`` tensors → :class:`Llama` state dict (q/k/v and gate/up fused).

    Every key and shape is checked before any tensor is read; each tensor is moved to
    ``device`` / ``dtype`` as it is read, so a checkpoint never sits twice in host memory.

    Raises
    ------
    ValueError
        Missing or unexpected keys (listed), or a tensor of the wrong shape (named, expected vs got).
    """
    op = "Llama.from_hf"
    shapes = expected_hf_shapes(config)
    present = {k for k in tensors if not _IGNORED_HF_KEYS.fullmatch(k)}
    if config.tie_word_embeddings:
        present.discard("lm_head.weight")  # some tied checkpoints still store the copy
    missing, unexpected = set(shapes) - present, present - set(shapes)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
        raise ValueError(f"{op}: checkpoint does not match the config ({'; '.join(parts)})")
    shape_of = tensors.shape if isinstance(tensors, _CheckpointTensors) else (lambda k: tuple(tensors[k].shape))
    for key, shape in shapes.items():
        got = shape_of(key)
        if got != shape:
            raise ValueError(f"{op}: {key} must have shape {shape} for this config, got {got}")

    def get(key: str) -> torch.Tensor:
        return tensors[key].to(device=device, dtype=dtype)

    embed = get("model.embed_tokens.weight")
    state = {"tok_embeddings.weight": embed, "norm.weight": get("model.norm.weight"),
             "output.weight": embed if config.tie_word_embeddings else get("lm_head.weight")}
    for i in range(config.n_layers):
        p, o = f"model.layers.{i}.", f"layers.{i}."
        state[o + "attention.wqkv.weight"] = torch.cat([get(p + f"self_attn.{x}_proj.weight") for x in "qkv"])
        state[o + "attention.wo.weight"] = get(p + "self_attn.o_proj.weight")
        state[o + "feed_forward.w13.weight"] = torch.cat([get(p + f"mlp.{x}_proj.weight") for x in ("gate", "up")])
        state[o + "feed_forward.w2.weight"] = get(p + "mlp.down_proj.weight")
        state[o + "attention_norm.weight"] = get(p + "input_layernorm.weight")
        state[o + "ffn_norm.weight"] = get(p + "post_attention_layernorm.weight")
    return state


class _CheckpointTensors(Mapping):
    """Tensors spread over checkpoint shards, read one by one on access.

    Safetensors shards stay open (``safe_open``) so a shape or a tensor costs only its own bytes;
    ``.bin`` shards are memory-mapped.
    """

    def __init__(self, where: dict[str, Path], kind: str):
        self._where = where
        self._kind = kind
        self._shards: dict[Path, object] = {}

    def _shard(self, path: Path):
        if path not in self._shards:
            self._shards[path] = _open_shard(path, self._kind)
        return self._shards[path]

    def __getitem__(self, key: str) -> torch.Tensor:
        shard = self._shard(self._where[key])
        return shard.get_tensor(key) if self._kind == "safetensors" else shard[key]

    def shape(self, key: str) -> tuple[int, ...]:
        shard = self._shard(self._where[key])
        if self._kind == "safetensors":
            return tuple(shard.get_slice(key).get_shape())
        return tuple(shard[key].shape)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _open_shard(path: Path, kind: str):
    if kind == "safetensors":
        from safetensors import safe_open

        return safe_open(str(path), framework="pt")
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _read_checkpoint(root: Path) -> _CheckpointTensors:
    """Every tensor of a HF checkpoint directory, lazily, by key."""
    op = "Llama.from_hf"
    if not root.is_dir():
        raise FileNotFoundError(f"{op}: {root} is not a directory")
    for index_name, pattern, kind in (("model.safetensors.index.json", "model*.safetensors", "safetensors"),
                                      ("pytorch_model.bin.index.json", "pytorch_model*.bin", "bin")):
        index = root / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return _CheckpointTensors({k: root / f for k, f in weight_map.items()}, kind)
        files = sorted(root.glob(pattern))
        if files:
            keys = {}
            for f in files:
                shard = _open_shard(f, kind)
                keys.update({k: f for k in shard.keys()})
            return _CheckpointTensors(keys, kind)
    raise FileNotFoundError(f"{op}: no model*.safetensors or pytorch_model*.bin in {root}")


def parameter_count(config: LlamaConfig) -> int:
    """Number of parameters (the tied matrix counted once)."""
    return sum(math.prod(s) for s in expected_hf_shapes(config).values())


__all__ = [
    "ATTENTION_BACKENDS",
    "Llama",
    "LlamaConfig",
    "RopeScaling",
    "apply_rope",
    "expected_hf_shapes",
    "flash_attn_available",
    "hf_to_state_dict",
    "parameter_count",
    "resolve_attention",
    "rope_inv_freq",
    "rope_table",
]
