"""The shape of a LLaMA decoder (:class:`LlamaConfig`), its presets and its Hugging Face
``config.json`` form; the decoder itself is :mod:`seedfast.models.llama`."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from seedfast._checks import is_int

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
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            if not _positive_number(getattr(self, name)):
                raise ValueError(f"RopeScaling: {name} must be a finite number > 0, got {getattr(self, name)!r}")
        # llama3 interpolates between the two wavelength bounds: equal factors divide by zero.
        if self.kind == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ValueError(f"RopeScaling: high_freq_factor ({self.high_freq_factor}) must be greater than "
                             f"low_freq_factor ({self.low_freq_factor})")
        if not (is_int(self.original_max_position) and self.original_max_position >= 1):
            raise ValueError(f"RopeScaling: original_max_position must be an int >= 1, "
                             f"got {self.original_max_position!r}")


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
        # A non-positive epsilon makes RMSNorm divide by zero (or take the root of a negative
        # number): NaN logits from the first token. A non-positive theta has no rotary frequencies.
        for name in ("norm_eps", "rope_theta"):
            if not _positive_number(getattr(self, name)):
                raise ValueError(f"LlamaConfig: {name} must be a finite number > 0, got {getattr(self, name)!r}")
        if not isinstance(self.tie_word_embeddings, bool):
            raise ValueError(f"LlamaConfig: tie_word_embeddings must be a bool, got {self.tie_word_embeddings!r}")
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
            A required field missing, a field of the wrong type or out of range (named by its
            ``config.json`` name), or features this decoder does not implement (biases, another
            activation or rotary type).
        """
        op = "LlamaConfig.from_hf_dict"
        if not isinstance(hf, Mapping):
            raise ValueError(f"{op}: a config must be a JSON object (dict), got {type(hf).__name__}")
        for key, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
            if hf.get(key, ok) != ok:
                raise ValueError(f"{op}: {key} must be {ok!r}, got {hf[key]!r}")
        rope_field = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
        rope = hf.get(rope_field) or {}
        if not isinstance(rope, Mapping):
            raise ValueError(f"{op}: {rope_field} must be an object, got {rope!r}")
        kind = rope.get("rope_type", rope.get("type", "default"))
        theta = _hf_number(rope if "rope_theta" in rope else hf, "rope_theta", 10000.0)
        scaling = None
        if kind in ("linear", "llama3"):
            parts = {"factor": _hf_number(rope, "factor")}
            if kind == "llama3":
                parts.update(low_freq_factor=_hf_number(rope, "low_freq_factor"),
                             high_freq_factor=_hf_number(rope, "high_freq_factor"),
                             original_max_position=_hf_int(rope, "original_max_position_embeddings"))
            try:
                scaling = RopeScaling(kind, **parts)
            except ValueError as err:
                raise ValueError(f"{op}: {rope_field}: {err}") from None
        elif kind != "default":
            raise ValueError(f"{op}: rope type {kind!r} is not supported (supported: default, linear, llama3)")
        tie = hf.get("tie_word_embeddings", False)
        if not isinstance(tie, bool):
            raise ValueError(f"{op}: tie_word_embeddings must be true or false, got {tie!r}")
        eps = _hf_number(hf, "rms_norm_eps", 1e-6)
        for name, value in (("rms_norm_eps", eps), ("rope_theta", theta)):
            if not _positive_number(value):
                raise ValueError(f"{op}: {name} must be a finite number > 0, got {value!r}")
        fields = {}
        for name, key, default in _HF_INT_FIELDS:
            fields[name] = _hf_int(hf, key, default)
            if fields[name] is not None and fields[name] < 1:
                raise ValueError(f"{op}: {key} must be >= 1, got {fields[name]}")
        try:
            return cls(**fields, norm_eps=eps, rope_theta=theta, rope_scaling=scaling, tie_word_embeddings=tie)
        except ValueError as err:
            raise ValueError(f"{op}: {err}") from None

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


_REQUIRED = object()
# (LlamaConfig field, config.json key, default when absent; _REQUIRED: none).
_HF_INT_FIELDS = (
    ("vocab_size", "vocab_size", _REQUIRED), ("dim", "hidden_size", _REQUIRED),
    ("n_layers", "num_hidden_layers", _REQUIRED), ("n_heads", "num_attention_heads", _REQUIRED),
    ("intermediate_size", "intermediate_size", _REQUIRED), ("n_kv_heads", "num_key_value_heads", None),
    ("head_dim", "head_dim", None), ("max_seq_len", "max_position_embeddings", 2048),
)


def _positive_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _hf_int(hf: Mapping, key: str, default: object = _REQUIRED) -> int | None:
    """``hf[key]`` as an int (an integral float such as ``4096.0`` too); ``default`` when absent or null."""
    value = hf.get(key)
    if value is None:
        if default is _REQUIRED:
            raise ValueError(f"LlamaConfig.from_hf_dict: {key} is missing (a required field)")
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not is_int(value):
        raise ValueError(f"LlamaConfig.from_hf_dict: {key} must be an int, got {value!r}")
    return value


def _hf_number(hf: Mapping, key: str, default: object = _REQUIRED) -> float:
    """``hf[key]`` as a float; ``default`` when absent or null."""
    value = hf.get(key)
    if value is None:
        if default is _REQUIRED:
            raise ValueError(f"LlamaConfig.from_hf_dict: {key} is missing (a required field)")
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"LlamaConfig.from_hf_dict: {key} must be a number, got {value!r}")
    return float(value)


__all__ = ["LlamaConfig", "RopeScaling", "SEED_LLAMA_VOCAB"]
