"""The demo's pieces on their own: configs, the frozen encoder, the normaliser, grids, code files."""
from __future__ import annotations

import json
import math

import pytest
import torch

from seedfast.demo.commands import CommandError, read_codes
from seedfast.demo.config import DemoConfig
from seedfast.demo.encoder import HEAD_MODULES, frozen_encoder_init, sincos_positions
from seedfast.demo.images import image_grid
from seedfast.demo.models import EmbeddingNormaliser
from seedfast.demo.pipeline import DemoError, prepare_output
from seedfast.train.config import model_config
from seedfast.train.config_sources import build_config


@pytest.mark.parametrize("name", ["full", "quick"])
def test_stage_tables_are_valid_training_configs(name, tmp_path):
    config = getattr(DemoConfig, name)()
    for stage in (1, 2, 3):
        cfg = build_config(stage, [config.stage_tables(stage, seed=3, init=tmp_path, tokenizer=tmp_path)])
        assert cfg.data.max_objects == config.max_objects and cfg.train.seed == 3 and not cfg.lora.enabled
        assert cfg.optim.total_steps == {1: config.stage1, 2: config.stage2, 3: config.stage3}[stage].steps
        # Stage 2 encodes a pool of images once (stage 3 then reads the same folder); stage 1 draws fresh ones.
        pooled = stage == 2 and config.stage2_pool > 0
        assert (cfg.data.train_size == config.stage2_pool) if pooled else cfg.data.train_size >= 10 ** 6
    assert config.max_objects == 2 and config.stage2_pool > 0
    assert 0 < config.detokenizer_code_steps < config.detokenizer.steps
    tokenizer = model_config("tokenizer", cfg.tokenizer)
    assert tokenizer.codebook_size == 64 and tokenizer.generation_embed_dim == config.detokenizer_model.embed_dim


def test_sincos_positions():
    positions = sincos_positions(4, 16)
    assert positions.shape == (16, 16)
    torch.testing.assert_close(positions.norm(dim=1), torch.full((16,), math.sqrt(8.0)))
    assert len({tuple(row) for row in positions.tolist()}) == 16
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_positions(4, 18)


def test_frozen_encoder_is_isometric_and_deterministic():
    config = model_config("tokenizer", build_config(1, [DemoConfig.quick().stage_tables(1, seed=0)]).tokenizer)
    model = frozen_encoder_init(config, seed=7)
    proj = model.visual_encoder.patch_embed.proj
    patches = torch.randn(5, 3, config.patch_size, config.patch_size)
    with torch.no_grad():
        embedded = proj(patches).flatten(1)
    torch.testing.assert_close(embedded.norm(dim=1), patches.flatten(1).norm(dim=1), rtol=1e-5, atol=1e-5)
    pos = model.visual_encoder.pos_embed[0]
    pos = pos.detach()
    assert pos[0].abs().max() == 0 and pos[1:].norm(dim=1).std() < 1e-4
    for name in HEAD_MODULES:
        for layer in getattr(model, name).modules():
            if isinstance(layer, torch.nn.Linear):
                assert float(layer.weight.detach().std()) == pytest.approx(layer.in_features ** -0.5, rel=0.3), name
    again = frozen_encoder_init(config, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="isometric"):
        frozen_encoder_init(type(config)(**{**config.to_dict(), "vit_width": 32, "vit_heads": 4}), seed=0)


def test_normaliser(tmp_path):
    embeddings = torch.randn(100, 6) * torch.arange(1, 7) + 5
    normaliser = EmbeddingNormaliser.fit(embeddings)
    normalised = normaliser(embeddings)
    torch.testing.assert_close(normalised.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalised.std(0), torch.ones(6), atol=1e-5, rtol=0)
    normaliser.save(tmp_path / "n.safetensors")
    torch.testing.assert_close(EmbeddingNormaliser.load(tmp_path / "n.safetensors")(embeddings), normalised)
    assert torch.equal(EmbeddingNormaliser.identity(6)(embeddings), embeddings)
    with pytest.raises(ValueError):
        EmbeddingNormaliser.fit(embeddings[:1])


def test_image_grid_sizes():
    images = [torch.rand(3, 8, 8) for _ in range(6)]
    plain = image_grid([images[:3], images[3:]], scale=2)
    assert plain.shape == (4 + 2 * (16 + 4), 4 + 3 * (16 + 4), 3) and plain.dtype.name == "uint8"
    labelled = image_grid([images[:3], images[3:]], scale=2, column_labels=["a", "b", "c"], row_labels=["in", "out"])
    assert labelled.shape[0] > plain.shape[0] and labelled.shape[1] > plain.shape[1]
    with pytest.raises(ValueError):
        image_grid([images[:3], images[3:5]])


