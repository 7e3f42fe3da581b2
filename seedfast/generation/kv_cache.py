"""Old home of the KV cache, which now lives with the model in :mod:`seedfast.models.kv_cache`.

Importing ``KVCache`` or ``cache_bytes_per_token`` from here still works for one release, with a
``DeprecationWarning``.
"""
from __future__ import annotations

from seedfast._lazy import moved_names

__getattr__ = moved_names(__name__, {"KVCache": "seedfast.models.kv_cache",
                                     "cache_bytes_per_token": "seedfast.models.kv_cache"})
