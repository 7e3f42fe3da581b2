"""Hugging Face LLaMA checkpoints in and out of :class:`~seedfast.models.llama.Llama`.

* In: :func:`load_hf` (what :meth:`Llama.from_hf` runs) reads ``config.json`` and the weights
  (safetensors or ``.bin`` shards, with or without an index, one tensor at a time), checks every
  key and shape against the config (:func:`expected_hf_shapes`) and fuses q/k/v and gate/up
  (:func:`hf_to_state_dict`).
* Out: :func:`to_hf_state_dict` splits them back as views, and :func:`save_hf` writes the one
  Hugging Face folder format seedfast produces (``config.json`` + ``model.safetensors``), which
  :func:`load_hf` and ``transformers`` both load.

The rotary embedding uses HF's "rotate half" layout, so no weight is permuted either way.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from seedfast.checkpoint_io import MANIFEST_FILE, CheckpointError, load_json, verify_folder, write_folder
from seedfast.models.llama import Llama
from seedfast.models.llama_config import LlamaConfig

HF_CONFIG_FILE = "config.json"
HF_WEIGHTS_FILE = "model.safetensors"

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

    With ``config.tie_word_embeddings`` an ``lm_head.weight`` in the checkpoint is accepted
    only when it equals ``model.embed_tokens.weight`` (some tied checkpoints store the copy);
    a distinct one is an error rather than silently dropped, since the model would then not
    compute what the checkpoint was trained to.

    Raises
    ------
    ValueError
        Missing or unexpected keys (listed), a tensor of the wrong shape (named, expected vs
        got), a non-floating tensor (named, with its file), or a distinct ``lm_head.weight``
        in a checkpoint whose config ties it to the embeddings.
    """
    op = "Llama.from_hf"
    shapes = expected_hf_shapes(config)
    present = {k for k in tensors if not _IGNORED_HF_KEYS.fullmatch(k)}
    stored_head = config.tie_word_embeddings and "lm_head.weight" in present
    if stored_head:
        present.discard("lm_head.weight")
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
        raw = tensors[key]
        # An integer weight would fail later as "only floating tensors can require gradients".
        if not raw.is_floating_point():
            raise ValueError(f"{op}: {key}{_source(tensors, key)} must be a floating-point tensor, "
                             f"got {str(raw.dtype).removeprefix('torch.')}")
        return raw.to(device=device, dtype=dtype)

    embed = get("model.embed_tokens.weight")
    if stored_head:
        head = tensors["lm_head.weight"]
        if tuple(head.shape) != tuple(embed.shape) or not torch.equal(head.to(embed), embed):
            raise ValueError(
                f"{op}: the config sets tie_word_embeddings=true, but the checkpoint's lm_head.weight"
                f"{_source(tensors, 'lm_head.weight')} differs from model.embed_tokens.weight; set "
                "tie_word_embeddings to false in config.json to load the separate output head"
            )
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


def _source(tensors: Mapping[str, torch.Tensor], key: str) -> str:
    """`` (in <file>)`` for a tensor read from a checkpoint file, empty for a state dict."""
    return f" (in {tensors.file_of(key)})" if isinstance(tensors, _CheckpointTensors) else ""


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

    def file_of(self, key: str) -> Path:
        """The shard that holds ``key``."""
        return self._where[key]

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
    """An open shard; a missing, truncated or foreign file is a :class:`CheckpointError` naming it
    (a ``.bin`` holding something else than a dict of tensors: ``TypeError``, named)."""
    if not path.is_file():
        raise CheckpointError(f"Llama.from_hf: {path}: weights file missing")
    if kind == "safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            return safe_open(str(path), framework="pt")
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"Llama.from_hf: {path}: unreadable safetensors file ({err})") from None
    # The tokenizer's reader: weights_only, memory-mapped, one error naming a damaged file.
    from seedfast.models.checkpoints import read_state_dict

    return read_state_dict(path)


def read_hf_checkpoint(root: str | Path) -> Mapping[str, torch.Tensor]:
    """Every tensor of a Hugging Face checkpoint directory, read lazily by key.

    Safetensors (``model.safetensors``, ``model-*.safetensors``, with or without an index) are
    preferred over ``pytorch_model*.bin``.

    Raises
    ------
    FileNotFoundError
        ``root`` is not a directory or holds no weights.
    CheckpointError
        A malformed index (named, with what it lacks), or a shard that is missing, truncated
        or not a weights file (named).
    TypeError
        A ``.bin`` shard that holds something else than a dict of tensors (named).
    """
    op = "Llama.from_hf"
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{op}: {root} is not a directory")
    for index_name, pattern, kind in (("model.safetensors.index.json", "model*.safetensors", "safetensors"),
                                      ("pytorch_model.bin.index.json", "pytorch_model*.bin", "bin")):
        index = root / index_name
        if index.is_file():
            return _CheckpointTensors(_read_index(index), kind)
        files = sorted(root.glob(pattern))
        if files:
            keys = {}
            for f in files:
                shard = _open_shard(f, kind)
                keys.update({k: f for k in shard.keys()})
            return _CheckpointTensors(keys, kind)
    raise FileNotFoundError(f"{op}: no model*.safetensors or pytorch_model*.bin in {root}")


def _read_index(index: Path) -> dict[str, Path]:
    """Tensor name → shard path from a Hugging Face ``*.index.json``."""
    content = load_json(index)
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(f, str) for k, f in weight_map.items()):
        raise CheckpointError(f"Llama.from_hf: {index}: expected a \"weight_map\" object mapping tensor names "
                              "to shard file names")
    return {k: index.parent / f for k, f in weight_map.items()}


