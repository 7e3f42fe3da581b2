"""Checkpoints that survive being killed at any instant, and that refuse to load when damaged.

A checkpoint is a folder ``DIR/checkpoints/step-<8 digits>/`` with

* ``model.safetensors``: the trained weights (frozen ones are rebuilt from the config);
* ``optimizer.safetensors``: AdamW's moments and step counts, ``<param>/<key>``;
* ``state.json``: format, step, the resolved config, the optimizer's hyper-parameters, the
  world size, and each file's byte size and SHA-256.

It is written into ``.tmp-step-…``, every file fsynced, then renamed into place and the parent
fsynced: a checkpoint folder either is complete or does not exist. The schedule, the data
position and every random stream are functions of the step (see :mod:`seedfast.train.loop`),
so the step is the whole of the loop's state besides weights and optimizer.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FORMAT = "seedfast-train-checkpoint"
VERSION = 1
MODEL_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "state.json"
_STEP_DIR = re.compile(r"step-(\d{8})")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed; the message names the file and what is wrong."""


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    state: dict[str, Any]


def checkpoints_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def step_dirs(out: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    root = checkpoints_dir(out)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.fullmatch(p.name))


def latest(out: str | Path) -> Path | None:
    """The newest checkpoint folder, or None."""
    dirs = step_dirs(out)
    return dirs[-1] if dirs else None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def flatten_optimizer(osd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """A name-keyed optimizer state dict → tensors ``"<param>/<key>"`` and JSON-ready param groups."""
    tensors = {}
    for name, entry in osd["state"].items():
        for key, value in entry.items():
            tensors[f"{name}/{key}"] = torch.as_tensor(value).detach().to("cpu").contiguous()
    return tensors, [dict(g) for g in osd["param_groups"]]


def unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer`."""
    state: dict[str, dict[str, torch.Tensor]] = {}
    for flat, value in tensors.items():
        name, _, key = flat.rpartition("/")
        state.setdefault(name, {})[key] = value
    return {"state": state, "param_groups": groups}


def save(out: str | Path, step: int, model: dict[str, torch.Tensor], optimizer: dict[str, Any],
         state: dict[str, Any], keep_last: int) -> Path:
    """Write checkpoint ``step`` atomically, then delete all but the newest ``keep_last``.

    Parameters
    ----------
    model : trained weights by name
    optimizer : name-keyed optimizer state dict (``{"state", "param_groups"}``)
    state : JSON-ready loop state (step, config, …)

    Returns
    -------
    The checkpoint folder.
    """
    from safetensors.torch import save_file

    root = checkpoints_dir(out)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().to("cpu").contiguous() for k, v in model.items()}, str(tmp / MODEL_FILE),
              metadata={"format": FORMAT})
    opt_tensors, groups = flatten_optimizer(optimizer)
    save_file(opt_tensors, str(tmp / OPTIM_FILE), metadata={"format": FORMAT})
    files = {}
    for name in (MODEL_FILE, OPTIM_FILE):
        _fsync(tmp / name)
        files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
    meta = {"format": FORMAT, "version": VERSION, "step": step, **state, "param_groups": groups, "files": files}
    (tmp / STATE_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    _fsync(tmp / STATE_FILE)
    _fsync(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    for old in step_dirs(out)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint folder.

    Raises
    ------
    CheckpointError
        A missing file, a file of the wrong size or checksum (truncated, corrupted), unreadable
        JSON or safetensors, another format or version; the message names the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(f"{state_path}: missing; {folder} is not a complete checkpoint")
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{state_path}: not valid JSON ({err}); the checkpoint is corrupt") from None
    if state.get("format") != FORMAT or state.get("version") != VERSION:
        raise CheckpointError(f"{state_path}: format {state.get('format')!r} v{state.get('version')!r}, "
                              f"this seedfast reads {FORMAT!r} v{VERSION}")
    for name, info in state["files"].items():
        f = folder / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing from the checkpoint")
        size = f.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(f"{f}: {size} bytes, expected {info['bytes']} (truncated or overwritten); "
                                  f"delete {folder} to resume from the previous checkpoint")
        if _sha256(f) != info["sha256"]:
            raise CheckpointError(f"{f}: SHA-256 does not match the one recorded in {STATE_FILE} (corrupt); "
                                  f"delete {folder} to resume from the previous checkpoint")
    try:
        model = load_file(str(folder / MODEL_FILE))
        optim = load_file(str(folder / OPTIM_FILE))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{folder}: unreadable safetensors file ({err})") from None
    return Checkpoint(path=folder, step=int(state["step"]), model=model,
                      optimizer=unflatten_optimizer(optim, state["param_groups"]), state=state)