def test_read_codes_forms(tmp_path):
    path = tmp_path / "c.json"
    codes = list(range(32))
    for content in (codes, {"codes": codes}, [{"image": "x", "codes": codes}], [codes]):
        path.write_text(json.dumps(content))
        assert read_codes(path, index=None, codes_per_image=32, num_codes=64) == codes
    path.write_text(json.dumps([[0] * 32, codes]))
    assert read_codes(path, index=1, codes_per_image=32, num_codes=64) == codes
    with pytest.raises(CommandError, match="out of range"):
        read_codes(path, index=2, codes_per_image=32, num_codes=64)
    path.write_text(json.dumps([]))
    with pytest.raises(CommandError, match="expected a list"):
        read_codes(path, index=None, codes_per_image=32, num_codes=64)


def test_prepare_output(tmp_path):
    out = tmp_path / "demo"
    prepare_output(out)
    (out / "metrics.json").write_text("{}")
    (out / "train").mkdir()
    prepare_output(out)
    assert out.is_dir() and not any(out.iterdir())
    (tmp_path / "file").write_text("x")
    with pytest.raises(DemoError, match="is a file"):
        prepare_output(tmp_path / "file")


def test_word_prompt_tokenizer_writes_the_demo_prompts():
    from seedfast.models.seed_llama import PLAIN, image_block, tiny_visual_vocab
    from seedfast.demo.models import WordPromptTokenizer
    from seedfast.pipeline import TextTokenizer
    from seedfast.train.text import WordTokenizer

    vocab, words = tiny_visual_vocab(), WordTokenizer.procedural()
    tok = WordPromptTokenizer(words, vocab)
    assert isinstance(tok, TextTokenizer)
    codes = list(range(32))
    # What the demo's LLM was trained on: "<s> <img> codes </img> caption" and "<s> caption <img> codes </img>".
    assert tok.encode(PLAIN.render("<image>"), [codes]) == [words.bos_id, *image_block(codes, vocab)]
    red = words.encode("a large red circle")
    assert tok.encode(PLAIN.render("A large red circle.") + "<img>") == [words.bos_id, *red, vocab.boi_id]
    assert tok.decode(red) == "a large red circle"
    with pytest.raises(ValueError, match=r"word\(s\) 'bus' are not in the demo's vocabulary"):
        tok.encode("a red bus")
    with pytest.raises(ValueError, match="1 <image> placeholder"):
        tok.encode("<image>")


def test_demo_models_are_a_seed_pipeline():
    from seedfast.demo.models import DemoModelError, DemoModels, Manifest, NormalisedDetokenizer
    from seedfast.models.detokenizer import SeedDetokenizer
    from seedfast.models.llama import Llama, LlamaConfig
    from seedfast.models.seed_tokenizer import SeedTokenizer
    from seedfast.pipeline import SeedPipeline

    config = DemoConfig.quick()
    tokenizer = SeedTokenizer(model_config("tokenizer", build_config(1, [config.stage_tables(1, seed=0)]).tokenizer))
    embed = tokenizer.config.generation_embed_dim
    detok = NormalisedDetokenizer(SeedDetokenizer.tiny(embed, seed=0), EmbeddingNormaliser.identity(embed))
    manifest = Manifest(image_size=32, max_objects=1, decode_steps=3, guidance_scale=1.5, caption_temperature=0.0,
                        image_temperature=0.9, image_top_k=5, image_top_p=0.8)
    models = DemoModels(tokenizer.eval(), detok, Llama(LlamaConfig.tiny()).eval(), manifest)
    assert isinstance(models, SeedPipeline) and models.template.name == "plain"
    assert (models.detokenizer.steps, models.detokenizer.guidance_scale) == (3, 1.5)
    assert models.sampling.temperature == 0.0 and models.sampling.max_new_tokens == 24
    assert (models.image_sampling.temperature, models.image_sampling.top_k, models.image_sampling.top_p) == \
        (0.9, 5, 0.8)
    codes, images = models.text_to_image(["a large red circle"], seed=[7])
    assert codes.shape == (1, 32) and images.shape == (1, 3, 32, 32)
    assert isinstance(models.caption(codes, seed=[7])[0], str)
    with pytest.raises(ValueError, match="caption is empty"):
        models.caption_ids("  ")
    with pytest.raises(DemoModelError, match="generation embeddings"):
        DemoModels(tokenizer, NormalisedDetokenizer(SeedDetokenizer.tiny(embed + 1, seed=0),
                                                    EmbeddingNormaliser.identity(embed + 1)),
                   Llama(LlamaConfig.tiny()), manifest)


