"""``seedfast demo --quick`` end to end, then the user commands on the models it wrote."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from seedfast import cli
from seedfast.data import ProceduralConfig, ProceduralDataset
from seedfast.demo import cli as demo_cli
from seedfast.demo.images import save_png
from seedfast.demo.report import IMAGES_DIR, OUTPUT_FILES

METRICS = ("reconstruction_attribute_accuracy", "caption_attribute_accuracy", "text_to_image_attribute_accuracy",
           "codebook_utilisation", "checker_accuracy", "seconds")
QUICK_LIMIT_S = 180.0
PARSERS = (demo_cli.add_demo_parser, demo_cli.add_tokenize_parser, demo_cli.add_detokenize_parser,
           demo_cli.add_generate_parser, demo_cli.add_caption_parser)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``seedfast.cli.main`` over a parser holding the demo's commands: (exit status, stdout, stderr)."""
    parser = argparse.ArgumentParser(prog="seedfast")
    sub = parser.add_subparsers(dest="command")
    for add in PARSERS:
        add(sub)
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.object(cli, "build_parser", return_value=parser), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    """The output folder of one ``seedfast demo --quick`` run, and what it printed."""
    from seedfast.demo import pipeline

    out = tmp_path_factory.mktemp("demo") / "seedfast-demo"
    before = torch.get_num_threads()
    # Two threads, so that "the caller's count" and "one" differ even on a one-core machine.
    torch.set_num_threads(2)
    seen: dict[str, int] = {}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            seen[name] = torch.get_num_threads()
            return fn(*args, **kwargs)
        return wrapped

    try:
        with mock.patch.object(pipeline, "_train_all", spy("train", pipeline._train_all)), \
                mock.patch.object(pipeline, "evaluate", spy("evaluate", pipeline.evaluate)):
            code, stdout, stderr = run_cli(["demo", "--quick", "--out", str(out), "--no-progress"])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert code == 0, stderr
    # One thread beside the de-tokenizer's process, every thread for the evaluation after it.
    assert seen == {"train": 1, "evaluate": 2}
    return out, stdout


@pytest.fixture(scope="module")
def image_file(demo, tmp_path_factory) -> Path:
    """A held-out procedural image as a PNG file."""
    sample = ProceduralDataset(ProceduralConfig(image_size=32, max_objects=1, heldout_size=1, seed=5), "heldout")[0]
    return save_png(sample.image, tmp_path_factory.mktemp("images") / "scene.png")


def _demo_flag(demo) -> list[str]:
    return ["--demo", str(demo[0])]


def test_quick_demo_writes_every_file_with_metrics_in_range(demo):
    out, stdout = demo
    for name in OUTPUT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert sorted(p.name for p in (out / IMAGES_DIR).iterdir())
    for part in ("demo.json", "tokenizer/model.safetensors", "detokenizer/detokenizer.safetensors",
                 "detokenizer/normaliser.safetensors", "llm/model.safetensors"):
        assert (out / "models" / part).is_file(), part
    # Stages 2 and 3 trained on the pool of encoded images (causal features), then it was deleted.
    for stage in ("stage2", "stage3"):
        start = json.loads((out / "train" / stage / "log.jsonl").read_text().splitlines()[0])
        assert start["event"] == "start" and start["features"] == "causal", stage
    assert sorted(p.name for p in (out / "train").iterdir()) == ["detokenizer", "init", "stage1", "stage2", "stage3"]
    metrics = json.loads((out / "metrics.json").read_text())
    breakdown = metrics.pop("breakdown")
    assert sorted(metrics) == sorted(METRICS)
    assert sorted(breakdown) == ["caption", "checker", "reconstruction", "text_to_image"]
    for task, parts in breakdown.items():
        assert {"overall", "shape", "colour", "size", "position", "count"} <= set(parts), task
        assert all(0.0 <= v <= 1.0 for k, v in parts.items() if k != "count"), (task, parts)
    assert breakdown["checker"]["overall"] == metrics["checker_accuracy"]
    assert breakdown["reconstruction"]["overall"] == metrics["reconstruction_attribute_accuracy"]
    for key in METRICS:
        value = metrics[key]
        assert isinstance(value, float) and math.isfinite(value), key
        if key != "seconds":
            assert 0.0 <= value <= 1.0, (key, value)
    assert 0 < metrics["seconds"] < QUICK_LIMIT_S
    # The clean held-out renders are read back exactly: the checker itself is sound.
    assert metrics["checker_accuracy"] == 1.0
    assert all(key in stdout for key in METRICS)
    page = (out / "report.html").read_text()
    assert "By attribute, relation and object count" in page and page.count("<svg") == 4  # a curve per stage
    assert "<h3>Goals</h3>" in page and "text_to_image (two objects with relation)" in page
    for name in ("demo_grid.png", f"{IMAGES_DIR}/input_000.png", f"{IMAGES_DIR}/reconstruction_000.png",
                 f"{IMAGES_DIR}/generated_000.png"):
        assert name in page and (out / name).is_file(), name


