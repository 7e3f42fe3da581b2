"""Static KV cache, CUDA-graph decode runner and batched multimodal generation."""
from seedfast.generation.cuda_graphs import DecodeRunner, decode_runner, drop_runner
from seedfast.generation.generate import GenerationOutput, ImageDetokenizer, ImageTokenizer, generate
from seedfast.generation.kv_cache import KVCache

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
