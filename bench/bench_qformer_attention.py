"""Masked flash attention (Q-Former and EVA ViT shapes) vs SDPA with a mask, FlexAttention,
xformers and flash-attn.

    python bench/bench_qformer_attention.py [--quick] [--plot qformer_attention.png]

Same as ``seedfast bench --op qformer_attention``; results land in bench/results/.
"""
import sys

from seedfast.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--op", "qformer_attention", *sys.argv[1:]]))