# What `seedfast demo --quick` (8 steps per stage, scenes of one or two objects) reaches, measured
# for seeds 0, 1 and 2 on the 2-core CPU machine (2026-12-07), with the floor set well inside each:
#   checker_accuracy 1.0, 1.0, 1.0                      -> floor 0.98
#   codebook_utilisation 0.172, 0.250, 0.219 (11-16/64)  -> floor 0.05 (a collapsed codebook, 1/64, fails)
#   stage-2 loss, last/first step 0.75, 0.75, 0.65       -> at most 0.85
#   stage-3 (LLM) loss, last/first 0.40, 0.36, 0.36      -> at most 0.6
# The three attribute accuracies are 0.0-0.04 on the three seeds at --quick (captions do not parse
# yet, reconstructions and drawings are not read as the right objects), and the stage-1 contrastive
# loss stays at chance (ln 16) over its 8 steps: neither can hold a floor at --quick.
QUICK_METRIC_FLOORS = {"checker_accuracy": 0.98, "codebook_utilisation": 0.05}
QUICK_LOSS_RATIO_CEILINGS = {2: 0.85, 3: 0.6}


def stage_loss_ratios(out: Path) -> dict[int, float]:
    """Last over first training loss of stages 2 and 3, from the demo's ``train/stageN/log.jsonl``."""
    from seedfast.demo.pipeline import TRAIN_DIR

    ratios = {}
    for stage in QUICK_LOSS_RATIO_CEILINGS:
        log = out / TRAIN_DIR / f"stage{stage}" / "log.jsonl"
        losses = [r["loss"] for r in map(json.loads, log.read_text().splitlines()) if "loss" in r]
        ratios[stage] = losses[-1] / losses[0]
    return ratios


def quick_floor_failures(metrics: dict[str, float], loss_ratios: dict[int, float]) -> list[str]:
    """Every floor of a ``--quick`` run that ``metrics`` / ``loss_ratios`` miss (empty: all held)."""
    failures = [f"{key} {metrics[key]} < {floor}" for key, floor in QUICK_METRIC_FLOORS.items()
                if not metrics[key] >= floor]
    failures += [f"stage {stage} loss fell only to {loss_ratios[stage]:.2f} of its start (ceiling {ceiling})"
                 for stage, ceiling in QUICK_LOSS_RATIO_CEILINGS.items() if not loss_ratios[stage] <= ceiling]
    return failures


def test_quick_demo_reaches_its_floors(demo):
    out, _ = demo
    metrics = json.loads((out / "metrics.json").read_text())
    assert quick_floor_failures(metrics, stage_loss_ratios(out)) == []


def test_a_model_that_learned_nothing_fails_the_floors():
    """Metrics of random outputs (noise for images, word salad for captions, one code for every
    token) and flat training losses: the in-range check passes them, the floors do not."""
    from seedfast.data.checker import caption_accuracy, image_accuracy

    from seedfast.demo.config import DemoConfig

    objects = DemoConfig.quick().max_objects
    sample = ProceduralDataset(ProceduralConfig(image_size=32, max_objects=objects, heldout_size=8, seed=3), "heldout")
    batch = sample.batch(range(8))
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(8, 3, 32, 32, generator=g)
    words = " ".join(batch.captions).split()
    salad = [" ".join(words[i] for i in torch.randint(len(words), (6,), generator=g).tolist()) for _ in range(8)]
    garbage = {
        "reconstruction_attribute_accuracy": image_accuracy(noise, batch.truths, max_objects=objects),
        "caption_attribute_accuracy": caption_accuracy(salad, batch.truths),
        "text_to_image_attribute_accuracy": image_accuracy(noise, batch.truths, max_objects=objects),
        "codebook_utilisation": 1 / 64,
        "checker_accuracy": image_accuracy(batch.images, batch.truths, max_objects=objects),
    }
    assert all(0.0 <= v <= 1.0 for v in garbage.values())  # what the old test held a demo to
    flat = {stage: 1.0 for stage in QUICK_LOSS_RATIO_CEILINGS}
    failures = quick_floor_failures(garbage, flat)
    assert any(f.startswith("codebook_utilisation") for f in failures), failures
    assert any(f.startswith("stage 2 loss") for f in failures) and any(f.startswith("stage 3 loss") for f in failures)
    # Each floor alone catches its own failure: a sound codebook does not hide flat losses.
    assert len(quick_floor_failures({**garbage, "codebook_utilisation": 0.2}, flat)) == 2
    assert quick_floor_failures({**garbage, "codebook_utilisation": 0.2}, {2: 0.7, 3: 0.4}) == []


