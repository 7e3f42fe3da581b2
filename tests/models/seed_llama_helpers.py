"""Stand-ins for the released SEED-LLaMA text tokenizer, built the official way, and the official id algorithm.

The released tokenizer is LLaMA's sentencepiece model plus ``<img_00000>`` … ``<img_08191>``,
``<img>``, ``</img>`` added with ``add_tokens`` (so ``<img>`` = text size + 8192). Here the
sentencepiece model is a tiny BPE one trained on a few sentences with LLaMA's settings
(identity normalisation, extra whitespace kept, digits split, dummy prefix), and the folder has
the slow-tokenizer-era files the official checkpoints ship (``tokenizer.model``,
``added_tokens.json``, ``special_tokens_map.json``, ``tokenizer_config.json``).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

SENTENCES = [
    "USER: What is in this image?", "ASSISTANT: A cat sitting on a red mat.", "[INST] Draw a dog [/INST]",
    "Please generate an image of a sunset over the sea.", "Describe the picture in detail.",
    "The quick brown fox jumps over the lazy dog 12345.", "Can you make it blue? Sure, here it is.",
]


def train_sentencepiece(path: Path, vocab_size: int = 200) -> Path:
    """A tiny LLaMA-style sentencepiece BPE model at ``path`` (unk 0, bos 1, eos 2, no pad).

    A ``vocab_size`` beyond what the sentences support (LLaMA's 32000) is filled with unreachable
    normal pieces (private-use characters that never occur in text, lowest score), so the added
    tokens land where the released ones do.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 10), model_writer=out, vocab_size=min(vocab_size, 200), model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity", remove_extra_whitespaces=False,
        split_digits=True, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(out.getvalue())
    lowest = min(p.score for p in model.pieces)
    for i in range(vocab_size - len(model.pieces)):
        piece = model.pieces.add()
        piece.piece, piece.score = f"\ue000{i}", lowest - 1 - i
    path.write_bytes(model.SerializeToString())
    return path


def official_tokenizer_folder(folder: Path, num_codes: int = 8192, vocab_size: int = 200) -> dict[str, int]:
    """Write a SEED-LLaMA-format tokenizer folder; returns its added tokens (string → id)."""
    folder.mkdir(parents=True, exist_ok=True)
    train_sentencepiece(folder / "tokenizer.model", vocab_size)
    import sentencepiece as spm

    n = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).get_piece_size()
    added = {f"<img_{k:05d}>": n + k for k in range(num_codes)}
    added.update({"<img>": n + num_codes, "</img>": n + num_codes + 1})
    (folder / "added_tokens.json").write_text(json.dumps(added))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
         "model_max_length": 2048, **specials}))
    return added


def reference_ids(text: str, sp_file: Path, added: dict[str, int]) -> list[int]:
    """Ids of ``text`` as transformers 4.30.2's slow ``LlamaTokenizer`` gives them (``add_special_tokens=False``).

    Written from that version's ``PreTrainedTokenizer.tokenize``: split at the no-split tokens
    (leftmost, longest first, as its trie); tokens added as plain strings strip the whitespace on
    both sides, the bos/eos/unk ``AddedToken`` s strip nothing; empty pieces are dropped; each
    text piece goes through ``sp_model.encode(piece, out_type=str)`` and ``piece_to_id``.
    """
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_file))
    specials = {"<s>": sp.bos_id(), "</s>": sp.eos_id(), "<unk>": sp.unk_id()}
    no_split = sorted([*added, *specials], key=len, reverse=True)
    tokens: list[str] = []
    buffer, i = "", 0
    while i < len(text):
        match = next((t for t in no_split if text.startswith(t, i)), None)
        if match is None:
            buffer += text[i]
            i += 1
            continue
        if buffer:
            tokens.append(buffer)
            buffer = ""
        tokens.append(match)
        i += len(match)
    if buffer:
        tokens.append(buffer)
    for i, token in enumerate(tokens):
        if token in added:
            if i + 1 < len(tokens):
                tokens[i + 1] = tokens[i + 1].lstrip()
            if i > 0:
                tokens[i - 1] = tokens[i - 1].rstrip()
    ids: list[int] = []
    for token in tokens:
        if not token:
            continue
        if token in added:
            ids.append(added[token])
        elif token in specials:
            ids.append(specials[token])
        else:
            ids.extend(sp.piece_to_id(p) for p in sp.encode(token, out_type=str))
    return ids
