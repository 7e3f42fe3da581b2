"""Checkpoint folders that survive being killed at any instant and refuse to load when damaged.

A checkpoint folder holds a few files and a *manifest*: a JSON object whose ``"files"`` entry
records each other file's byte size and SHA-256. The manifest is one of the folder's own JSON
files (``state.json`` of a training checkpoint, ``config.json`` of a tokenizer) or, by default,
``manifest.json``. :func:`write_folder` writes the whole folder into a temporary sibling,
fsyncs every file and the folder, renames it into place and fsyncs the parent, so a folder
either is complete or is not there; :func:`read_folder` verifies every recorded file before
returning its contents. Every damage is one :class:`CheckpointError` whose message starts with
the file's path.

What a file holds follows its name: ``*.safetensors`` a mapping of names to tensors,
``*.json`` a JSON-ready value, anything else bytes (bytes are also accepted, and written as
they are, for any name). Files in the folder that the manifest does
not list are neither read nor checked.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

MANIFEST_FILE = "manifest.json"
"""The manifest's name when none of the folder's own JSON files serves as one."""
FILES_KEY = "files"
"""The manifest's entry listing every other file: ``{name: {"bytes": int, "sha256": str}}``."""
SAFETENSORS_SUFFIX, JSON_SUFFIX = ".safetensors", ".json"
_TMP_PREFIX, _OLD_PREFIX = ".tmp-", ".old-"
_CHUNK = 1 << 24
_MAX_LISTED = 30

FileContent = Any
"""What :func:`write_folder` takes per file: bytes (written as they are, whatever the name), a
mapping of names to tensors for ``*.safetensors``, or a JSON-ready value for ``*.json``."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file or the keys and what is wrong.

    Attributes
    ----------
    missing : dict[str, tuple[int, ...]]
        Keys the model needs that the checkpoint lacks, with their expected shapes.
    unexpected : dict[str, tuple[int, ...]]
        Keys the model does not know, with their shapes in the checkpoint.
    mismatched : dict[str, tuple[tuple[int, ...], tuple[int, ...]]]
        Keys whose shape differs: ``(expected, got)``.

    The three are empty for damaged files (see :meth:`for_keys` for key mismatches).
    """

    def __init__(self, message: str, *, missing: dict | None = None, unexpected: dict | None = None,
                 mismatched: dict | None = None) -> None:
        super().__init__(message)
        self.missing = dict(missing or {})
        self.unexpected = dict(unexpected or {})
        self.mismatched = dict(mismatched or {})

    @classmethod
    def for_keys(cls, source: str, target: str, missing: dict, unexpected: dict, mismatched: dict) -> CheckpointError:
        """The error for weights ``source`` that do not fit ``target``, every offending key listed.

        Parameters
        ----------
        source : str
            How the message names the checkpoint (a path).
        target : str
            What it was loaded into (``"the SEED tokenizer"``).
        missing, unexpected, mismatched : dict
            As the attributes of the same names.
        """
        parts = []
        if missing:
            parts.append(_listing(f"{len(missing)} missing key(s) (expected shape)",
                                  [f"{k} {list(s)}" for k, s in missing.items()]))
        if unexpected:
            parts.append(_listing(f"{len(unexpected)} unexpected key(s) (shape in file)",
                                  [f"{k} {list(s)}" for k, s in unexpected.items()]))
        if mismatched:
            parts.append(_listing(f"{len(mismatched)} shape mismatch(es)",
                                  [f"{k}: expected {list(e)}, got {list(g)}" for k, (e, g) in mismatched.items()]))
        return cls(f"{source} does not fit {target}:\n" + "\n".join(parts),
                   missing=missing, unexpected=unexpected, mismatched=mismatched)


def _listing(title: str, lines: list[str]) -> str:
    shown = lines[:_MAX_LISTED]
    more = f"\n    … and {len(lines) - len(shown)} more" if len(lines) > len(shown) else ""
    return f"  {title}:\n" + "\n".join(f"    {line}" for line in shown) + more


