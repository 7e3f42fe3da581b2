"""CUDA-graph decode runner and batched generation, ids in and ids out (the KV cache lives with the
model, in :mod:`seedfast.models.kv_cache`, and is re-exported here)."""
from seedfast.generation.cuda_graphs import DecodeRunner, decode_runner, drop_runner
from seedfast.generation.generate import GenerationOutput, generate
from seedfast.generation.sampling import SamplingParams
from seedfast.models.kv_cache import KVCache

__all__ = [
    "DecodeRunner",
    "GenerationOutput",
    "KVCache",
    "SamplingParams",
    "decode_runner",
    "drop_runner",
    "generate",
]
