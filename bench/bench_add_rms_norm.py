"""Residual add + RMSNorm: fused Triton vs the torch reference (eager and compiled) and FlashInfer.

    python bench/bench_add_rms_norm.py [--quick] [--plot add_rms_norm.png]

Same as ``seedfast bench --op add_rms_norm``; results land in bench/results/. The cases are SEED-LLaMA
8B and 14B decode steps (batch 1, 64, 256); each measurement in the results JSON carries its
GB/s, from the bytes the case must move.
"""
import sys

from seedfast.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--op", "add_rms_norm", *sys.argv[1:]]))