def to_hf_state_dict(model: Llama) -> dict[str, torch.Tensor]:
    """``model``'s weights under Hugging Face ``LlamaForCausalLM`` key names, as views (no copies).

    The fused ``wqkv`` and ``w13`` matrices are split by rows, so each view is contiguous.
    """
    c = model.config
    hq, hkv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    out = {"model.embed_tokens.weight": model.tok_embeddings.weight, "model.norm.weight": model.norm.weight}
    if not c.tie_word_embeddings:
        out["lm_head.weight"] = model.output.weight
    for i, layer in enumerate(model.layers):
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


def _assemble(state: Mapping[str, torch.Tensor], config: LlamaConfig) -> Llama:
    """A :class:`Llama` holding ``state``'s tensors themselves (built on meta, then assigned)."""
    with torch.device("meta"):
        model = Llama(config)
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return model


def load_hf(path_or_state_dict: str | Path | Mapping[str, torch.Tensor],
            config: LlamaConfig | Mapping | None = None, *, dtype: torch.dtype | None = None,
            device: torch.device | str = "cpu") -> Llama:
    """Load Hugging Face LLaMA weights (``LlamaForCausalLM`` key names) into a :class:`Llama` in eval mode.

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

    Returns
    -------
    Llama

    Raises
    ------
    FileNotFoundError
        No config or weights in the directory.
    CheckpointError
        A folder written by :func:`save_hf` whose files are damaged, a ``config.json`` that is
        not JSON, a malformed index, or a truncated or foreign weights file (each named).
    ValueError
        A config field missing, of the wrong type or out of range (named, with the file);
        missing or unexpected keys (listed); a tensor of the wrong shape or not floating
        (named, expected vs got); a distinct ``lm_head.weight`` with ``tie_word_embeddings``.
    """
    op = "Llama.from_hf"
    if isinstance(path_or_state_dict, Mapping):
        if config is None:
            raise ValueError(f"{op}: config is required when loading a state dict")
        tensors: Mapping[str, torch.Tensor] = path_or_state_dict
    else:
        root = Path(path_or_state_dict)
        if (root / MANIFEST_FILE).is_file():
            # Written by save_hf: check every file before reading it. Folders from elsewhere
            # (the released weights) carry no manifest and are read as they are.
            verify_folder(root)
        if config is None:
            cfg_path = root / HF_CONFIG_FILE
            if not cfg_path.is_file():
                raise FileNotFoundError(f"{op}: {cfg_path} not found; pass config=")
            try:
                config = LlamaConfig.from_hf_dict(load_json(cfg_path))
            except CheckpointError as err:
                raise CheckpointError(f"{op}: {err}") from None
            except ValueError as err:
                raise ValueError(f"{op}: {cfg_path}: {err}") from None
        tensors = read_hf_checkpoint(root)
    if not isinstance(config, LlamaConfig):
        config = LlamaConfig.from_hf_dict(config)
    return _assemble(hf_to_state_dict(tensors, config, dtype=dtype, device=device), config).eval()


def save_hf(model_or_state: Llama | Mapping[str, torch.Tensor], config: LlamaConfig | None,
            folder: str | Path) -> Path:
    """Write a Hugging Face LLaMA folder: ``config.json``, ``model.safetensors`` and a checksum
    ``manifest.json``, atomically (:func:`seedfast.checkpoint_io.write_folder`).

    :func:`load_hf` (``Llama.from_hf``, which verifies the checksums) and
    ``transformers.LlamaForCausalLM.from_pretrained`` load it back with the same weights, bit
    for bit.

    Parameters
    ----------
    model_or_state : Llama, or a Llama state dict
        A state dict has :class:`Llama`'s own key names (``layers.0.attention.wqkv.weight``…),
        e.g. a training run's weights with LoRA merged.
    config : LlamaConfig or None
        Required with a state dict; with a model, None or the model's own config.
    folder : path
        Created when missing (parents too); an existing folder is replaced as a whole.

    Returns
    -------
    Path
        ``folder``.

    Raises
    ------
    ValueError
        A state dict without a config, a config that differs from the model's, or a state dict
        that does not fit its config (missing, unexpected or mis-shaped keys, named).
    """
    op = "save_hf"
    if isinstance(model_or_state, Llama):
        if config is not None and config != model_or_state.config:
            raise ValueError(f"{op}: config {config} differs from the model's {model_or_state.config}")
        model = model_or_state
    else:
        if config is None:
            raise ValueError(f"{op}: config is required when saving a state dict")
        try:
            model = _assemble(model_or_state, config)
        except RuntimeError as err:  # load_state_dict's report names every bad key
            report = " ".join(str(err).split())
            raise ValueError(f"{op}: the state dict does not fit the config: {report}") from None
    tensors = {k: v.detach().contiguous() for k, v in to_hf_state_dict(model).items()}
    hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
          "torch_dtype": str(model.dtype).removeprefix("torch."), **model.config.to_hf_dict()}
    return write_folder(folder, {HF_WEIGHTS_FILE: tensors, HF_CONFIG_FILE: hf}, metadata={"format": "pt"})


__all__ = [
    "expected_hf_shapes",
    "hf_to_state_dict",
    "load_hf",
    "read_hf_checkpoint",
    "save_hf",
    "to_hf_state_dict",
]
