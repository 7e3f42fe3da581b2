"""Ahead-of-time compilation of Triton kernels for GPU targets, on a machine without a GPU.

Kernels imported under ``TRITON_INTERPRET=1`` are interpreter objects that cannot be
compiled, so the compile runs in a fresh interpreter with the variable cleared.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

TARGETS = (80, 90)

_SCRIPT = textwrap.dedent(
    """
    import importlib, json, sys, traceback
    import triton
    from triton.backends.compiler import GPUTarget

    specs = json.loads(sys.argv[1])
    failures, compiled = [], 0
    for spec in specs:
        mod = importlib.import_module(spec["module"])
        kernel = getattr(mod, spec["kernel"])
        if hasattr(kernel, "configs"):
            jit, configs = kernel.fn, kernel.configs
        else:
            jit, configs = kernel, [triton.Config({}, num_warps=spec.get("num_warps", 4))]
        for config in configs:
            constexprs = dict(spec["constexprs"], **config.kwargs)
            signature = dict(spec["signature"], **{k: "constexpr" for k in constexprs})
            for cc in spec["targets"]:
                try:
                    src = triton.compiler.ASTSource(fn=jit, signature=signature, constexprs=constexprs)
                    out = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                                         options={"num_warps": config.num_warps, "num_stages": config.num_stages})
                    assert out.asm.get("cubin"), "no cubin produced"
                    compiled += 1
                except Exception:
                    failures.append(f"{spec['kernel']} sm_{cc} {config.kwargs} {spec['constexprs']}:\\n"
                                    + traceback.format_exc(limit=3))
    print(json.dumps({"compiled": compiled, "failures": failures}))
    """
)


def aot_compile(specs: list[dict]) -> dict:
    """Compile each spec for sm_80 and sm_90; returns ``{"compiled": n, "failures": [...]}``.

    A spec is ``{"module", "kernel", "signature", "constexprs"}``; autotuned kernels are
    compiled once per GPU config (the configs a GPU would tune over).
    """
    for spec in specs:
        spec.setdefault("targets", list(TARGETS))
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(specs)],
        capture_output=True, text=True, env=env, timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"AOT compile subprocess failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
