"""SEED tokenizer, de-tokenizer, LLaMA decoder and SEED-LLaMA wrapper.

Submodules are imported on demand (e.g. ``from seedfast.models.llama import Llama``) so that
``import seedfast.models`` stays cheap.
"""
