"""CUDA-graph decode runner and batched multimodal generation (the KV cache lives with the model,
in :mod:`seedfast.models.kv_cache`, and is re-exported here)."""
from seedfast.generation.cuda_graphs import DecodeRunner, decode_runner, drop_runner
from seedfast.generation.generate import GenerationOutput, ImageDetokenizer, ImageTokenizer, generate
from seedfast.models.kv_cache import KVCache

__all__ = [
    "DecodeRunner",
    "GenerationOutput",
    "ImageDetokenizer",
    "ImageTokenizer",
    "KVCache",
    "decode_runner",
    "drop_runner",
    "generate",
]
