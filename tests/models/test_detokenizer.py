"""SeedDetokenizer, the interface: decode's checks and defaults (on a stand-in back end), load's
dispatch errors, lazy imports, and the names that moved to the back ends' modules.

The back ends are tested in test_unclip_detokenizer.py and test_pixel_detokenizer.py."""
from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest
import torch

import seedfast.models
from seedfast.models import detokenizer
from seedfast.models.detokenizer import SeedDetokenizer


class _Recorder(SeedDetokenizer):
    """A back end that records what decode hands it and returns grey images."""

    def __init__(self) -> None:
        self.embed_dim, self.image_size, self.device = 4, 2, torch.device("cpu")
        self.default_steps, self.default_guidance_scale = 7, 3.0
        self.calls: list[tuple] = []

    def _sample(self, embeddings, negative_embeddings, generators, steps, guidance_scale):
        self.calls.append((embeddings, negative_embeddings, generators, steps, guidance_scale))
        return torch.full((embeddings.shape[0], 3, 2, 2), 0.5)


def test_decode_hands_checked_arguments_and_defaults_to_the_back_end():
    back_end = _Recorder()
    embeddings = torch.randn(3, 4)
    assert back_end.decode(embeddings).shape == (3, 3, 2, 2)
    got, negative, generators, steps, guidance = back_end.calls[-1]
    assert got is embeddings and negative is None and (steps, guidance) == (7, 3.0)
    assert len(generators) == 1 and generators[0].initial_seed() == 0
    back_end.decode(embeddings, seed=[1, 2, 3], steps=2, guidance_scale=1, negative_embeddings=None)
    _, _, generators, steps, guidance = back_end.calls[-1]
    assert [g.initial_seed() for g in generators] == [1, 2, 3] and (steps, guidance) == (2, 1.0)
    assert isinstance(guidance, float)


def test_decode_rejects_bad_arguments_before_the_back_end():
    back_end = _Recorder()
    with pytest.raises(ValueError, match=r"shape \[B, 4\]"):
        back_end.decode(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="negative_embeddings are only used"):
        back_end.decode(torch.zeros(1, 4), guidance_scale=1.0, negative_embeddings=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="steps"):
        back_end.decode(torch.zeros(1, 4), steps=True)
    with pytest.raises(ValueError, match=r"seed must be in"):
        back_end.decode(torch.zeros(1, 4), seed=2**64)
    assert back_end.calls == []


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        SeedDetokenizer.load(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds neither"):
        SeedDetokenizer.load(tmp_path)


def test_import_is_lazy():
    """Importing the de-tokenizer modules must not import diffusers or transformers."""
    code = (
        "import sys, seedfast.models.detokenizer, seedfast.models.unclip_detokenizer, "
        "seedfast.models.pixel_detokenizer; "
        "assert 'diffusers' not in sys.modules and 'transformers' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'transformers'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


MOVED = {
    "UnclipDetokenizer": "seedfast.models.unclip_detokenizer",
    "UNCLIP_STEPS": "seedfast.models.unclip_detokenizer",
    "UNCLIP_GUIDANCE_SCALE": "seedfast.models.unclip_detokenizer",
    "UNCLIP_NOISE_LEVEL": "seedfast.models.unclip_detokenizer",
    "PixelDetokenizer": "seedfast.models.pixel_detokenizer",
    "PixelDetokenizerConfig": "seedfast.models.pixel_detokenizer",
    "PIXEL_FORMAT": "seedfast.models.pixel_detokenizer",
    "PIXEL_FORMAT_VERSION": "seedfast.models.pixel_detokenizer",
    "PIXEL_CONFIG_FILE": "seedfast.models.pixel_detokenizer",
    "PIXEL_WEIGHTS_FILE": "seedfast.models.pixel_detokenizer",
}


@pytest.mark.parametrize("name", sorted(MOVED))
def test_moved_names_warn_and_return_the_same_objects(name):
    new = getattr(importlib.import_module(MOVED[name]), name)
    with pytest.warns(DeprecationWarning, match=rf"models\.detokenizer\.{name} moved to {MOVED[name]}\.{name}"):
        assert getattr(detokenizer, name) is new
    namespace: dict[str, object] = {}
    with pytest.warns(DeprecationWarning):
        exec(f"from seedfast.models.detokenizer import {name} as old", namespace)
    assert namespace["old"] is new


@pytest.mark.parametrize("name", ["SeedDetokenizer", "UnclipDetokenizer", "PixelDetokenizer", "PixelDetokenizerConfig"])
def test_the_package_exports_the_new_homes_without_warning(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        exported = getattr(seedfast.models, name)
    assert exported.__module__ == MOVED.get(name, "seedfast.models.detokenizer")


def test_unknown_names_are_still_attribute_errors():
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        detokenizer.Nothing  # noqa: B018
