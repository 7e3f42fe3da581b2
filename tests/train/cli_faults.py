"""Run ``seedfast`` as a subprocess with one simulated file-system fault (issue 15).

``python tests/train/cli_faults.py ARGS...`` runs ``seedfast ARGS...`` after installing the fault
that ``SEEDFAST_TEST_FAULT`` names:

* ``read-only:<folder>``: creating a folder at or under ``<folder>`` fails with errno 30
  (EROFS), as on a read-only mount (tests run as root here, so ``chmod`` cannot make one);
* ``disk-full:<name>``: writing a file into a folder called ``<name>`` (e.g. the temporary
  folder ``.tmp-step-00000004`` of a checkpoint) fails with errno 28 (ENOSPC) from
  :func:`seedfast.checkpoint_io._write`, where every checkpoint file is written;
* ``disk-full-safetensors:<name>``: the same, raised by safetensors' own writer as the
  ``SafetensorError`` it raises for a full disk.
"""
import errno
import os
import pathlib
import sys


def _install(fault: str) -> None:
    kind, _, arg = fault.partition(":")
    if kind == "read-only":
        root = pathlib.Path(arg).resolve()
        real_mkdir = pathlib.Path.mkdir

        def mkdir(self: pathlib.Path, *args: object, **kwargs: object) -> None:
            path = self.resolve()
            if path == root or root in path.parents:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
            real_mkdir(self, *args, **kwargs)

        pathlib.Path.mkdir = mkdir
    elif kind == "disk-full":
        import seedfast.checkpoint_io as io

        real_write = io._write

        def write(path: pathlib.Path, *args: object, **kwargs: object) -> None:
            if path.parent.name == arg:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            real_write(path, *args, **kwargs)

        io._write = write
    elif kind == "disk-full-safetensors":
        import safetensors.torch
        from safetensors import SafetensorError

        real_save = safetensors.torch.save_file

        def save_file(tensors: object, filename: str, *args: object, **kwargs: object) -> None:
            if pathlib.Path(filename).parent.name == arg:
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
            real_save(tensors, filename, *args, **kwargs)

        safetensors.torch.save_file = save_file
    else:
        raise SystemExit(f"unknown SEEDFAST_TEST_FAULT {fault!r}")


if __name__ == "__main__":
    _install(os.environ["SEEDFAST_TEST_FAULT"])
    from seedfast.cli import main

    sys.exit(main(sys.argv[1:]))
