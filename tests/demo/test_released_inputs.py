"""The released-models commands' inputs: the models manifest and the prompts file, each fault one clear line."""
from __future__ import annotations

import json

import pytest

from seedfast.demo.commands import CommandError
from seedfast.demo.released import MODELS_MANIFEST, check_seed, read_manifest, read_requests


def test_manifest_paths_resolve_against_its_folder(tmp_path):
    (tmp_path / MODELS_MANIFEST).write_text(json.dumps({"tokenizer": "tok", "llm": "/abs/llm", "template": "14b"}))
    assert read_manifest(tmp_path) == {"tokenizer": str(tmp_path / "tok"), "llm": "/abs/llm", "template": "14b"}


@pytest.mark.parametrize("content, needle", [
    (None, "no seedfast-models.json"),
    ("{", "not valid JSON"),
    ("[]", "expected a JSON object"),
    ('{"tokeniser": "x"}', "unknown key(s) tokeniser"),
    ('{"llm": 3}', "llm must be a string"),
])
def test_bad_manifests(tmp_path, content, needle):
    if content is not None:
        (tmp_path / MODELS_MANIFEST).write_text(content)
    with pytest.raises(CommandError) as info:
        read_manifest(tmp_path)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_requests_get_seeds_and_image_paths(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b", "image": "x.png", "seed": 9, "top_p": 0.9}\n{"prompt": "c"}\n')
    a, b, c = read_requests(path, default_seed=100)
    assert (a.index, a.seed, a.image) == (0, 100, None)
    assert (b.index, b.seed, b.image, b.sampling) == (1, 9, str(tmp_path / "x.png"), {"top_p": 0.9})
    assert (c.index, c.seed) == (2, 102)


@pytest.mark.parametrize("line, needle", [
    ("not json", "p.jsonl:1: not JSON"),
    ('{"text": "a"}', 'expected an object with a "prompt" string'),
    ('{"prompt": "a", "colour": 1}', "unknown key(s) colour"),
    ('{"prompt": "a", "seed": 18446744073709551616}', "seed must be an integer in [0, 2**63)"),
    ('{"prompt": "a", "seed": -1}', "seed must be an integer in [0, 2**63)"),
    ('{"prompt": "a", "top_k": "x"}', "top_k must be a number"),
    ('{"prompt": "a", "image": 3}', "image must be a file path string"),
])
def test_bad_requests_name_the_line(tmp_path, line, needle):
    path = tmp_path / "p.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(CommandError) as info:
        read_requests(path)
    assert needle in str(info.value)
    with pytest.raises(CommandError, match="no requests in it"):
        (tmp_path / "empty.jsonl").write_text("\n")
        read_requests(tmp_path / "empty.jsonl")
    with pytest.raises(CommandError, match="no such file"):
        read_requests(tmp_path / "missing.jsonl")


def test_check_seed():
    assert check_seed(2**63 - 1, "--seed") == 2**63 - 1
    for bad in (2**63, -1, True, 1.0):
        with pytest.raises(CommandError, match=r"--seed must be an integer in \[0, 2\*\*63\)"):
            check_seed(bad, "--seed")
