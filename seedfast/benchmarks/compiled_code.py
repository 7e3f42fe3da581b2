"""Reading NVIDIA compiled code without a GPU: SASS (``cuobjdump``), resource usage, Triton's GPU IR.

The parsing behind ``seedfast kernels`` (:mod:`seedfast.benchmarks.kernels_report`, whose
docstring says how the hot loop is found and what counts as a vector load).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

_FUNCTION = re.compile(r"Function\s*:\s*(\S+)")
_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_RES = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def sass_functions(sass: str) -> dict[str, list[tuple[int, str, str]]]:
    """Split ``cuobjdump -sass`` output into ``{function: [(address, opcode, operands)]}``."""
    out: dict[str, list[tuple[int, str, str]]] = {}
    current: list[tuple[int, str, str]] | None = None
    for line in sass.splitlines():
        fn = _FUNCTION.search(line)
        if fn:
            current = out.setdefault(fn.group(1), [])
            continue
        insn = _INSN.search(line)
        if insn and current is not None:
            current.append((int(insn.group(1), 16), insn.group(2), insn.group(3)))
    return out


def _is_tensor_core(op: str) -> bool:
    return op.startswith(("HGMMA", "HMMA", "IMMA", "UTCHMMA", "UTCQMMA"))


def _is_global_load(op: str) -> bool:
    return op.startswith(("LDG", "UTMALDG")) and not op.startswith("LDGDEPBAR")


def _load_width(op: str) -> str:
    if op.startswith(("LDGSTS", "UTMALDG")) or ".128" in op or ".256" in op:
        return "vector"
    return "wide2" if ".64" in op else "scalar"


def analyse_sass(insns: list[tuple[int, str, str]]) -> dict:
    """Spills, tensor-core instructions and the hot loop of one SASS function (see module doc)."""
    if not insns:
        raise ValueError("analyse_sass: insns must hold at least one instruction, got none")
    loops = []
    for addr, op, args in insns:
        target = re.search(r"0x([0-9a-f]+)", args)
        if op.startswith("BRA") and target and int(target.group(1), 16) < addr:
            lo = int(target.group(1), 16)
            body = [(a, o) for a, o, _ in insns if lo <= a <= addr]
            loops.append((lo, addr, body))

    def score(body):
        tc = sum(_is_tensor_core(o) for _, o in body)
        return (tc, 0) if tc else (0, sum(_is_global_load(o) for _, o in body))

    if loops:
        best = max(score(b) for _, _, b in loops)
        lo, hi, body = min((x for x in loops if score(x[2]) == best), key=lambda x: x[1] - x[0])
        where = f"0x{lo:04x}-0x{hi:04x}"
    else:
        body = [(a, o) for a, o, _ in insns]
        where = "whole kernel (no loop)"
    widths = [_load_width(o) for _, o in body if _is_global_load(o)]
    return {
        "spill_stores": sum(o.startswith("STL") for _, o, _ in insns),
        "spill_loads": sum(o.startswith("LDL") for _, o, _ in insns),
        "tensor_core_insns": sum(_is_tensor_core(o) for _, o, _ in insns),
        "hot_loop": where,
        "hot_loop_insns": len(body),
        "hot_vector_loads": widths.count("vector"),
        "hot_wide2_loads": widths.count("wide2"),
        "hot_scalar_loads": widths.count("scalar"),
    }


def ttgir_dots(ttgir: str) -> tuple[int, bool | None]:
    """``(dots, all on tensor cores)`` from Triton's GPU IR (``None`` when there is no dot)."""
    tc = len(re.findall(r"ttng\.warp_group_dot\s", ttgir))
    plain = re.findall(r"\btt\.dot\s[^\n]*", ttgir)
    tc += sum(bool(re.search(r"->\s*tensor<[^>]*#mma", line)) for line in plain)
    dots = tc + sum(not re.search(r"->\s*tensor<[^>]*#mma", line) for line in plain)
    return dots, (tc == dots if dots else None)


def tool(name: str) -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(path) if path.is_file() else (shutil.which(name) or name)


def resource_usage(res: str) -> dict[str, dict[str, int]]:
    """``cuobjdump -res-usage`` → ``{function: {"REG", "STACK", "SHARED", "LOCAL"}}``."""
    return {m.group(1): {"REG": int(m.group(2)), "STACK": int(m.group(3)), "SHARED": int(m.group(4)),
                         "LOCAL": int(m.group(5))} for m in _RES.finditer(res)}


def cuobjdump(binary: Path) -> str:
    """``cuobjdump -res-usage -sass``: one call, since disassembly dominates the time."""
    return subprocess.run([tool("cuobjdump"), "-res-usage", "-sass", str(binary)], capture_output=True, text=True,
                          check=True).stdout


def cache_dir() -> Path:
    return Path(os.environ.get("SEEDFAST_CACHE") or Path.home() / ".cache" / "seedfast") / "kernels"


def read_cubin(cubin: bytes) -> dict:
    """Registers and :func:`analyse_sass` of a Triton cubin, cached on disk by the cubin's hash
    (disassembling takes ~0.5 s of CPU; the same cubin always reads the same)."""
    path = cache_dir() / f"{hashlib.sha256(cubin).hexdigest()}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "k.cubin"
        binary.write_bytes(cubin)
        text = cuobjdump(binary)
    found = dict(analyse_sass(next(iter(sass_functions(text).values()))))
    found["registers"] = next(iter(resource_usage(text).values()), {}).get("REG")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(f".{os.getpid()}.tmp")
    tmp_path.write_text(json.dumps(found), encoding="utf-8")
    tmp_path.replace(path)
    return found
