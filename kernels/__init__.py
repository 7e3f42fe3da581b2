"""Triton kernels of seedfast, one module per op (installed as ``seedfast.kernels``).

Nothing is imported here on purpose: transformers probes any importable module named
``kernels`` for a ``__version__``, and this package must stay cheap and free of side effects.
The public entry points are the ops in :mod:`seedfast.ops`.
"""
