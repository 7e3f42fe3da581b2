"""CUDA C++ sources, JIT-built on first use by seedfast.ops._cuda_ext (shipped as package data)."""
