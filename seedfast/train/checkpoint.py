"""Checkpoints that survive being killed at any instant, and that refuse to load when damaged.

A checkpoint is a folder ``DIR/checkpoints/step-<8 digits>/`` with

* ``model.safetensors``: the trained weights (frozen ones are rebuilt from the config);
* ``optimizer.safetensors``: AdamW's moments and step counts, ``<param>/<key>``;
* ``state.json``: format, step, the resolved config, the optimizer's hyper-parameters, the
  world size, and each file's byte size and SHA-256.

It is written and verified by :mod:`seedfast.checkpoint_io` (``state.json`` is the manifest):
a checkpoint folder either is complete or does not exist, and a damaged one is refused. The
schedule, the data position and every random stream are functions of the step (see
:mod:`seedfast.train.loop`), so the step is the whole of the loop's state besides weights and
optimizer.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# CheckpointError stays importable from here (its home before seedfast.checkpoint_io).
from seedfast.checkpoint_io import CheckpointError, read_folder, write_folder

FORMAT = "seedfast-train-checkpoint"
VERSION = 1
MODEL_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "state.json"
_STEP_DIR = re.compile(r"step-(\d{8})")


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
    root = checkpoints_dir(out)
    opt_tensors, groups = flatten_optimizer(optimizer)
    meta = {"format": FORMAT, "version": VERSION, "step": step, **state, "param_groups": groups}
    final = write_folder(root / f"step-{step:08d}", {MODEL_FILE: model, OPTIM_FILE: opt_tensors, STATE_FILE: meta},
                         manifest=STATE_FILE, metadata={"format": FORMAT})
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
    folder = Path(path)
    try:
        files = read_folder(folder, manifest=STATE_FILE)
    except CheckpointError as err:
        raise CheckpointError(f"{err}; delete {folder} to resume from the previous checkpoint") from None
    state = files[STATE_FILE]
    if state.get("format") != FORMAT or state.get("version") != VERSION:
        raise CheckpointError(f"{folder / STATE_FILE}: format {state.get('format')!r} v{state.get('version')!r}, "
                              f"this seedfast reads {FORMAT!r} v{VERSION}")
    return Checkpoint(path=folder, step=int(state["step"]), model=files[MODEL_FILE],
                      optimizer=unflatten_optimizer(files[OPTIM_FILE], state["param_groups"]), state=state)