def test_metrics_file_and_curves(tmp_path):
    from seedfast.demo.report import curve_svg, write_metrics

    path = write_metrics(tmp_path, {"b": 0.5, "a": 1.0}, {"caption": {"overall": 0.5, "relation": 0.25}})
    assert json.loads(path.read_text()) == {"a": 1.0, "b": 0.5, "breakdown": {"caption": {"overall": 0.5,
                                                                                       "relation": 0.25}}}
    svg = curve_svg([4.0, 2.0, 1.0, 0.5], "loss")
    assert svg.startswith("<svg") and "4 → 0.5 (log scale)" in svg and svg.count(",") == 4
    assert "log scale" not in curve_svg([1.0, -1.0, float("nan"), 0.0], "loss")
    assert curve_svg([1.0], "loss") == "" and curve_svg([], "loss") == ""


def test_goals_read_their_split_of_the_breakdown():
    from seedfast.demo.report import GOALS, goal_results

    breakdown = {"reconstruction": {"overall": 0.9, "one_object": 0.96, "two_objects_with_relation": 0.84},
                 "caption": {"overall": 0.97}, "checker": {"overall": 1.0}}
    got = {(g.task, g.split): v for g, v in goal_results(breakdown)}
    assert got[("reconstruction", "one_object")] == 0.96 and got[("reconstruction", "two_objects_with_relation")] == 0.84
    assert got[("text_to_image", "one_object")] is None and got[("caption", "overall")] == 0.97
    assert {(g.task, g.split): g.threshold for g in GOALS} == {
        ("reconstruction", "one_object"): 0.95, ("reconstruction", "two_objects_with_relation"): 0.85,
        ("text_to_image", "one_object"): 0.9, ("text_to_image", "two_objects_with_relation"): 0.8,
        ("caption", "overall"): 0.95, ("checker", "overall"): 0.98}


def test_stage3_rows_hold_every_caption_whole():
    """``seq_len`` fits bos + the longest caption of the grammar + an image block + eos: a
    shorter row would cut captions silently (``seedfast.train.text.interleave``)."""
    import itertools

    from seedfast.data.scene import COLOURS, RELATIONS, SHAPES, SIZES
    from seedfast.train.text import WordTokenizer

    words = WordTokenizer.procedural()
    objects = [f"a {s} {c} {h}" for s, c, h in itertools.product(SIZES, COLOURS, SHAPES)]
    longest = max(len(words.encode(f"{a} {r} {b}")) for a, b in itertools.product(objects, objects)
                  for r in RELATIONS.values())
    config = DemoConfig.full()
    assert longest == 12 and config.seq_len == 1 + longest + 34 + 1
    assert config.tokenizer["max_text_positions"] >= 1 + longest


def test_detokenizer_code_steps_must_fit_its_steps():
    import dataclasses

    with pytest.raises(ValueError, match=r"detokenizer_code_steps must be in \[0, detokenizer.steps=8\], got 9"):
        dataclasses.replace(DemoConfig.quick(), detokenizer_code_steps=9)


def _detokenizer_config(code_steps: int) -> DemoConfig:
    import dataclasses

    quick = DemoConfig.quick()
    return dataclasses.replace(quick, normaliser_samples=16, detokenizer_code_steps=code_steps,
                               detokenizer=dataclasses.replace(quick.detokenizer, steps=3, batch=2))


