"""SeedPipeline: local folders in, the four SEED operations out, official preprocessing and prompt ids."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from seedfast.models.detokenizer import SeedDetokenizer
from seedfast.models.llama import LlamaConfig
from seedfast.models.preprocess import clip_preprocess
from seedfast.models.seed_llama import VICUNA
from seedfast.pipeline import SamplingParams, SeedPipeline, image_pixels
from tests.generation.tiny import one_thread, random_hf_llama  # noqa: F401 (one_thread: fixture)
from tests.models.seed_llama_helpers import official_tokenizer_folder
from tests.models.tokenizer_helpers import tiny as tiny_tokenizer


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("released")
    tokenizer = tiny_tokenizer(seed=3)
    tokenizer.save(root / "tokenizer")
    added = official_tokenizer_folder(root / "llm", num_codes=tokenizer.config.codebook_size)
    config = dataclasses.replace(LlamaConfig.tiny(), vocab_size=max(added.values()) + 1)
    random_hf_llama(config, seed=5).save_pretrained(root / "llm")
    (root / "llm" / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 20, "max_new_tokens": 16}))
    SeedDetokenizer.tiny(tokenizer.config.generation_embed_dim, seed=1).save(root / "detokenizer")
    return root


@pytest.fixture(scope="module")
def pipe(folders):
    return SeedPipeline.from_pretrained(folders / "tokenizer", folders / "llm", folders / "detokenizer",
                                        template="8b")


def test_generation_config_gives_the_defaults(folders, pipe, tmp_path):
    assert pipe.sampling == SamplingParams(max_new_tokens=16, temperature=0.7, top_k=20, top_p=0.9)
    assert pipe.sampling.replace(temperature=0, top_k=None).temperature == 0
    assert SamplingParams.from_generation_config(tmp_path) == SamplingParams()
    (tmp_path / "generation_config.json").write_text('{"do_sample": false, "top_p": "x"}')
    with pytest.raises(ValueError, match="generation_config.json: top_p must be a number"):
        SamplingParams.from_generation_config(tmp_path)
    assert pipe.template is VICUNA


def test_images_are_normalised_once_in_every_form(pipe):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8, generator=g)
    codes = pipe.tokenize(u8)
    assert codes.shape == (2, 32)
    assert torch.equal(codes, pipe.tokenizer.encode(clip_preprocess(u8, size=pipe.tokenizer.config.image_size)))
    assert torch.equal(pipe.tokenize(u8.float() / 255), codes)
    pil = [Image.fromarray(u8[i].permute(1, 2, 0).numpy()) for i in range(2)]
    assert torch.equal(pipe.tokenize(pil), codes)
    assert torch.equal(pipe.tokenize(u8[0]), codes[:1])
    normalised = clip_preprocess(u8)
    with pytest.raises(ValueError, match=r"float images must be raw pixels in \[0, 1\], got values in"):
        pipe.tokenize(normalised)
    with pytest.raises(ValueError, match="float images must be raw pixels"):
        image_pixels(u8.float())  # 0-255 floats
    with pytest.raises(TypeError, match="must be PIL images or a tensor"):
        image_pixels("x.png")


def test_text_to_image_caption_chat(pipe):
    codes, images = pipe.text_to_image(["Draw a dog", "a sunset"], seed=[1, 2])
    assert codes.shape == (2, 32) and images.shape[:2] == (2, 3)
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    alone, _ = pipe.text_to_image("a sunset", seed=2)
    assert torch.equal(alone[0], codes[1])  # batch invariance: own seed, stream 0
    # Same noise per row seed; the batch of 2 vs 1 changes only float rounding in the de-tokenizer.
    torch.testing.assert_close(pipe.detokenize(codes[1:], seed=2), images[1:], atol=1e-4, rtol=0)
    captions = pipe.caption(codes, "What is this?", seed=0, temperature=0)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    assert pipe.caption(codes[:1], "What is this?", temperature=0) == captions[:1]
    cut = pipe.answer(codes[:1], "What is this?", temperature=0, max_new_tokens=2)[0]
    assert cut.finish_reason in ("length", "eos") and all(isinstance(t, str) for t in cut.text_segments)
    assert pipe.caption(codes[:1], "What is this?", temperature=0, max_new_tokens=2) == [cut.text_segments[0].strip()]
    out = pipe.chat(["<image>What is this?", "A dog.", "Draw it blue"], [codes[0]], temperature=0)
    assert all(isinstance(s, str) for s in out.text_segments)
    assert out.prompt_ids == pipe.text_tokenizer.encode(
        VICUNA.render(["<image>What is this?", "A dog.", "Draw it blue"]), [codes[0].tolist()])


def test_missing_parts_are_named(folders):
    with pytest.raises(FileNotFoundError, match="llm: .*nope does not exist"):
        SeedPipeline.from_pretrained(folders / "tokenizer", folders / "nope")
    only = SeedPipeline.from_pretrained(folders / "tokenizer")
    with pytest.raises(ValueError, match="no de-tokenizer"):
        only.detokenize([[0] * 32])
    with pytest.raises(ValueError, match="no LLM and text tokenizer"):
        only.caption(torch.zeros(1, 32, dtype=torch.int64))
    no_template = SeedPipeline.from_pretrained(folders / "tokenizer", folders / "llm")
    assert no_template.template is None  # a tiny LLM: neither 8B nor 14B wide
    with pytest.raises(ValueError, match="pass template='8b' or '14b'"):
        no_template.caption(torch.zeros(1, 32, dtype=torch.int64))


def test_complete_splices_images_and_decodes_drawn_ones(pipe):
    from seedfast.pipeline import ImageDetokenizer, Reply, TextTokenizer

    assert isinstance(pipe.text_tokenizer, TextTokenizer) and isinstance(pipe.detokenizer, ImageDetokenizer)
    g = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (3, 30, 30), dtype=torch.uint8, generator=g)
    codes = pipe.tokenize(pixels)[0]
    question = pipe.render("<image>What is this?")
    sampling = [SamplingParams.greedy(3), SamplingParams.greedy(3), SamplingParams(max_new_tokens=33)]
    replies = pipe.complete([question, question, pipe.render("Draw a cat") + "<img>"],
                            [[pixels], [codes.tolist()], []], seed=[4, 4, 5], sampling=sampling)
    expected = pipe.text_tokenizer.encode(question, [codes.tolist()])
    assert replies[0].prompt_ids == replies[1].prompt_ids == expected  # pixels and codes give one prompt
    assert replies[0].token_ids == replies[1].token_ids
    assert pipe.answer(codes[None], "What is this?", seed=4, max_new_tokens=3, temperature=0)[0].prompt_ids == expected
    drawn = replies[2]
    assert isinstance(drawn, Reply) and drawn.image_codes.shape == (1, 32)
    assert drawn.images.shape[:2] == (1, 3) and drawn.text == "<image>".join(drawn.text_segments)
    torch.testing.assert_close(drawn.images, pipe.detokenize(drawn.image_codes, seed=5), atol=1e-4, rtol=0)
    assert replies[0].images is None
    with pytest.raises(ValueError, match="1 <image> placeholder"):
        pipe.complete([question], [[]])
    with pytest.raises(ValueError, match=r"images\[0\]\[0\] must be one image, got 2"):
        pipe.complete([question], [[torch.stack([codes, codes])]])
    with pytest.raises(ValueError, match="images must hold one list per prompt"):
        pipe.complete([question], [])
    with pytest.raises(ValueError, match="seed must be one int or 1"):
        pipe.complete([question], [[codes]], seed=[1, 2])


def test_text_to_image_without_a_detokenizer_gives_codes(folders):
    bare = SeedPipeline.from_pretrained(folders / "tokenizer", folders / "llm", template="14b")
    codes, images = bare.text_to_image(["a dog"], seed=3)
    assert codes.shape == (1, 32) and images is None
    assert bare.template.name == "llama2"
