"""Grammar-constrained sampling: fused Triton and CUDA C++ vs the torch sort reference, FlashInfer and vLLM.

    python bench/bench_sampling.py [--quick] [--plot sampling.png]

Same as ``seedfast bench --op sampling``; results land in bench/results/.
"""
import sys

from seedfast.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--op", "sampling", *sys.argv[1:]]))
