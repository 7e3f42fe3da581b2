"""SEED's numbers, named after the paper and the spec (``../shared/spec/SEED.md``), in one place.

A leaf module: no imports, so every layer (ops, models, train, benchmarks) can read them.
"""

NUM_QUERY_TOKENS = 32
"""Causal Q-Former queries, hence visual codes, per image."""
CODES_PER_IMAGE = NUM_QUERY_TOKENS
"""Codes SEED-LLaMA writes between ``<img>`` and ``</img>``: one per query."""
CODEBOOK_SIZE = 8192
"""Codes in the codebook (SEED-LLaMA ids 32000 … 40191)."""
CODE_DIM = 32
"""Dimension of a code vector."""
BETA = 0.25
"""Weight of the codebook term of the legacy VQ loss ``mean((sg(e) - z)^2) + BETA * mean((e - sg(z))^2)``."""
GENERATION_EMBED_DIM = 1024
"""The unCLIP (OpenCLIP ViT-H/14) image embedding the generation head predicts."""

SEED_LLAMA_TEXT_VOCAB = 32000
"""LLaMA's text ids, eos included; the codes follow them."""
SEED_LLAMA_FIRST_CODE_ID = SEED_LLAMA_TEXT_VOCAB
"""Code ``k`` is SEED-LLaMA id ``32000 + k`` (token ``<img_%05d>``)."""
SEED_LLAMA_BOI_ID = SEED_LLAMA_FIRST_CODE_ID + CODEBOOK_SIZE
"""``<img>``: 40192 (spec §11.2)."""
SEED_LLAMA_EOI_ID = SEED_LLAMA_BOI_ID + 1
"""``</img>``: 40193."""
SEED_LLAMA_EOS_ID = 2
"""LLaMA's ``</s>``."""
