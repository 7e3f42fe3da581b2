"""csrc/ builds without a GPU: each ``.cu`` with the machine's nvcc for sm_80 and sm_90, and each
torch binding (``*_binding.cpp``) syntax-checked with the host compiler against torch's headers.

The extension itself is JIT-built by ``torch.utils.cpp_extension`` on a CUDA machine; a CPU
torch cannot drive that build, so these checks call the compilers directly.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

CSRC = Path(__file__).resolve().parent.parent / "csrc"
ARCHS = ("sm_80", "sm_90")


def _cuda_roots() -> list[Path]:
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    return [Path(r) for r in roots if r]


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    return next((str(r / "bin" / "nvcc") for r in _cuda_roots() if (r / "bin" / "nvcc").is_file()), None)


NVCC = _nvcc()
CU_FILES = sorted(CSRC.glob("*.cu"))
BINDINGS = sorted(CSRC.glob("*_binding.cpp"))


def test_csrc_has_sources():
    assert CU_FILES and BINDINGS


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (PATH, CUDA_HOME, /usr/local/cuda): cannot compile csrc/")
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_cuda_sources_compile_for_sm80_and_sm90(source, tmp_path):
    # Both targets at once: each compile is a separate nvcc process.
    procs = {
        arch: subprocess.Popen(
            [NVCC, "-c", "-std=c++17", "-O3", f"-arch={arch}", "-Werror", "all-warnings", str(source),
             "-o", str(tmp_path / f"{source.stem}.{arch}.o")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for arch in ARCHS
    }
    for arch, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"nvcc -arch={arch} {source.name} failed:\n{out[-4000:]}"
        assert (tmp_path / f"{source.stem}.{arch}.o").stat().st_size > 0


def _cuda_include() -> Path | None:
    roots = _cuda_roots()
    if NVCC is not None:
        roots.insert(0, Path(NVCC).resolve().parent.parent)
    return next((r / "include" for r in roots if (r / "include" / "cuda_runtime_api.h").is_file()), None)


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to syntax-check the torch bindings")
@pytest.mark.skipif(_cuda_include() is None, reason="no CUDA headers (cuda_runtime_api.h) next to nvcc")
@pytest.mark.parametrize("source", BINDINGS, ids=lambda p: p.name)
def test_torch_bindings_compile(source, tmp_path):
    torch_include = Path(torch.__file__).parent / "include"
    # A CPU wheel of torch ships c10/cuda's headers but not the one CMake generates for CUDA
    # builds; it only defines this macro.
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    if not (torch_include / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").is_file():
        (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    includes = [torch_include, torch_include / "torch" / "csrc" / "api" / "include", tmp_path, _cuda_include(),
                Path(sysconfig.get_paths()["include"])]
    cmd = ["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
           f"-DTORCH_EXTENSION_NAME={source.stem}", "-DTORCH_API_INCLUDE_EXTENSION_H"]
    cmd += [arg for inc in includes for arg in ("-isystem", str(inc))]
    proc = subprocess.run([*cmd, str(source)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"g++ {source.name} failed:\n{proc.stderr[-4000:]}"
