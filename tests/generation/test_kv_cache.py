"""The KV cache's old import path: it moved to seedfast.models.kv_cache and still works, with a warning."""
from __future__ import annotations

import pytest

from seedfast.models import kv_cache


@pytest.mark.parametrize("name", ["KVCache", "cache_bytes_per_token"])
def test_old_generation_path_warns_and_gives_the_models_object(name):
    import seedfast.generation.kv_cache as old

    with pytest.warns(DeprecationWarning, match=rf"seedfast\.generation\.kv_cache\.{name} moved to "
                                                rf"seedfast\.models\.kv_cache\.{name}"):
        assert getattr(old, name) is getattr(kv_cache, name)


def test_generation_reexports_the_cache_without_a_warning(recwarn):
    from seedfast.generation import KVCache

    assert KVCache is kv_cache.KVCache
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]
