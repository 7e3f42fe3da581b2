"""The stages: objectives equal the tokenizer's losses from images, each stage's loss falls,
sequences, LoRA merging, stage-2 targets."""
import numpy as np
import pytest
import torch

from seedfast.data import reading_order_caption
from seedfast.models.llama import Llama, LlamaConfig
from seedfast.models.seed_llama import tiny_visual_vocab
from seedfast.train import distributed as D
from seedfast.train.config import ConfigError
from seedfast.train.inputs import InputBuilder
from seedfast.train.loop import train
from seedfast.train.run import build_run
from seedfast.train.stages import build_llm, merge_lora
from seedfast.train.targets import StandInTarget, build_target
from seedfast.train.text import WordTokenizer, clean_caption, interleave, stage1_text
from seedfast.train.tokenizer_losses import stage_losses

from .helpers import max_diff, steps_of, tiny, weights


@pytest.mark.parametrize("stage", [1, 2])
def test_objective_equals_stage_losses_from_images(stage):
    """The loop's loss path (from ViT output) is :func:`stage_losses` on the same images."""
    run = build_run(tiny(stage), D.setup("cpu"))
    mb = run.build_inputs(run.read(0)[0])
    model = run.trained
    with torch.no_grad():
        ours = run.objective(mb.inputs)
        kwargs = ({"text_ids": mb.inputs["text_ids"], "text_lengths": mb.inputs["text_lengths"]} if stage == 1
                  else {"target_image_embeds": mb.inputs["target"]})
        theirs = stage_losses(model, mb.inputs["images"], stage=stage, **kwargs)
    b = mb.units
    for key in ("itc",) if stage == 1 else ("vq", "mse", "cos"):
        torch.testing.assert_close(ours[key] / b, theirs[key], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours["loss"] / b, theirs["loss"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("stage, steps", [(1, 80), (2, 30), (3, 30)])
def test_loss_falls_on_procedural_data(tmp_path, stage, steps):
    train(tiny(stage), tmp_path, steps=steps, device="cpu", progress=False)
    losses = [r["loss"] for r in steps_of(tmp_path)]
    assert len(losses) == steps
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    # Stage 1 must leave the uniform-similarity plateau ln(32) of a 32-sample contrastive batch.
    bound = {1: np.log(32) - 0.25, 2: 0.3 * first, 3: 0.5 * first}[stage]
    assert last < bound, (first, last)


def test_stage2_logs_codebook_use(tmp_path):
    train(tiny(2), tmp_path, steps=2, device="cpu", progress=False)
    rec = steps_of(tmp_path)[-1]
    assert 1 <= rec["codebook_used"] <= 64
    assert 1.0 <= rec["codebook_perplexity"] <= rec["codebook_used"] + 1e-9


def test_word_tokenizer_covers_the_caption_grammar():
    from seedfast.data import ProceduralConfig, ProceduralDataset

    tok = WordTokenizer.procedural()
    assert tok.vocab_size <= 64  # the tiny Q-Former's vocabulary, and below the tiny LLM's 256 text ids
    data = ProceduralDataset(ProceduralConfig(image_size=16, train_size=200))
    for caption in data.batch(range(200)).captions:
        ids = tok.encode(caption)
        assert tok.unk_id not in ids and tok.decode(ids) == caption
    assert tok.encode("a purple circle") == [tok.encode("a")[0], tok.unk_id, tok.encode("circle")[0]]


def test_caption_cleaning_and_stage1_ids():
    assert clean_caption('A "Red" Circle!  (small); left.', max_words=3) == "a red circle"
    tok = WordTokenizer.procedural()
    ids, lengths = stage1_text(["a red circle", "a small red circle to the left of a large blue square"], tok, 8)
    assert ids.shape == (2, 8) and lengths.tolist() == [5, 8]
    assert ids[0].tolist()[:5] == [tok.bos_id, *tok.encode("a red circle"), tok.eos_id]
    assert ids[0, 5:].eq(tok.pad_id).all() and ids[1, -1] == tok.eos_id


def test_interleaved_sequences_put_the_caption_on_either_side():
    tok, vocab = WordTokenizer.procedural(), tiny_visual_vocab()
    codes = torch.arange(64).reshape(2, 32)
    seqs = interleave(["a red circle in the middle"] * 2, codes, [True, False], tok, vocab, seq_len=48)
    words = tok.encode("a red circle in the middle")
    block = [vocab.boi_id, *(vocab.first_code_id + c for c in range(32)), vocab.eoi_id]
    n = 2 + len(words) + len(block)
    assert seqs.tokens.shape == (2, 48) and seqs.lengths.tolist() == [n, n]
    assert seqs.tokens[0, :n].tolist() == [tok.bos_id, *words, *block, tok.eos_id]
    block1 = [vocab.boi_id, *(vocab.first_code_id + c for c in range(32, 64)), vocab.eoi_id]
    assert seqs.tokens[1, :n].tolist() == [tok.bos_id, *block1, *words, tok.eos_id]
    assert seqs.num_targets == 2 * (n - 1)
    short = interleave(["a red circle in the middle"], codes[:1], [True], tok, vocab, seq_len=37)
    assert short.lengths.tolist() == [37]  # the caption is cut to fit, the image never
    with pytest.raises(ValueError, match="cannot hold"):
        interleave(["a"], codes[:1], [True], tok, vocab, seq_len=35)


def test_caption_side_is_a_per_sample_coin():
    run = build_run(tiny(3), D.setup("cpu"))
    mbs = [run.build_inputs(raw) for raw in run.read(0)]
    tokens = torch.cat([mb.inputs["tokens"] for mb in mbs])
    image_first = (tokens[:, 1] == tiny_visual_vocab().boi_id).float().mean()
    assert 0.2 < float(image_first) < 0.8
    again = torch.cat([run.build_inputs(raw).inputs["tokens"] for raw in run.read(0)])
    assert torch.equal(tokens, again)


def test_reading_caption_order_restates_only_the_captioning_rows():
    given = build_run(tiny(3), D.setup("cpu"))
    reading = build_run(tiny(3, "data.caption_order=reading"), D.setup("cpu"))
    tok = WordTokenizer.procedural()
    boi = tiny_visual_vocab().boi_id
    changed = 0
    for raw in given.read(0):
        a, b = given.build_inputs(raw).inputs, reading.build_inputs(raw).inputs
        for caption, row_a, row_b, n in zip(raw.captions, a["tokens"], b["tokens"], a["lengths"]):
            n = int(n)
            if row_a[1] != boi:  # caption first: text→image keeps the caption as given
                assert torch.equal(row_a, row_b)
                continue
            words = tok.decode(row_b[1 + 34: n - 1].tolist())
            assert words == reading_order_caption(caption)
            assert torch.equal(row_a[:35], row_b[:35])
            changed += words != caption
    assert changed > 0  # the batch holds image-first two-object rows named bottom/right first


def test_caption_order_is_checked():
    with pytest.raises(ConfigError, match="data.caption_order"):
        tiny(3, "data.caption_order=alphabetical")
    with pytest.raises(ValueError, match="caption_order must be one of"):
        InputBuilder(3, torch.device("cpu"), image_size=32, image_dtype=torch.float32, vit_tokens=65,
                     caption_order="alphabetical")


def test_lora_merge_reproduces_the_adapted_model():
    cfg = tiny(3, "lora.dropout=0.0")
    model = build_llm(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)  # B starts at zero: give the adapters an effect
    merged = Llama(LlamaConfig.tiny())
    merged.load_state_dict(merge_lora(model.state_dict(), cfg), strict=True)
    tokens = torch.randint(0, 322, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(tokens), model(tokens), rtol=1e-5, atol=1e-5)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"tok_embeddings.weight", "output.weight", "norm.weight", "layers.0.attention_norm.weight"} <= trained
    assert "layers.0.attention.wqkv.base_layer.weight" not in trained
    assert model.layers[0].attention.wqkv.lora_A["default"].weight.shape[0] == 3 * cfg.lora.r


def test_stand_in_target_is_fixed_and_informative():
    a, b = StandInTarget(48), StandInTarget(48)
    images = torch.randn(4, 3, 32, 32)
    assert torch.equal(a(images), b(images)) and a(images).shape == (4, 48)
    assert a(images).std(0).mean() > 0.05  # different images, different targets


def test_stand_in_target_grid():
    import torch.nn.functional as F

    images = torch.randn(3, 3, 32, 32)
    fine = build_target("stand-in:16", 48)
    assert isinstance(fine, StandInTarget) and fine.grid == 16 and fine.projection.shape == (3 * 16 * 16, 48)
    torch.testing.assert_close(fine(images), F.adaptive_avg_pool2d(images, 16).flatten(1) @ fine.projection)
    assert build_target("stand-in", 48).grid == 8
    for bad in ("stand-in:0", "stand-in:x", "stand-in:", "standin"):
        with pytest.raises(ValueError, match="stand-in:GRID"):
            build_target(bad, 48)


def test_procedural_source_honours_max_objects():
    from seedfast.train.config import DataConfig
    from seedfast.train.data import open_source

    for max_objects in (1, 2):
        source = open_source(DataConfig(source="procedural", image_size=32, train_size=64, max_objects=max_objects))
        counts = {len(source.dataset[i].truth.objects) for i in range(64)}
        assert max(counts) == max_objects


def test_clip_target_from_a_hugging_face_folder(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, projection_dim=48, num_hidden_layers=1,
                              num_attention_heads=2, image_size=32, patch_size=8)
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path)
    target = build_target(f"clip:{tmp_path}", 48)
    images = torch.randn(2, 3, 16, 16)
    out = target(images)
    assert out.shape == (2, 48) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="outputs 48-d embeddings; the tokenizer's generation embedding is 1024-d"):
        build_target(f"clip:{tmp_path}", 1024)


@pytest.mark.parametrize("stage, overrides", [(1, ("tokenizer.qformer_dropout=0.1",)), (2, ()), (3, ())])
def test_activation_checkpointing_changes_memory_not_results(tmp_path, stage, overrides):
    for name, flag in (("plain", "false"), ("checkpointed", "true")):
        train(tiny(stage, *overrides, f"train.activation_checkpointing={flag}"), tmp_path / name, steps=2,
              device="cpu", progress=False)
    assert max_diff(weights(tmp_path / "plain", 2), weights(tmp_path / "checkpointed", 2)) == 0.0


def test_hugging_face_text_tokenizer_for_stage1(tmp_path):
    from transformers import BertTokenizerFast

    from seedfast.train.text import HFTextTokenizer

    words = WordTokenizer.procedural().words
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    BertTokenizerFast(vocab=vocab).save_pretrained(tmp_path / "bert")
    tok = HFTextTokenizer(str(tmp_path / "bert"))
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 2, 3, 5 + len(words))
    ids, lengths = stage1_text(["a red circle"], tok, 8)
    assert ids[0, :5].tolist() == [2, *(5 + words.index(w) for w in ("a", "red", "circle")), 3]
    assert lengths.tolist() == [5]
