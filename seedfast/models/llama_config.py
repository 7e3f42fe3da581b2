"""The shape of a LLaMA decoder (:class:`LlamaConfig`), its presets and its Hugging Face
``config.json`` form; the decoder itself is :mod:`seedfast.models.llama`."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

SEED_LLAMA_VOCAB = 32000 + 8192 + 2  # text + codes + <img>, </img> (spec §11.2)


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


__all__ = ["LlamaConfig", "RopeScaling", "SEED_LLAMA_VOCAB"]
