"""csrc/ builds without a GPU, with the flags torch's own extension builder would use.

``seedfast.ops._cuda_ext`` JIT-builds the CUDA C++ ops with ``torch.utils.cpp_extension`` on a
CUDA machine. Here the same build is checked without running it: torch writes its ninja file for
the extension (``with_cuda=True``, sm_80 and sm_90), and each ``.cu`` is compiled with the
``nvcc`` command from that file, each torch binding (``*_binding.cpp``) syntax-checked with its
host-compiler command. The C++ standard, defines and include paths therefore follow the
installed torch (C++20 from torch 2.14 on) instead of being written down here.
"""
from __future__ import annotations

import inspect
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from seedfast.ops._cuda_ext import CUDA_FLAGS, CXX_FLAGS

CSRC = Path(__file__).resolve().parent.parent / "csrc"
CU_FILES = sorted(CSRC.glob("*.cu"))
BINDINGS = sorted(CSRC.glob("*_binding.cpp"))
NVCC = shutil.which("nvcc")


def _cuda_include() -> Path | None:
    """The CUDA toolkit's headers next to nvcc (torch's flags may point at a CUDA_HOME without them)."""
    if NVCC is None:
        return None
    out = subprocess.run([NVCC, "--dryrun", "--version"], capture_output=True, text=True).stderr
    roots = [Path(line.split("=", 1)[1].strip().strip('"')).parent
             for line in out.splitlines() if "TOP=" in line]
    roots += [Path(NVCC).resolve().parent.parent, Path("/usr/local/cuda")]
    return next((r / "include" for r in roots if (r / "include" / "cuda_runtime_api.h").is_file()), None)


def _torch_build_flags(tmp_path: Path) -> dict[str, list[str]]:
    """The compile flags ``torch.utils.cpp_extension`` writes for seedfast's extension.

    Uses torch's ninja-file writer (private, so its keyword arguments are matched against its
    signature) and reads back ``cflags``/``post_cflags`` (host compiler) and
    ``cuda_cflags``/``cuda_post_cflags`` (nvcc).
    """
    from torch.utils import cpp_extension

    writer = cpp_extension._write_ninja_file_to_build_library
    arguments = dict(path=str(tmp_path / "build.ninja"), name="seedfast_csrc_check",
                     sources=[str(p) for p in (*CU_FILES, *BINDINGS)],
                     extra_cflags=list(CXX_FLAGS), extra_cuda_cflags=list(CUDA_FLAGS),
                     extra_sycl_cflags=[], extra_ldflags=[], extra_include_paths=[],
                     with_cuda=True, with_sycl=False, is_standalone=False)
    parameters = inspect.signature(writer).parameters
    missing = [p for p in parameters if p not in arguments]
    assert not missing, f"torch's ninja writer takes new arguments {missing}: update this test"
    previous = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"  # the targets; no GPU is asked for them
    try:
        writer(**{k: v for k, v in arguments.items() if k in parameters})
    finally:
        if previous is None:
            del os.environ["TORCH_CUDA_ARCH_LIST"]
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = previous
    flags = {}
    for line in (tmp_path / "build.ninja").read_text().splitlines():
        key, sep, value = line.partition(" = ")
        if sep and key in ("cflags", "post_cflags", "cuda_cflags", "cuda_post_cflags"):
            flags[key] = shlex.split(value)
    return flags


def test_csrc_has_sources():
    assert CU_FILES and BINDINGS


def test_extension_flags_leave_the_standard_to_torch():
    assert not [f for f in (*CUDA_FLAGS, *CXX_FLAGS) if f.startswith("-std")]


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH: cannot compile csrc/")
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_cuda_sources_compile_for_sm80_and_sm90(source, tmp_path):
    flags = _torch_build_flags(tmp_path)
    assert "-gencode=arch=compute_80,code=sm_80" in flags["cuda_cflags"]
    assert "-gencode=arch=compute_90,code=sm_90" in flags["cuda_cflags"]
    assert any(f.startswith("-std=c++") for f in flags["cuda_cflags"] + flags["cuda_post_cflags"])
    obj = tmp_path / f"{source.stem}.o"
    cmd = [NVCC, *flags["cuda_cflags"], "-Werror", "all-warnings", "-c", str(source), "-o", str(obj),
           *flags["cuda_post_cflags"]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{shlex.join(cmd)}\nfailed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    assert obj.stat().st_size > 0


@pytest.mark.skipif(shutil.which("c++") is None, reason="no host C++ compiler to check the torch bindings")
@pytest.mark.skipif(_cuda_include() is None, reason="no CUDA headers (cuda_runtime_api.h) next to nvcc")
@pytest.mark.parametrize("source", BINDINGS, ids=lambda p: p.name)
def test_torch_bindings_compile(source, tmp_path):
    import torch

    flags = _torch_build_flags(tmp_path)
    assert any(f.startswith("-std=c++") for f in flags["cflags"] + flags["post_cflags"])
    # A CPU wheel of torch ships c10/cuda's headers but not the one CMake generates for CUDA
    # builds; it only defines this macro.
    torch_include = Path(torch.__file__).parent / "include"
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    if not (torch_include / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").is_file():
        (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cmd = ["c++", *flags["cflags"], "-isystem", str(tmp_path), "-isystem", str(_cuda_include()),
           "-fsyntax-only", "-Wall", "-Wextra", "-Werror", str(source), *flags["post_cflags"]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{shlex.join(cmd)}\nfailed:\n{proc.stderr[-4000:]}"
