"""Checkpoints of the SEED tokenizer: the official release (spec §9) and seedfast's own format.

Official: ``seed_quantizer.pt`` is a plain state dict with the keys of spec §9; the EVA ViT-g
weights come from LAVIS's ``eva_vit_g.pth`` (keys without prefix, 40 blocks of which the 40th
is unused) or from the quantizer file itself under ``visual_encoder.``. Loading is by name and
strict in both directions, except for what the spec says may be there without being used:

* keys of training-only modules (text path, ``Qformer.cls``, ``vision_proj``, ``text_proj``,
  ``temp``, ``Reverse_Qformer``, ``reverse_tokens``, and the reconstruction branch
  ``pos_embed``/``blocks``) are ignored when the model does not build them, and left at
  their initial values (reported) when it builds them but the file lacks them;
* ViT blocks beyond the model's depth (``blocks.39.*``) are ignored;
* the ``Qformer.bert.embeddings.position_ids`` buffer is checked for its shape and dropped
  (positions are implied by the index; the model keeps no such buffer).

Every other difference is an error naming the keys: a key the model needs that is missing
(with its expected shape), an unknown key, a shape mismatch.

Own format: a directory with ``model.safetensors`` (the model's ``state_dict()``, official key
names) and ``config.json`` (``{"format", "version", "config", "files"}``), written and verified
by :mod:`seedfast.checkpoint_io` with ``config.json`` as the manifest: a damaged weights file is
refused, naming it. Version 1 directories (no checksums) still load, with a warning.
"""
from __future__ import annotations

import logging
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# CheckpointError stays importable from here (its home before seedfast.checkpoint_io).
from seedfast.checkpoint_io import CheckpointError, load_json, load_safetensors, read_folder, write_folder
from seedfast.models.seed_tokenizer import SeedTokenizer
from seedfast.models.tokenizer_config import SeedTokenizerConfig

logger = logging.getLogger(__name__)

FORMAT = "seedfast-seed-tokenizer"
FORMAT_VERSION = 2
LEGACY_VERSION = 1
"""Directories without checksums, written before seedfast.checkpoint_io; read, not written."""
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VIT_PREFIX = "visual_encoder."
POSITION_IDS_KEY = "Qformer.bert.embeddings.position_ids"

TRAINING_ONLY_KEYS = tuple(re.compile(p) for p in (
    r"Qformer\.bert\.embeddings\.(word|position)_embeddings\.weight",
    r"Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.(dense|LayerNorm)\.(weight|bias)",
    r"Qformer\.cls\..+",
    r"(vision_proj|text_proj)\.(weight|bias)",
    r"temp",
    r"Reverse_Qformer\..+",
    r"reverse_tokens",
    r"pos_embed",
    r"blocks\.\d+\..+",
))
"""Keys (spec §9) of modules that only training uses: optional in a file, ignored when not built."""

_VIT_BLOCK = re.compile(r"blocks\.(\d+)\.")
_MAX_LISTED = 30


TARGET = "the SEED tokenizer"


