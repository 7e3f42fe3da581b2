"""SEED-LLaMA prompt ids equal the official scripts' (transformers 4.30.2 semantics), whatever transformers
is installed (checked with 5.25 and with 4.45.2, the minimum pyproject.toml declares).

The stand-in vocabulary is built the official way (tests/models/seed_llama_helpers.py): a
sentencepiece LLaMA-style model plus ``<img_%05d>`` × 8192, ``<img>``, ``</img>`` added tokens.
"""
from __future__ import annotations

import sys

import pytest

from seedfast.models.seed_llama import LLAMA2_CHAT, VICUNA, code_token
from seedfast.models.seed_llama_tokenizer import (
    SeedLlamaTokenizer,
    split_at_added_tokens,
    visual_vocab_from_tokenizer,
)
from tests.models.seed_llama_helpers import official_tokenizer_folder, reference_ids

CODES = [[(7 * k + 3 * i) % 8192 for k in range(32)] for i in range(3)]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seed_tokenizer")
    added = official_tokenizer_folder(folder)
    from transformers import AutoTokenizer

    vocab = visual_vocab_from_tokenizer(AutoTokenizer.from_pretrained(str(folder)))
    return folder, added, SeedLlamaTokenizer.from_pretrained(folder, vocab)


def official_string(text: str, codes) -> str:
    """What the official scripts tokenize: the bos string, each image as its code strings."""
    blocks = ["<img>" + "".join(code_token(c) for c in row) + "</img>" for row in codes]
    pieces = text.split("<image>")
    return "<s>" + "".join(p + b for p, b in zip(pieces, [*blocks, ""]))


# (template, turns, number of images, forced <img> at the end)
CASES = {
    "vqa": ("<image>What is in this image?", 1, False),
    "caption": ("<image>Describe the picture in detail.", 1, False),
    "text-to-image": ("Please generate an image of a sunset over the sea.", 0, False),
    "text-to-image-forced": ("Please generate an image of a sunset over the sea.", 0, True),
    "text-around-image": ("Can you make it blue? <image> Sure, here it is.", 1, False),
    "two-images": ("<image> and <image>: what differs?", 2, False),
    "multi-turn": (["<image>What is in this image?", "A cat sitting on a red mat.", "Draw a dog"], 1, False),
    "multi-turn-image-answer": (["Draw a dog", "<image>", "Can you make it blue?"], 1, True),
}


@pytest.mark.parametrize("template", [VICUNA, LLAMA2_CHAT], ids=["8b", "14b"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_prompt_ids_equal_the_official_algorithm(released, template, case):
    folder, added, tok = released
    turns, n_images, forced = CASES[case]
    text = template.render(turns) + ("<img>" if forced else "")
    codes = CODES[:n_images]
    ours = tok.encode(text, codes)
    assert ours == reference_ids(official_string(text, codes), folder / "tokenizer.model", added)
    assert ours[0] == 1 and ours.count(tok.vocab.boi_id) == n_images + forced
    if forced:
        assert ours[-1] == tok.vocab.boi_id


def test_the_three_ids_that_whole_string_tokenization_gets_wrong(released):
    """No ``▁`` before ``<img>``, ``▁USER`` after ``<s>``, ``▁What`` after ``</img>`` (issue 14)."""
    folder, _, tok = released
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    ids = tok.encode(VICUNA.render("<image>What is in this image?"), CODES[:1])
    boi, eoi = ids.index(tok.vocab.boi_id), ids.index(tok.vocab.eoi_id)
    assert ids[1:boi] == sp.encode("USER:") and sp.id_to_piece(ids[1]) == "▁USER"
    assert ids[eoi + 1:] == sp.encode("What is in this image?\nASSISTANT:")
    assert sp.id_to_piece(ids[eoi + 1]) == "▁What"
    assert sp.piece_to_id("▁") not in ids[boi - 1:boi]


def test_split_strips_only_next_to_visual_tokens(released):
    _, _, tok = released
    v = tok.vocab
    parts = split_at_added_tokens("<s> a <img><img_00002></img>\n b </s> c <img_99999> ", ["<s>", "</s>"], v)
    assert parts == [("<s>", -1), (" a", None), ("<img>", v.boi_id), ("<img_00002>", v.first_code_id + 2),
                     ("</img>", v.eoi_id), ("b ", None), ("</s>", -1), (" c <img_99999> ", None)]


@pytest.mark.parametrize("module", ["sentencepiece", "google.protobuf"])
def test_missing_sentencepiece_or_protobuf_names_the_extra(released, monkeypatch, module):
    folder, _, _ = released
    monkeypatch.setitem(sys.modules, module, None)
    name = module.split(".")[-1]
    expected = rf"needs the {name} package; install it with pip install 'seedfast\[seed-llama\]'"
    with pytest.raises(ImportError, match=expected):
        SeedLlamaTokenizer.from_pretrained(folder)
