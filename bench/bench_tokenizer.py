"""SEED tokenizer encode and Q-Former: fused attention vs explicit-mask SDPA vs eager BERT attention.

    python bench/bench_tokenizer.py [--quick] [--plot tokenizer.png]

Same as ``seedfast bench --op tokenizer``; results land in bench/results/.
"""
import sys

from seedfast.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--op", "tokenizer", *sys.argv[1:]]))