def test_tokenize_then_detokenize(demo, image_file, tmp_path):
    code, stdout, _ = run_cli(["tokenize", str(image_file), str(image_file), "--json", *_demo_flag(demo)])
    assert code == 0
    entries = json.loads(stdout)
    assert [e["image"] for e in entries] == [str(image_file)] * 2
    codes = entries[0]["codes"]
    assert len(codes) == 32 and all(0 <= c < 64 for c in codes) and entries[1]["codes"] == codes

    code, stdout, _ = run_cli(["tokenize", str(image_file), *_demo_flag(demo)])
    assert code == 0 and stdout.strip() == f"{image_file}: {' '.join(map(str, codes))}"

    codes_file = tmp_path / "codes.json"
    codes_file.write_text(json.dumps(entries[:1]))
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    for path in (first, second):
        code, _, stderr = run_cli(["detokenize", str(codes_file), "-o", str(path), "--seed", "3", *_demo_flag(demo)])
        assert code == 0, stderr
    from PIL import Image

    with Image.open(first) as a, Image.open(second) as b:
        assert a.size == (32, 32) and np.array_equal(np.asarray(a), np.asarray(b))
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(codes))
    code, _, _ = run_cli(["detokenize", str(bare), "-o", str(tmp_path / "c.png"), "--scale", "4", *_demo_flag(demo)])
    with Image.open(tmp_path / "c.png") as c:
        assert code == 0 and c.size == (128, 128)


def test_generate_and_caption(demo, image_file, tmp_path):
    out = tmp_path / "drawn.png"
    code, _, stderr = run_cli(["generate", "A large red circle on the left.", "-o", str(out), *_demo_flag(demo)])
    assert code == 0 and out.is_file(), stderr
    assert len(stderr.split("codes:")[1].split("\n")[0].split()) == 32
    code, stdout, _ = run_cli(["caption", str(image_file), *_demo_flag(demo)])
    assert code == 0 and stdout.count("\n") == 1
    code, stdout, _ = run_cli(["caption", str(image_file), str(image_file), *_demo_flag(demo)])
    assert code == 0 and stdout.count(f"{image_file}: ") == 2