# ---------------------------------------------------------------------------------------------
# Single files


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 16 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _write(path: Path, content: FileContent, metadata: Mapping[str, str] | None, kind: str | None = None) -> None:
    """Write ``content`` to ``path`` (bytes as they are, else as its name or ``kind`` says), and fsync it."""
    kind = kind or path.name
    if isinstance(content, (bytes, bytearray, memoryview)):
        data = bytes(content)
    elif kind.endswith(SAFETENSORS_SUFFIX):
        from safetensors.torch import save_file

        if not isinstance(content, Mapping):
            raise TypeError(f"{path.name}: a .safetensors file takes a mapping of names to tensors, "
                            f"got {type(content).__name__}")
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in content.items()}
        save_file(tensors, str(path), metadata=dict(metadata) if metadata else None)
        _fsync(path)
        return
    elif kind.endswith(JSON_SUFFIX):
        data = (json.dumps(content, indent=1) + "\n").encode("utf-8")
    else:
        raise TypeError(f"{path.name}: takes bytes (or name it *.safetensors / *.json), got {type(content).__name__}")
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _replace_file(path: Path, content: FileContent, metadata: Mapping[str, str] | None, kind: str) -> Path:
    """Write one file atomically: a temporary sibling, fsynced, renamed over ``path``, parent fsynced."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}")
    try:
        _write(tmp, content, metadata, kind)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)
    return path


def save_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary sibling, fsync, rename, parent fsync), so
    a failed or interrupted write (disk full, a kill) leaves no partial file; return ``path``.

    For outputs a user reads (PNGs, JSON results): the old file, if any, stays until the new one
    is complete. The folder must exist; errors are the ``OSError`` of the failing call.
    """
    return _replace_file(Path(path), bytes(data), None, "")


def save_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor], *,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write one safetensors file atomically (temporary sibling, fsync, rename, parent fsync).

    Parameters
    ----------
    path : path of the file (its folder must exist)
    tensors : mapping of str to Tensor
        Any device and dtype; stored from the CPU, contiguous.
    metadata : mapping of str to str, optional
        The file's safetensors header metadata.

    Returns
    -------
    Path
        ``path``.
    """
    return _replace_file(Path(path), tensors, metadata, SAFETENSORS_SUFFIX)


def load_safetensors(path: str | Path, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file.

    Returns
    -------
    dict of str to Tensor, on ``device``.

    Raises
    ------
    CheckpointError
        The file is missing or is not a readable safetensors file (message: the path first).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(str(path), device=str(torch.device(device)))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable safetensors file ({err})") from None


def save_json(path: str | Path, value: Any) -> Path:
    """Write a JSON-ready ``value`` atomically (indented, UTF-8); return ``path``."""
    return _replace_file(Path(path), value, None, JSON_SUFFIX)


def load_json(path: str | Path) -> Any:
    """Read a JSON file.

    Raises
    ------
    CheckpointError
        The file is missing or not valid UTF-8 JSON (message: the path first).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None


# ---------------------------------------------------------------------------------------------
# Folders


