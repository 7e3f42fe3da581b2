"""SwiGLU's activation: fused Triton vs the torch reference (eager and compiled) and FlashInfer.

    python bench/bench_silu_mul.py [--quick] [--plot silu_mul.png]

Same as ``seedfast bench --op silu_mul``; results land in bench/results/. The cases are SEED-LLaMA
8B and 14B decode steps (batch 1, 64, 256); each measurement in the results JSON carries its
GB/s, from the bytes the case must move.
"""
import sys

from seedfast.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--op", "silu_mul", *sys.argv[1:]]))
