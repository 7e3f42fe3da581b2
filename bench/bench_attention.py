"""Masked flash attention (Q-Former and EVA ViT shapes) vs SDPA with a mask, FlexAttention,
xformers and flash-attn.

    python bench/bench_attention.py [--quick] [--plot attention.png]

Same as ``seedfast bench --op attention``; results land in bench/results/.
"""
import sys

from seedfast.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--op", "attention", *sys.argv[1:]]))
