"""Static KV cache, CUDA-graph decode runner and batched multimodal generation."""