@dataclass(frozen=True)
class LoadReport:
    """What a load did with each key.

    Attributes
    ----------
    loaded : tuple of str
        Model keys taken from the file(s).
    ignored : tuple of str
        File keys deliberately not used (training-only modules not built, ViT blocks beyond
        the depth, ``position_ids``).
    initialised : tuple of str
        Training-only model keys the file(s) lacked, left at their initial values.
    """

    loaded: tuple[str, ...]
    ignored: tuple[str, ...]
    initialised: tuple[str, ...]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True, map_location="cpu")`` of a plain state dict.

    Zip-format files are memory-mapped, so unused tensors (e.g. ``blocks.39``) are never read.

    Raises
    ------
    FileNotFoundError
        No such file.
    CheckpointError
        The file is empty, truncated, not a PyTorch file, or holds Python objects other than
        tensors (the file named; never unpickled beyond what ``weights_only`` allows).
    TypeError
        The file does not hold a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # torch warns about pickle protocols while failing on a foreign file: the error below
    # says it in one line, and a good file's warnings are passed on.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            data = torch.load(path, weights_only=True, map_location="cpu", mmap=zipfile.is_zipfile(path))
        except Exception as err:  # noqa: BLE001 - each kind of damage raises another type
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {_load_failure(path, err)}") from None
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not isinstance(data, Mapping):
        raise TypeError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(data).__name__}")
    bad = [k for k, v in data.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise TypeError(f"{path}: expected a state dict of tensors; entries that are not: {bad[:_MAX_LISTED]}")
    return dict(data)


def _load_failure(path: Path, err: Exception) -> str:
    """Why ``torch.load`` failed, in words that never advise ``weights_only=False``: torch's own
    message for a refused pickle does, and for a file from the internet that runs its code."""
    if path.stat().st_size == 0:
        return "the file is empty"
    if isinstance(err, pickle.UnpicklingError):
        return ("not a file written by torch.save, or it holds Python objects besides tensors "
                "(such files are not unpickled)")
    lines = str(err).strip().splitlines()
    detail = lines[0] if lines and "weights_only" not in str(err) else ""
    return f"{type(err).__name__}{': ' + detail if detail else ''} (truncated, or not written by torch.save?)"


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _is_training_only(key: str) -> bool:
    return any(p.fullmatch(key) for p in TRAINING_ONLY_KEYS)


def _merge_sources(
    quantizer_sd: Mapping[str, torch.Tensor], vit_sd: Mapping[str, torch.Tensor] | None, vit_depth: int
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """One key space with the ViT under ``visual_encoder.``; ViT blocks past the depth set aside."""
    merged: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    sources = [("", quantizer_sd)]
    if vit_sd is not None:
        clash = [k for k in quantizer_sd if k.startswith(VIT_PREFIX)]
        if clash:
            raise ValueError(f"ViT weights given twice: the quantizer state dict holds {len(clash)} "
                             f"'{VIT_PREFIX}*' key(s) (e.g. {clash[0]}) and a separate ViT state dict was given")
        sources.append((VIT_PREFIX, vit_sd))
    for prefix, sd in sources:
        for key, tensor in sd.items():
            full = prefix + key
            if full.startswith(VIT_PREFIX):
                m = _VIT_BLOCK.match(full[len(VIT_PREFIX):])
                if m and int(m.group(1)) >= vit_depth:
                    ignored.append(full)
                    continue
            merged[full] = tensor
    return merged, ignored


def load_official_state_dict(
    model: SeedTokenizer,
    quantizer_sd: Mapping[str, torch.Tensor],
    vit_sd: Mapping[str, torch.Tensor] | None = None,
    *,
    source: str = "official checkpoint",
) -> LoadReport:
    """Assign official tensors to ``model`` by name (``load_state_dict(assign=True)``).

    The model may live on the meta device: it then takes the tensors where they are (meta
    tensors give a check of the key set and shapes without memory). Each tensor is cast to the
    dtype of the parameter it replaces (and moved to its device, for a model with storage);
    nothing is assigned unless every check passes.

    Parameters
    ----------
    model : SeedTokenizer
    quantizer_sd : mapping of str to Tensor
        ``seed_quantizer.pt``'s state dict (may also hold the ViT under ``visual_encoder.``).
    vit_sd : mapping of str to Tensor, optional
        ``eva_vit_g.pth``'s state dict (no prefix).
    source : str
        How error messages name the checkpoint.

    Returns
    -------
    LoadReport

    Raises
    ------
    CheckpointError
        Missing required keys, unknown keys or shape mismatches (all listed by name).
    ValueError
        The ViT weights are in both state dicts.
    """
    merged, ignored = _merge_sources(quantizer_sd, vit_sd, model.config.vit_depth)
    expected = model.state_dict(keep_vars=True)
    missing, unexpected, mismatched = {}, {}, {}
    loaded: dict[str, torch.Tensor] = {}
    for key, tensor in merged.items():
        if key in expected:
            want = _shape(expected[key])
            if _shape(tensor) != want:
                mismatched[key] = (want, _shape(tensor))
            else:
                target = expected[key]
                # A meta model takes the tensor where it is; a real one keeps its device.
                device = tensor.device if target.is_meta else target.device
                loaded[key] = tensor.to(device=device, dtype=target.dtype)
        elif key == POSITION_IDS_KEY:
            want = (1, model.config.max_text_positions)
            if _shape(tensor) != want:
                mismatched[key] = (want, _shape(tensor))
            ignored.append(key)
        elif _is_training_only(key):
            ignored.append(key)
        else:
            unexpected[key] = _shape(tensor)
    initialised = []
    for key, param in expected.items():
        if key in merged:
            continue
        if _is_training_only(key):
            initialised.append(key)
        else:
            missing[key] = _shape(param)
    if missing or unexpected or mismatched:
        raise CheckpointError.for_keys(source, TARGET, missing, unexpected, mismatched)
    model.load_state_dict(loaded, strict=False, assign=True)
    return LoadReport(tuple(loaded), tuple(ignored), tuple(initialised))


def _materialise(model: SeedTokenizer, names: tuple[str, ...], device: torch.device) -> None:
    """Give the named (still meta) parameters real storage on ``device`` and initialise them."""
    for name in names:
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        old = getattr(owner, leaf)
        owner.register_parameter(
            leaf, nn.Parameter(torch.empty(old.shape, dtype=old.dtype, device=device), requires_grad=old.requires_grad)
        )
    model.reset_parameters(names)


def load_official(
    quantizer_path: str | Path,
    vit_path: str | Path | None = None,
    *,
    config: SeedTokenizerConfig | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[SeedTokenizer, LoadReport]:
    """Build a :class:`SeedTokenizer` from the released files.

    The model is built on the meta device and receives the file tensors directly (no second
    copy of the weights, no random initialisation of the ViT); only training-only parameters
    that the files lack are allocated and initialised.

    Parameters
    ----------
    quantizer_path : path
        ``seed_quantizer.pt`` (plain state dict, spec §9).
    vit_path : path, optional
        ``eva_vit_g.pth``. Omit it only if the quantizer file holds ``visual_encoder.*``.
    config : SeedTokenizerConfig, optional
        Default ``SeedTokenizerConfig.official()``; pass ``official(training_heads=True)`` to
        fine-tune.
    dtype : torch.dtype
        Floating dtype of every parameter (the files' dtypes are converted).
    device : str or torch.device

    Returns
    -------
    (SeedTokenizer in eval mode, LoadReport)

    Raises
    ------
    FileNotFoundError, TypeError
        As :func:`read_state_dict`.
    CheckpointError
        The files do not fit the configuration (every offending key named).
    ValueError
        The ViT weights are in both files, or in neither.
    """
    config = config if config is not None else SeedTokenizerConfig.official()
    quantizer_sd = read_state_dict(quantizer_path)
    vit_sd = read_state_dict(vit_path) if vit_path is not None else None
    if vit_sd is None and not any(k.startswith(VIT_PREFIX) for k in quantizer_sd):
        raise ValueError(f"{quantizer_path} holds no '{VIT_PREFIX}*' keys: pass vit_path (LAVIS eva_vit_g.pth)")
    with torch.device("meta"):
        model = SeedTokenizer(config).to(dtype)
    source = str(quantizer_path) if vit_path is None else f"{quantizer_path} + {vit_path}"
    report = load_official_state_dict(model, quantizer_sd, vit_sd, source=source)
    device = torch.device(device)
    _materialise(model, report.initialised, device)
    if report.ignored:
        logger.info("%s: ignored %d key(s) the model does not use", source, len(report.ignored))
    if report.initialised:
        logger.warning("%s: %d training-only key(s) absent, left at initial values: %s",
                       source, len(report.initialised), ", ".join(report.initialised[:_MAX_LISTED]))
    return model.to(device).eval(), report


def save_tokenizer(model: SeedTokenizer, directory: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` as the folder ``directory``, atomically.

    An existing folder is replaced only once the new one is complete (see
    :func:`seedfast.checkpoint_io.write_folder`); ``config.json`` records each file's size and
    SHA-256.

    Returns
    -------
    Path
        ``directory``.
    """
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "config": model.config.to_dict()}
    return write_folder(directory, {WEIGHTS_FILE: model.state_dict(), CONFIG_FILE: meta}, manifest=CONFIG_FILE,
                        metadata={"format": FORMAT})


def read_tokenizer_folder(
    directory: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify a directory written by :func:`save_tokenizer`, without building a model.

    Returns
    -------
    meta : dict
        ``config.json`` (``"config"`` holds the :class:`SeedTokenizerConfig` fields).
    tensors : dict of str to Tensor
        ``model.safetensors`` on ``device``.

    Raises
    ------
    FileNotFoundError
        ``config.json`` or ``model.safetensors`` is absent.
    ValueError
        Not a seedfast tokenizer directory, or an unsupported version.
    CheckpointError
        A damaged file: another size or checksum than recorded, unreadable JSON or
        safetensors (the file named).
    """
    root = Path(directory)
    config_path, weights_path = root / CONFIG_FILE, root / WEIGHTS_FILE
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{root}: no {p.name} (expected a directory written by SeedTokenizer.save)")
    meta = load_json(config_path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else meta
        raise ValueError(f"{config_path}: format {got!r}, expected {FORMAT!r}")
    if meta.get("version") == LEGACY_VERSION:
        logger.warning("%s: written without checksums by an older seedfast; save it again to protect it", root)
        return meta, load_safetensors(weights_path, device=device)
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{config_path}: version {meta.get('version')!r}, this seedfast reads {FORMAT_VERSION}")
    files = read_folder(root, manifest=CONFIG_FILE, device=device)
    return files[CONFIG_FILE], files[WEIGHTS_FILE]


def load_tokenizer(
    directory: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> SeedTokenizer:
    """Read a directory written by :func:`save_tokenizer`.

    Parameters
    ----------
    directory : path
    device : str or torch.device
    dtype : torch.dtype, optional
        Cast every floating parameter; default: as saved.

    Returns
    -------
    SeedTokenizer in eval mode.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`read_tokenizer_folder`.
    CheckpointError
        A damaged file (named), or weights that do not match the config (keys named).
    """
    root = Path(directory)
    device = torch.device(device)
    meta, tensors = read_tokenizer_folder(root, device=device)
    config = SeedTokenizerConfig.from_dict(meta["config"])
    with torch.device("meta"):
        model = SeedTokenizer(config)
    expected = model.state_dict()
    missing = {k: _shape(v) for k, v in expected.items() if k not in tensors}
    unexpected = {k: _shape(v) for k, v in tensors.items() if k not in expected}
    mismatched = {k: (_shape(expected[k]), _shape(v)) for k, v in tensors.items()
                  if k in expected and _shape(v) != _shape(expected[k])}
    if missing or unexpected or mismatched:
        raise CheckpointError.for_keys(str(root / WEIGHTS_FILE), TARGET, missing, unexpected, mismatched)
    model.load_state_dict(tensors, strict=True, assign=True)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def convert_official(
    quantizer_path: str | Path,
    vit_path: str | Path | None,
    out_dir: str | Path,
    *,
    config: SeedTokenizerConfig | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Convert the released files into seedfast's format (``seedfast convert``).

    Parameters
    ----------
    quantizer_path, vit_path : path
        As :func:`load_official` (``vit_path`` may be None if the quantizer file holds the ViT).
    out_dir : path
        Written by :func:`save_tokenizer`.
    config : SeedTokenizerConfig, optional
        Default ``official()``.
    dtype : torch.dtype
        Stored dtype (float32 keeps the release bit-exact; bfloat16 halves the size).

    Returns
    -------
    Path
        ``out_dir``.
    """
    model, _ = load_official(quantizer_path, vit_path, config=config, dtype=dtype)
    return save_tokenizer(model, out_dir)