def write_folder(path: str | Path, files: Mapping[str, FileContent], *, manifest: str = MANIFEST_FILE,
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``files`` as the folder ``path``, atomically, with a checksum manifest.

    The folder is built as ``.tmp-<name>`` beside ``path`` (a leftover of a killed write is
    removed first), every file and the folder fsynced, then renamed into place and the parent
    fsynced. An existing ``path`` is first renamed to ``.old-<name>`` and deleted only once the
    new folder is in place, so a process killed at any point leaves a complete folder, old or
    new, at ``path`` or (killed between the two renames) at ``.old-<name>``, which the next
    write keeps until its own folder is in place. An exception while writing removes the
    temporary folder and leaves ``path`` as it was.

    Parameters
    ----------
    path : path
        The folder; its parent is created if needed.
    files : mapping of str to bytes, tensors or JSON
        File name → content: bytes (any name), tensors by name for ``*.safetensors``, a
        JSON-ready value for ``*.json``. Names are plain file names.
    manifest : str
        The JSON file recording each other file's ``bytes`` and ``sha256`` under ``"files"``.
        If ``files`` has an entry of this name, it must be a dict without a ``"files"`` key and
        the record is added to it; otherwise a file ``{"files": ...}`` is written.
    metadata : mapping of str to str, optional
        Header metadata of every ``*.safetensors`` file.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        A name that is not a plain file name, or a manifest entry that is not a JSON object or
        already has ``"files"``.
    TypeError
        Content that does not fit its file's kind.
    """
    final = Path(path)
    for name in (*files, manifest):
        _check_name(name)
    head = files.get(manifest, {})
    if not isinstance(head, dict) or FILES_KEY in head:
        raise ValueError(f"write_folder: the manifest entry {manifest!r} must be a JSON object without "
                         f"a {FILES_KEY!r} key")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{_TMP_PREFIX}{final.name}")
    old = final.with_name(f"{_OLD_PREFIX}{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        record = {}
        for name, content in files.items():
            if name == manifest:
                continue
            _write(tmp / name, content, metadata)
            # Hashed from disk: the record describes what landed, not what was meant to.
            record[name] = {"bytes": (tmp / name).stat().st_size, "sha256": sha256(tmp / name)}
        _write(tmp / manifest, {**head, FILES_KEY: record}, None, JSON_SUFFIX)
        _fsync(tmp)
        _swap_into_place(tmp, final, old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.is_dir() and not final.exists():
            os.replace(old, final)  # failed between the two renames: put the old folder back
        raise
    return final


def _swap_into_place(tmp: Path, final: Path, old: Path) -> None:
    if final.exists():
        # ``final`` is complete (only ever renamed into place whole), so a leftover ``old`` can go.
        # A directory cannot be renamed over a non-empty one: move the current one aside first.
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ValueError(f"write_folder: file names must be plain names, got {name!r}")


def verify_folder(path: str | Path, *, manifest: str = MANIFEST_FILE) -> dict[str, Any]:
    """Check every file a folder's manifest records (presence, size, SHA-256) without loading it.

    Returns
    -------
    dict
        The manifest's JSON object (its ``"files"`` entry included).

    Raises
    ------
    CheckpointError
        The manifest is missing, not JSON or has no valid ``"files"``; a recorded file is
        missing, of another size (truncated or overwritten) or another checksum (corrupt).
        The message starts with the offending file's path.
    """
    folder = Path(path)
    head_path = folder / manifest
    if not head_path.is_file():
        old = folder.with_name(f"{_OLD_PREFIX}{folder.name}")
        where = f"; an interrupted replace left the previous version in {old}" if old.is_dir() else ""
        raise CheckpointError(f"{head_path}: missing; {folder} is not a complete checkpoint{where}")
    head = load_json(head_path)
    record = head.get(FILES_KEY) if isinstance(head, dict) else None
    if not isinstance(record, dict) or not all(
        isinstance(n, str) and "/" not in n and isinstance(i, dict) and isinstance(i.get("bytes"), int)
        and isinstance(i.get("sha256"), str) for n, i in record.items()
    ):
        raise CheckpointError(f"{head_path}: no valid {FILES_KEY!r} record of the folder's files")
    for name, info in record.items():
        f = folder / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing from the checkpoint")
        size = f.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(f"{f}: {size} bytes, expected {info['bytes']} (truncated or overwritten)")
        if sha256(f) != info["sha256"]:
            raise CheckpointError(f"{f}: SHA-256 does not match the one recorded in {manifest} (corrupt)")
    return head


def read_folder(path: str | Path, *, manifest: str = MANIFEST_FILE,
                device: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify a folder written by :func:`write_folder` (see :func:`verify_folder`), then read it.

    Parameters
    ----------
    path : path
    manifest : str
        As given to :func:`write_folder`.
    device : str or torch.device
        Where ``*.safetensors`` tensors are loaded.

    Returns
    -------
    dict
        File name → content for the manifest and every file it records: tensors by name for
        ``*.safetensors``, the parsed value for ``*.json``, bytes otherwise.

    Raises
    ------
    CheckpointError
        As :func:`verify_folder`, or a recorded file that is not readable as its kind.
    """
    folder = Path(path)
    head = verify_folder(folder, manifest=manifest)
    out: dict[str, Any] = {manifest: head}
    for name in head[FILES_KEY]:
        f = folder / name
        if name.endswith(SAFETENSORS_SUFFIX):
            out[name] = load_safetensors(f, device=device)
        elif name.endswith(JSON_SUFFIX):
            out[name] = load_json(f)
        else:
            out[name] = f.read_bytes()
    return out
