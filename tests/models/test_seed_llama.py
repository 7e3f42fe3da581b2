"""SEED-LLaMA prompts: templates, the text tokenizer with visual tokens, image blocks as ids."""
from __future__ import annotations

import pytest
import torch

from seedfast.generation.generate import generate
from seedfast.generation.sampling import SamplingParams
from seedfast.models.seed_llama import (
    LLAMA2_CHAT,
    VICUNA,
    code_token,
    get_template,
    image_block,
    open_image_codes,
    open_image_position,
    split_generated,
    tiny_visual_vocab,
)
from seedfast.models.seed_llama_tokenizer import (
    SeedLlamaTokenizer,
    load_seed_llama,
    visual_vocab_from_tokenizer,
)
from seedfast.visual_vocab import VisualVocab
from tests.generation.tiny import one_thread, tiny_pair  # noqa: F401 (one_thread: fixture)

VOCAB = tiny_visual_vocab()


def hf_tokenizer(codes_first: bool = True):
    """A 256-id LLaMA tokenizer (transformers' tokenizers backend) plus 64 codes, <img> and </img>."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for piece in ["▁", *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:?.,!\n[]/ "]:
        vocab.setdefault(piece, len(vocab))
    for word in ["▁a", "ca", "cat", "▁cat", "at", "▁USER", "USER", "ASSISTANT", "INST"]:
        vocab[word] = len(vocab)
    while len(vocab) < 256:
        vocab[f"tok{len(vocab)}"] = len(vocab)
    tok = LlamaTokenizer(vocab=vocab, merges=[("c", "a"), ("ca", "t"), ("a", "t"), ("▁", "cat"), ("▁", "a")])
    markers = ["<img>", "</img>"]
    codes = [code_token(k) for k in range(64)]
    tok.add_tokens(codes + markers if codes_first else markers + codes, special_tokens=True)
    return tok


def test_templates_render_the_official_strings():
    assert VICUNA.render("<image>What is this?") == "USER: <image>What is this?\nASSISTANT:"
    assert LLAMA2_CHAT.render("<image>What is this?") == "[INST] <image>What is this? [/INST]\n"
    assert VICUNA.render(["q1", "a1", "q2"]) == "USER: q1\nASSISTANT: a1\nUSER: q2\nASSISTANT:"
    assert LLAMA2_CHAT.render(["q1", "a1", "q2"]) == "[INST] q1 [/INST]\na1\n[INST] q2 [/INST]\n"
    assert get_template("vicuna") is VICUNA and get_template(None) is None
    with pytest.raises(ValueError, match="odd count"):
        VICUNA.render(["q1", "a1"])


def test_tokenizer_layout_is_checked_and_can_be_read():
    tok = hf_tokenizer()
    assert visual_vocab_from_tokenizer(tok, num_codes=64) == VOCAB
    SeedLlamaTokenizer(tok, VOCAB)
    with pytest.raises(ValueError, match="maps <img> to id 320 but the visual vocab layout says 40192"):
        SeedLlamaTokenizer(tok)  # the SEED-LLaMA layout does not fit this tokenizer
    swapped = hf_tokenizer(codes_first=False)
    layout = visual_vocab_from_tokenizer(swapped, num_codes=64)
    assert (layout.boi_id, layout.eoi_id, layout.first_code_id, layout.text_vocab_size) == (256, 257, 258, 256)
    with pytest.raises(ValueError, match="maps <img> to id 256 but the visual vocab layout says 320"):
        SeedLlamaTokenizer(swapped, VOCAB)
    with pytest.raises(ValueError, match="eos id is 2 but the visual vocab layout says 5"):
        SeedLlamaTokenizer(tok, VisualVocab(256, 256, 64, 320, 321, eos_id=5))
    with pytest.raises(ValueError, match=r"no <img_00000> token|code ids are not consecutive"):
        visual_vocab_from_tokenizer(tok, num_codes=65)


def test_encode_equals_tokenizing_the_official_code_strings(tmp_path):
    tok = hf_tokenizer()
    tok.save_pretrained(tmp_path)
    wrapper = SeedLlamaTokenizer.from_pretrained(tmp_path, VOCAB)
    codes = [[(3 * k + i) % 64 for k in range(32)] for i in range(2)]
    text = VICUNA.render("<image>a cat <image>at")
    ours = wrapper.encode(text, codes)
    # The official algorithm (transformers 4.30.2): split at the added tokens, strip the spaces next to
    # the visual ones, encode each text piece on its own (this tokenizer has no sentencepiece model).
    def piece(t):
        return tok(t, add_special_tokens=False)["input_ids"]

    official = [1, *piece("USER:"), *image_block(codes[0], VOCAB), *piece("a cat"), *image_block(codes[1], VOCAB),
                *piece("at\nASSISTANT:")]
    assert ours == official
    assert ours[0] == 1 and ours.count(VOCAB.boi_id) == 2
    assert wrapper.decode(ours) == "USER: a cat at\nASSISTANT:"
    with pytest.raises(ValueError, match="1 <image> placeholder"):
        wrapper.encode("<image>", [])


def test_load_seed_llama_directories(tmp_path):
    model, hf = tiny_pair(seed=32)
    hf.save_pretrained(tmp_path / "model")
    hf_tokenizer().save_pretrained(tmp_path / "tokenizer")
    loaded, tok = load_seed_llama(tmp_path / "model", tmp_path / "tokenizer", vocab=VOCAB)
    assert isinstance(tok, SeedLlamaTokenizer) and len(tok) == 322
    prompt = tok.encode(LLAMA2_CHAT.render("a cat"))
    assert prompt == [1, *tok.encode_piece("[INST] a cat [/INST]\n")]
    out = generate(loaded, [prompt], SamplingParams.greedy(4), vocab=tok.vocab)
    assert out[0].token_ids == generate(model, [prompt], SamplingParams.greedy(4), vocab=VOCAB)[0].token_ids
    assert load_seed_llama(tmp_path / "model")[1] is None
    bigger = hf_tokenizer()
    bigger.add_tokens(["<extra>"])
    bigger.save_pretrained(tmp_path / "bigger")
    with pytest.raises(ValueError, match="tokenizer has 323 ids but the model only 322"):
        load_seed_llama(tmp_path / "model", tmp_path / "bigger", vocab=VOCAB)


def test_image_blocks_and_open_images():
    codes = list(range(32))
    block = image_block(codes, VOCAB)
    assert block == [320, *range(256, 288), 321]
    assert image_block(torch.tensor(codes), VOCAB) == block
    with pytest.raises(ValueError, match="must be 32 codes in"):
        image_block(codes[:31], VOCAB)
    with pytest.raises(ValueError, match="must be 32 codes in"):
        image_block([64] * 32, VOCAB)
    assert open_image_position([1, 5], VOCAB) == -1
    assert open_image_position([1, *block], VOCAB) == -1
    assert open_image_position([1, *block[:5]], VOCAB) == 4
    assert open_image_position([1, *block[:33]], VOCAB) == 32
    for bad in ([1, 320, 5], [1, *block[:33], 256], [1, 320, 321]):
        with pytest.raises(ValueError, match="breaks the image grammar"):
            open_image_position(bad, VOCAB)
        with pytest.raises(ValueError, match="breaks the image grammar"):
            open_image_codes(bad, VOCAB)
    assert open_image_position([], VOCAB) == -1
    assert open_image_position([5, 321, 260, 2], VOCAB) == -1  # stray </img> and codes in text are text
    assert open_image_codes([1, *block], VOCAB) is None
    assert open_image_codes([1, *block[:5]], VOCAB) == codes[:4]
    assert open_image_codes([1, 320], VOCAB) == []


def test_open_image_position_agrees_with_the_sampler_state():
    """One grammar state: the prompt check reads nn.image_positions' state, so on any prompt that
    keeps the grammar both say the same."""
    from seedfast.nn import image_positions

    block = image_block(list(range(32)), VOCAB)
    for prompt in ([1, 5], [1, *block], [1, *block, 9, *block[:7]], [1, *block[:33]], [320]):
        assert open_image_position(prompt, VOCAB) == image_positions(torch.tensor([prompt]), VOCAB).item()


def test_split_generated():
    a, b = list(range(32)), list(range(32, 64))
    ids = [7, 8, *image_block(a, VOCAB), 9, *image_block(b, VOCAB), 2]
    parts = split_generated(ids, VOCAB)
    assert parts.text_ids == [[7, 8], [9], []] and parts.image_codes == [a, b]
    # The prompt left an image open after 5 codes; generation finishes it.
    parts = split_generated([*(256 + c for c in a[5:]), 321, 4], VOCAB, open_codes=a[:5])
    assert parts.image_codes == [a] and parts.text_ids == [[], [4]]
    # An image cut short (a sampler-error row) is dropped; eos inside text is kept.
    parts = split_generated([5, 2, 6, 320, 256, 257, 2], VOCAB)
    assert parts.image_codes == [] and parts.text_ids == [[5, 2, 6]]


def test_tokenizer_names_moved_from_seed_llama_warn_and_work():
    import seedfast.models.seed_llama as old
    import seedfast.models.seed_llama_tokenizer as new

    for name in ("SeedLlamaTokenizer", "load_seed_llama", "visual_vocab_from_tokenizer", "official_prompt_ids"):
        with pytest.warns(DeprecationWarning, match=f"seed_llama.{name} moved to seedfast.models.seed_llama_tokenizer"):
            assert getattr(old, name) is getattr(new, name)
