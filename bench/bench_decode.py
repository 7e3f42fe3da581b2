"""SEED-LLaMA decoding vs transformers: batch-1 decode (and its HBM roofline), batched image
generation, prefill.

    python bench/bench_decode.py [--quick] [--no-compile] [--device cpu|cuda] [--no-save] [--markdown]

On CUDA: the 8B config with random bf16 weights; full runs add transformers with torch.compile
(``--no-compile`` leaves it out). On CPU: the tiny config, a smoke run that claims nothing.
Results (with tokens/s and the roofline fraction as notes) land in bench/results/.
"""
import argparse
import sys
import types

import torch

from seedfast.benchmarks import decode
from seedfast.benchmarks.harness import format_table, run_suites, write_result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens, short timing budget, no hf-compile")
    parser.add_argument("--no-compile", action="store_true", help="leave out transformers + torch.compile")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    impls = list(decode.impls)
    if not (args.quick or args.no_compile):
        impls.append(decode.HF_COMPILE)
    suite = types.SimpleNamespace(NAME=decode.NAME, cases=decode.cases, impls=impls)
    result = run_suites([suite], quick=args.quick, device=device,
                        progress=lambda label: print(label, file=sys.stderr, flush=True))
    result.notes.extend(decode.summarize(result))
    if not args.no_save:
        print(f"wrote {write_result(result, args.out)}", file=sys.stderr)
    print(format_table(result, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
