"""Fused VQ vs the official formula, cdist and vector-quantize-pytorch.

    python bench/bench_vq.py [--quick] [--plot vq.png]

Same as ``seedfast bench --op vq``; results land in bench/results/.
"""
import sys

from seedfast.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--op", "vq", *sys.argv[1:]]))
