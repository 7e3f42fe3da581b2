"""A decode step's rotary embedding + KV-cache write: fused Triton vs the torch reference, eager and compiled.

    python bench/bench_rope_kv_write.py [--quick] [--plot rope_kv_write.png]

Same as ``seedfast bench --op rope_kv_write``; results land in bench/results/. The cases are SEED-LLaMA
8B and 14B decode steps (batch 1, 64, 256); each measurement in the results JSON carries its
GB/s, from the bytes the case must move.
"""
import sys

from seedfast.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--op", "rope_kv_write", *sys.argv[1:]]))
