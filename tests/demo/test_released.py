"""The CLI on tiny stand-ins of the released SEED folders (official formats), end to end, as a user runs it;
and the user commands' faults (issue 15): one line, exit status 2, no traceback, no partial file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.demo.released_helpers import build_released

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600
REQUESTS = [
    {"prompt": "Draw a dog", "seed": 1},
    {"prompt": "What is in this image?", "image": "scene.png", "seed": 2},
    {"prompt": "a sunset over the sea"},
    {"prompt": "Describe the picture in detail.", "image": "scene.png", "temperature": 0},
    {"prompt": "Draw a dog", "seed": 1, "top_p": 0.9},
    {"prompt": "Can you make it blue?", "image": "scene.png", "max_new_tokens": 5},
    {"prompt": "Please generate an image of a cat", "seed": 77},
    {"prompt": "a red mat", "temperature": 0.7, "top_k": 10},
]


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def seedfast(*args: str, cwd: Path, python: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = [*(python or [sys.executable, "-m", "seedfast"]), *args]
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    from PIL import Image

    root = build_released(tmp_path_factory.mktemp("released"))
    pixels = (np.random.RandomState(0).rand(40, 50, 3) * 255).astype("uint8")
    Image.fromarray(pixels).save(root / "scene.png")
    (root / "prompts.jsonl").write_text("\n".join(json.dumps(r) for r in REQUESTS) + "\n\n")
    return root


def _ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def _one_line_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_text_to_codes_to_png_and_image_to_caption(released):
    done = seedfast("generate", "Draw a dog", "-o", "dog.png", "--models", ".", "--seed", "3", cwd=released)
    _ok(done)
    codes = next(line for line in done.stderr.splitlines() if line.startswith("codes: ")).split()[1:]
    assert len(codes) == 32 and all(0 <= int(c) < 8192 for c in codes)
    from PIL import Image

    assert Image.open(released / "dog.png").size == (16, 16)
    # Flags instead of the manifest: the LLM folder carries its text tokenizer.
    caption = seedfast("caption", "scene.png", "--question", "What is in this image?", "--tokenizer", "tokenizer",
                       "--llm", "llm", "--template", "8b", "--max-new-tokens", "2", cwd=released)
    assert _ok(caption).count("\n") == 1
    # Never cut silently: a random stand-in LLM does not stop within 2 tokens, and the CLI says so.
    assert "scene.png: the answer reached max_new_tokens=2 and is cut there" in caption.stderr


def test_the_official_quantizer_file_goes_to_the_official_loader(released):
    """``--tokenizer seed_quantizer.pt --vit eva_vit_g.pth`` loads by the official shapes; the tiny
    stand-in's shapes are refused in one line naming the keys (the loader itself is tested with a
    tiny config in tests/models/test_tokenizer_checkpoints.py)."""
    done = seedfast("tokenize", "scene.png", "--tokenizer", "quantizer.pt", "--vit", "eva_vit.pt", cwd=released)
    _one_line_error(done, "quantizer.pt + eva_vit.pt does not fit the SEED tokenizer", "missing key(s)",
                    "query_tokens: expected [1, 32, 768], got [1, 32, 32]")


def test_a_jsonl_batch_and_the_same_under_torchrun(released):
    one = seedfast("generate", "--prompts", "prompts.jsonl", "--out", "one", "--models", ".", "--batch-size", "3",
                   cwd=released)
    _ok(one)
    assert "req/s" in one.stdout + one.stderr
    results = [json.loads(line) for line in (released / "one" / "results.jsonl").read_text().splitlines()]
    assert [r["index"] for r in results] == list(range(8))
    for r, request in zip(results, REQUESTS):
        kind = ".txt" if "image" in request else ".png"
        assert r["output"] == f"{r['index']:05d}{kind}" and (released / "one" / r["output"]).is_file()
        assert ("codes" in r) != ("text" in r)
    assert results[2]["seed"] == 2  # --seed 0 + its index
    assert len(results[0]["codes"]) == 32
    # Requests 0 and 4 share prompt and seed; top-p differs, so only the first token's odds differ.
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                "seedfast"]
    two = seedfast("generate", "--prompts", "prompts.jsonl", "--out", "two", "--models", ".", "--batch-size", "8",
                   "--no-progress", cwd=released, python=torchrun)
    _ok(two)
    merged = [json.loads(line) for line in (released / "two" / "results.jsonl").read_text().splitlines()]
    assert len(merged) == 8
    for a, b in zip(results, merged):
        assert {k: v for k, v in a.items()} == {k: v for k, v in b.items()}, a["index"]
        if a["output"].endswith(".png"):
            from PIL import Image

            x = np.asarray(Image.open(released / "one" / a["output"]), dtype=np.int16)
            y = np.asarray(Image.open(released / "two" / b["output"]), dtype=np.int16)
            assert np.abs(x - y).max() <= 1  # de-tokenizer float rounding differs with the batch


@pytest.mark.parametrize("command", ["generate", "caption", "detokenize"])
def test_seed_beyond_int64_is_one_line(released, command):
    args = {"generate": ["generate", "a dog", "-o", "x.png"], "caption": ["caption", "scene.png"],
            "detokenize": ["detokenize", "codes.json", "-o", "x.png"]}[command]
    _one_line_error(seedfast(*args, "--seed", str(2**64), "--models", ".", cwd=released),
                    "--seed must be an integer in [0, 2**63)")


def failing_writer(errno_name: str, target: str = "seedfast.checkpoint_io._write") -> list[str]:
    """``python -c`` running ``seedfast`` with ``target`` raising ``errno_name`` after writing (a fault mid-write)."""
    module, name = target.rsplit(".", 1)
    code = (f"import errno, os, sys, importlib; m = importlib.import_module({module!r}); real = m.{name}\n"
            "def fail(*a, **k):\n"
            "    real(*a, **k)\n"
            f"    raise OSError(errno.{errno_name}, os.strerror(errno.{errno_name}), str(a[0]))\n"
            f"m.{name} = fail\n"
            "from seedfast.cli import main; sys.exit(main(sys.argv[1:]))\n")
    return [sys.executable, "-c", code]


def test_read_only_output_folder_is_one_line_and_leaves_no_file(released, tmp_path):
    codes = released / "codes.json"
    codes.write_text(json.dumps(list(range(32))))
    out = tmp_path / "out"
    out.mkdir()
    readonly = failing_writer("EROFS")  # as a read-only folder answers (root can write into a chmod 555 one)
    _one_line_error(seedfast("detokenize", str(codes), "-o", str(out / "x.png"), "--models", ".", cwd=released,
                             python=readonly), "Read-only file system")
    _one_line_error(seedfast("generate", "a dog", "-o", str(out / "x.png"), "--models", ".", cwd=released,
                             python=readonly), "Read-only file system")
    demo = failing_writer("EROFS", "seedfast.demo.pipeline.prepare_output")
    _one_line_error(seedfast("demo", "--quick", "--out", str(out / "demo"), cwd=released, python=demo),
                    "Read-only file system")
    assert [p.name for p in out.iterdir()] == ["demo"]  # made by prepare_output before the fault; no PNG
    if os.getuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        _one_line_error(seedfast("detokenize", str(codes), "-o", str(locked / "x.png"), "--models", ".",
                                 cwd=released), "Permission denied")
        assert list(locked.iterdir()) == []


def test_existing_directory_and_disk_full(released, tmp_path):
    codes = released / "codes.json"
    codes.write_text(json.dumps(list(range(32))))
    (tmp_path / "taken.png").mkdir()
    _one_line_error(seedfast("detokenize", str(codes), "-o", str(tmp_path / "taken.png"), "--models", ".",
                             cwd=released), "is a directory")
    # ENOSPC from the writer: the atomic write leaves neither the PNG nor its temporary file.
    done = seedfast("detokenize", str(codes), "-o", str(tmp_path / "out.png"), "--models", ".", cwd=released,
                    python=failing_writer("ENOSPC"))
    _one_line_error(done, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.png"]
