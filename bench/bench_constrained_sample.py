"""Grammar-constrained sampling: fused Triton and CUDA C++ vs the torch sort reference, FlashInfer and vLLM.

    python bench/bench_constrained_sample.py [--quick] [--plot constrained_sample.png]

Same as ``seedfast bench --op constrained_sample``; results land in bench/results/.
"""
import sys

from seedfast.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--op", "constrained_sample", *sys.argv[1:]]))