def test_a_jsonl_batch_on_the_demo_models(demo, image_file, tmp_path):
    """The demo's models are a SeedPipeline too: batch mode runs them like the released ones."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "a large red circle on the left", "seed": 3},
        {"prompt": "", "image": str(image_file)},
        {"prompt": "a small blue square at the top", "seed": 3, "temperature": 0},
    ]) + "\n")
    out = tmp_path / "batch"
    code, _, stderr = run_cli(["generate", "--prompts", str(prompts), "--out", str(out), "--batch-size", "2",
                               "--no-progress", *_demo_flag(demo)])
    assert code == 0, stderr
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["output"] for r in results] == ["00000.png", "00001.txt", "00002.png"]
    assert len(results[0]["codes"]) == 32 and results[1]["seed"] == 1 and "text" in results[1]
    code, _, stderr = run_cli(["generate", "a large red circle on the left", "-o", str(tmp_path / "one.png"),
                               "--seed", "3", *_demo_flag(demo)])
    assert stderr.split("codes: ")[1].split("\n")[0].split() == [str(c) for c in results[0]["codes"]]


def _one_line_error(result: tuple[int, str, str], command: str, *needles: str) -> None:
    code, _, stderr = result
    assert code == 2
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"seedfast {command}: error: "), stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_bad_inputs_get_one_line_errors(demo, image_file, tmp_path):
    flag = _demo_flag(demo)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    _one_line_error(run_cli(["tokenize", str(text), *flag]), "tokenize", "cannot decode image")
    _one_line_error(run_cli(["caption", str(tmp_path / "missing.png"), *flag]), "caption", "no such image file")

    def codes_file(content: object) -> str:
        path = tmp_path / "codes.json"
        path.write_text(json.dumps(content))
        return str(path)

    png = str(tmp_path / "out.png")
    _one_line_error(run_cli(["detokenize", codes_file(list(range(31))), "-o", png, *flag]), "detokenize",
                    "32 codes, got 31")
    _one_line_error(run_cli(["detokenize", codes_file([0] * 31 + [64]), "-o", png, *flag]), "detokenize",
                    "code 64 at position 31", "[0, 64)")
    _one_line_error(run_cli(["detokenize", codes_file([0] * 31 + [-1]), "-o", png, *flag]), "detokenize",
                    "code -1")
    _one_line_error(run_cli(["detokenize", codes_file([[0] * 32, [1] * 32]), "-o", png, *flag]), "detokenize",
                    "--index")
    _one_line_error(run_cli(["detokenize", codes_file({"codes": "abc"}), "-o", png, *flag]), "detokenize",
                    "list of integers")
    broken = tmp_path / "broken.json"
    broken.write_text("[1, 2,")
    _one_line_error(run_cli(["detokenize", str(broken), "-o", png, *flag]), "detokenize", "not a JSON file")
    _one_line_error(run_cli(["detokenize", codes_file([0] * 32), "-o", str(tmp_path / "out.jpg"), *flag]),
                    "detokenize", ".png")
    _one_line_error(run_cli(["generate", "a purple circle", "-o", png, *flag]), "generate", "'purple'")
    _one_line_error(run_cli(["generate", "a red circle", "-o", png, "--scale", "0", *flag]), "generate", "--scale")

    missing = ["--demo", str(tmp_path / "nowhere")]
    _one_line_error(run_cli(["tokenize", str(image_file), *missing]), "tokenize", "run `seedfast demo` first")
    _one_line_error(run_cli(["caption", str(image_file), *flag, "--llm", str(tmp_path / "no-llm")]), "caption",
                    "llm checkpoint not found")
    corrupt = tmp_path / "corrupt-tokenizer"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((demo[0] / "models" / "tokenizer" / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    _one_line_error(run_cli(["tokenize", str(image_file), *flag, "--tokenizer", str(corrupt)]), "tokenize",
                    "cannot load the checkpoints")
    empty = tmp_path / "empty-llm"
    empty.mkdir()
    _one_line_error(run_cli(["caption", str(image_file), *flag, "--llm", str(empty)]), "caption",
                    "cannot load the checkpoints")


def test_demo_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "thesis.tex").write_text("keep me")
    _one_line_error(run_cli(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]), "demo", "thesis.tex")
    assert (tmp_path / "thesis.tex").read_text() == "keep me"


def test_same_seed_same_run(demo, tmp_path):
    """A second quick run with the same seed writes the same weights and metrics."""
    from safetensors.torch import load_file

    out = tmp_path / "again"
    code, _, stderr = run_cli(["demo", "--quick", "--out", str(out), "--no-progress"])
    assert code == 0, stderr
    first, second = demo[0] / "models", out / "models"
    for part in ("tokenizer/model.safetensors", "detokenizer/detokenizer.safetensors", "llm/model.safetensors"):
        a, b = load_file(str(first / part)), load_file(str(second / part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (demo[0], out)]
    for m in metrics:
        m.pop("seconds")
    assert metrics[0] == metrics[1]



@pytest.mark.parametrize("command", ["demo", "generate"])
def test_missing_diffusers_is_a_one_line_error(command, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    argv = {"demo": ["demo", "--quick", "--no-progress", "--out", str(tmp_path / "out")],
            "generate": ["generate", "a red circle", "-o", str(tmp_path / "x.png")]}[command]

    def without_diffusers(name, *args, **kwargs):
        return None if name == "diffusers" else real(name, *args, **kwargs)

    with mock.patch.object(importlib.util, "find_spec", without_diffusers):
        _one_line_error(run_cli(argv), command, "seedfast[demo]")
    assert not (tmp_path / "out").exists()


def test_full_demo_prints_each_goal_met_or_missed(tmp_path):
    """The full demo's summary names every goal of issue 18 with its split; --quick prints none."""
    from seedfast.demo.pipeline import DemoResult

    breakdown = {"reconstruction": {"overall": 0.9, "one_object": 0.96, "two_objects_with_relation": 0.84},
                 "text_to_image": {"overall": 0.8, "one_object": 0.91, "two_objects_with_relation": 0.8},
                 "caption": {"overall": 0.5}, "checker": {"overall": 1.0}}
    result = DemoResult(out=tmp_path, metrics={"caption_attribute_accuracy": 0.5}, report=tmp_path / "report.html",
                        stages=[], breakdown=breakdown)
    with mock.patch("seedfast.demo.pipeline.run_demo", return_value=result):
        code, stdout, _ = run_cli(["demo", "--out", str(tmp_path), "--no-progress"])
        assert code == 0
        goals = [line for line in stdout.splitlines() if line.startswith("goal ")]
        assert len(goals) == 6
        verdicts = {line.split(">=")[0].split(None, 1)[1].strip(): line.rsplit(" ", 1)[1] for line in goals}
        assert verdicts == {"reconstruction (one object)": "met", "reconstruction (two objects with relation)": "missed",
                            "text_to_image (one object)": "met", "text_to_image (two objects with relation)": "met",
                            "caption (overall)": "missed", "checker (overall)": "met"}
        code, stdout, _ = run_cli(["demo", "--quick", "--out", str(tmp_path), "--no-progress"])
        assert code == 0 and "goal " not in stdout and "caption_attribute_accuracy" in stdout
