"""JIT build of the CUDA C++ ops in ``csrc/`` with ``torch.utils.cpp_extension``, on first use.

Nothing here runs at ``import seedfast``: an op asks for its extension only when a caller picks
``backend="cuda"``. Builds are cached twice: in this process (one build per name) and on disk by
``cpp_extension`` (under ``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``), so
a second process reuses the compiled module.
"""
from __future__ import annotations

import functools
from pathlib import Path
from types import ModuleType

import seedfast

# Flags every op adds to torch's own: fast code, and line info for profilers. The language
# standard, the ABI and the include paths come from ``torch.utils.cpp_extension`` itself (torch
# 2.14's headers need C++20, older ones C++17), so they are never written down here.
CUDA_FLAGS = ("-O3", "-lineinfo")
CXX_FLAGS = ("-O3",)


def csrc_dir() -> Path:
    """Where the CUDA sources are: ``seedfast/csrc`` in an installed wheel, ``csrc/`` in a checkout.

    Raises
    ------
    RuntimeError
        Neither folder exists.
    """
    package = Path(seedfast.__file__).resolve().parent
    for candidate in (package / "csrc", package.parent / "csrc"):
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"seedfast's CUDA sources (csrc/) were not found next to {package}; "
                       "reinstall seedfast with its package data")


def cuda_unavailable_reason() -> str | None:
    """Why the CUDA extensions cannot be built here, or None when they can."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device is visible to torch"
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) was built without CUDA"
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        return "the CUDA toolkit (nvcc) was not found: set CUDA_HOME"
    return None


@functools.cache
def load_extension(name: str, sources: tuple[str, ...]) -> ModuleType:
    """Build (or load from the on-disk cache) the extension ``name`` from files in :func:`csrc_dir`.

    Parameters
    ----------
    name : str
        Module name of the extension; also names its build folder.
    sources : tuple of str
        File names inside ``csrc/`` (``.cu`` compiled by nvcc, ``.cpp`` by the host compiler); a
        tuple, since builds are cached per ``(name, sources)``.

    Returns
    -------
    module
        The compiled pybind11 module.

    Raises
    ------
    RuntimeError
        CUDA is not available, a source is missing, or the build failed (with the compiler's
        message).
    """
    reason = cuda_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"cannot build the CUDA extension {name!r}: {reason}; use backend='triton' or 'torch'")
    folder = csrc_dir()
    paths = [folder / s for s in sources]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise RuntimeError(f"cannot build the CUDA extension {name!r}: missing sources {missing}")
    from torch.utils import cpp_extension

    try:
        return cpp_extension.load(
            name=name,
            sources=[str(p) for p in paths],
            extra_cflags=list(CXX_FLAGS),
            extra_cuda_cflags=list(CUDA_FLAGS),
            verbose=False,
        )
    except Exception as err:  # a compiler error surfaces as one of several exception types
        raise RuntimeError(f"building the CUDA extension {name!r} from {folder} failed: {err}") from err