def test_detokenizer_conditions_its_last_steps_on_the_tokenizers_embeddings(tmp_path):
    """Exact targets first; then, once the stage-2 tokenizer is handed over, what that
    tokenizer predicts from each image's codes, for images past the stage-2 pool."""
    from seedfast.demo.pipeline import _Cancelled, _DetokenizerJob
    from seedfast.models.preprocess import clip_preprocess
    from seedfast.models.seed_tokenizer import SeedTokenizer
    from seedfast.train.config import model_config

    config = _detokenizer_config(code_steps=2)
    tokenizer = SeedTokenizer(model_config("tokenizer", build_config(2, [config.stage_tables(2, seed=0)]).tokenizer))
    tokenizer.save(tmp_path / "tok")
    asked = []
    job = _DetokenizerJob(config, 0, False, lambda: asked.append(1) or tmp_path / "tok")
    batches = job._batches()
    condition, images = next(batches)
    exact = job.data.batch(range(2))
    torch.testing.assert_close(images, exact.images.float() / 255)
    torch.testing.assert_close(condition, job.normaliser(job._targets(exact.images)))
    assert not asked  # the exact-target steps do not wait for the tokenizer
    for k in range(2):
        condition, images = next(batches)
        batch = job.data.batch(range(config.stage2_pool + 2 * k, config.stage2_pool + 2 * k + 2))
        torch.testing.assert_close(images, batch.images.float() / 255)
        with torch.no_grad():
            codes = tokenizer.encode(clip_preprocess(batch.images, size=config.image_size))
            predicted = tokenizer.generation_embedding(codes)
        torch.testing.assert_close(condition, job.normaliser(predicted))
        assert not torch.allclose(condition, job.normaliser(job._targets(batch.images)), atol=0.1)
    assert next(batches, None) is None and asked == [1]
    never = _DetokenizerJob(config, 0, False, lambda: None)._batches()
    next(never)
    with pytest.raises(_Cancelled, match="the tokenizer stages did not finish"):
        next(never)


def test_detokenizer_process_trains_saves_and_can_be_cancelled(tmp_path):
    import dataclasses
    import subprocess
    import sys

    from seedfast.demo.models import NormalisedDetokenizer
    from seedfast.demo.pipeline import CANCELLED_EXIT, RESULT_FILE, DemoError, _DetokenizerJob, _DetokenizerTraining

    config = _detokenizer_config(code_steps=0)
    training = _DetokenizerTraining(config, 0, False, tmp_path / "detok")
    training.start()
    detokenizer, summary = training.join()
    assert summary.steps == 3 and len(summary.losses) == 3 and training.process.poll() == 0
    # The child's run is the seeded job's, step for step, whichever process trains it (on one
    # intra-op thread, as the child).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        job = _DetokenizerJob(config, 0, False, lambda: None)
        assert summary.losses == tuple(job.run())
    finally:
        torch.set_num_threads(threads)
    saved = detokenizer.detokenizer.unet.state_dict()
    for name, value in job.model.unet.state_dict().items():
        torch.testing.assert_close(saved[name], value, rtol=0, atol=0, msg=name)
    assert isinstance(NormalisedDetokenizer.load(tmp_path / "detok"), NormalisedDetokenizer)
    # End of input while it waits for the tokenizer: the child ends itself, as cancelled.
    waiting = _DetokenizerTraining(_detokenizer_config(code_steps=2), 0, False, tmp_path / "never")
    waiting.start()
    waiting.process.stdin.close()
    assert waiting.process.wait(timeout=300) == CANCELLED_EXIT
    with pytest.raises(DemoError, match="de-tokenizer's training was cancelled: the tokenizer stages did not finish"):
        waiting.join()
    assert not (tmp_path / "never" / RESULT_FILE).exists()
    # cancel() does not wait for a child still busy with its first steps: it ends it.
    busy = _DetokenizerTraining(dataclasses.replace(config, detokenizer=dataclasses.replace(
        config.detokenizer, steps=10_000)), 0, False, tmp_path / "busy")
    busy.start()
    busy.cancel()
    assert busy.process.poll() not in (None, 0)
    with pytest.raises(DemoError):
        busy.join()
    # A child that already failed is reported at the next stage boundary, not after stage 3.
    failed = _DetokenizerTraining(config, 0, False, tmp_path / "failed")
    failed.process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"], stdin=subprocess.PIPE, text=True)
    failed.process.wait()
    with pytest.raises(DemoError, match=r"de-tokenizer process ended early \(exit code 1; its error is printed above"):
        failed.check()
    with pytest.raises(DemoError, match="ended early"):
        failed.provide_tokenizer(tmp_path)


def test_run_demo_from_a_script_without_a_main_guard(tmp_path):
    """The de-tokenizer's process is a fresh interpreter: it never imports and re-runs the
    caller's script (a spawned multiprocessing child would)."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text("from seedfast.demo.config import DemoConfig\n"
                      "from seedfast.demo.pipeline import run_demo\n"
                      f"print('RAN', run_demo(DemoConfig.quick(), {str(tmp_path / 'out')!r}, progress=False).out)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("RAN") == 1
    assert (tmp_path / "out" / "metrics.json").is_file()
