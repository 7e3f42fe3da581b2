"""seedfast.nn and seedfast.integrations as users meet them: cheap imports, lazy attributes,
and numpy-style docstrings on every public name."""
from __future__ import annotations

import inspect
import pydoc
import subprocess
import sys

import pytest

import seedfast
import seedfast.integrations
import seedfast.nn


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_imports_are_cheap():
    heavy = "('triton', 'transformers', 'vector_quantize_pytorch', 'seedfast.kernels')"
    assert _python(f"import sys, seedfast.nn; print([m for m in {heavy} if m in sys.modules])") == "[]"
    assert _python(f"import sys, seedfast.integrations; print([m for m in {heavy} if m in sys.modules])") == "[]"


def test_seedfast_exposes_nn_lazily():
    assert _python("import seedfast; print(seedfast.nn.VectorQuantizer.__name__)") == "VectorQuantizer"
    assert seedfast.nn.VectorQuantizer is seedfast.nn.vq.VectorQuantizer


def test_integrations_load_on_first_use():
    assert seedfast.integrations.from_taming.__module__ == "seedfast.integrations.quantizers"
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        seedfast.integrations.nope  # noqa: B018
    assert set(seedfast.integrations.__all__) <= set(dir(seedfast.integrations))


def test_help_reads_well():
    text = pydoc.render_doc(seedfast.nn.VectorQuantizer, renderer=pydoc.plaintext)
    for words in ("Uniform(−1/K, 1/K)", "Parameters", "num_codes : int", "Raises", "track_usage",
                  "restart_unused_after", "forward(self, z", "code_frequencies", "perplexity"):
        assert words in text, words


# Records (named tuples, dataclasses) document Attributes instead; a warning class, itself.
RECORDS = {"VectorQuantizerOutput", "VisualVocab", "MaskPattern", "QFormerAttentionPatch"}
WARNINGS = {"QFormerPatchWarning"}


@pytest.mark.parametrize("module", [seedfast.nn, seedfast.integrations], ids=lambda m: m.__name__)
def test_every_public_name_has_a_numpy_docstring(module):
    for name in module.__all__:
        obj = getattr(module, name)
        doc = inspect.getdoc(obj) or ""
        assert doc, f"{name} has no docstring"
        if name in WARNINGS:
            assert issubclass(obj, Warning)
        elif name in RECORDS:
            assert "Attributes\n----------" in doc, f"{name}: no Attributes section"
        else:
            assert "Parameters\n----------" in doc, f"{name}: no Parameters section"
            assert "Raises\n------" in doc, f"{name}: no Raises section"
        if inspect.isclass(obj):
            for member_name, member in vars(obj).items():
                public = not member_name.startswith("_") or member_name == "__call__"
                if public and (inspect.isfunction(member) or isinstance(member, property)):
                    assert inspect.getdoc(member), f"{name}.{member_name} has no docstring"
