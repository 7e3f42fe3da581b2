"""One training run per run folder, and a run folder whose layout can hold a run.

Two ``seedfast train`` processes writing the same ``--out`` would interleave their logs and
race on checkpoint folders, so a run holds an exclusive ``flock`` on ``<out>/.lock`` for as
long as it trains. The kernel drops the lock when the holding process exits, however it exits
(``kill -9`` included), so a stale lock file never blocks a later run: only a live holder does.
The file holds the holder's process id, for the message a second run prints.

The start-up check refuses paths that would otherwise fail late: ``--out`` naming a file, or a
file where the ``checkpoints`` folder belongs (a resumed run would silently start at step 0 and
crash at its first save).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from seedfast.train.checkpoint import checkpoints_dir

try:
    import fcntl
except ImportError:  # Windows has no flock: runs there are not guarded against each other.
    fcntl = None

LOCK_FILE = ".lock"
"""The lock's file inside the run folder."""


class RunFolderError(ValueError):
    """A run folder that cannot be used; the message names the path and what is wrong."""


def check_run_folder(out: str | Path) -> None:
    """Refuse a run folder whose paths are of the wrong kind.

    Raises
    ------
    RunFolderError
        ``out`` or ``out/checkpoints`` exists and is not a folder.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file; expected a run folder (new or from an earlier run)")
    checkpoints = checkpoints_dir(out)
    if checkpoints.exists() and not checkpoints.is_dir():
        raise RunFolderError(f"{checkpoints} is a file, not the run's checkpoints folder; move it away or choose "
                             "another --out")


class RunLock:
    """An exclusive lock on a run folder, held until :meth:`release` (or the process exits).

    Parameters
    ----------
    out : path
        The run folder; created if missing (after :func:`check_run_folder`).

    Raises
    ------
    RunFolderError
        Another live process holds the folder (its process id is named), or the folder's paths
        are of the wrong kind.
    OSError
        The folder or its lock file cannot be created (read-only file system, no space, ...).
    """

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        check_run_folder(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = open(self.out / LOCK_FILE, "a+", encoding="utf-8")
        try:
            self._acquire()
        except BaseException:
            self.release()
            raise

    def _acquire(self) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "process id not yet written"
            raise RunFolderError(f"{self.out} is in use by another seedfast train run ({holder}); wait for it to "
                                 "end or choose another --out") from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"pid {os.getpid()}\n")
        self._fh.flush()

    def release(self) -> None:
        """Drop the lock (closing the file releases the flock); safe to call twice."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
