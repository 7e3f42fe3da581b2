"""The README stays true: its Python blocks run, its commands parse, its quick start is what CI runs."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from seedfast.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_block_runs(index):
    block = _blocks("python")[index]
    exec(compile(block, f"README.md python block {index}", "exec"), {"__name__": "readme"})


def test_there_are_python_blocks():
    assert len(_blocks("python")) >= 2


def _seedfast_commands() -> list[list[str]]:
    commands = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if ">" in words:
                    words = words[: words.index(">")]
                if words[:1] == ["seedfast"]:
                    commands.append(words[1:])
    return commands


def test_every_seedfast_command_in_the_readme_parses():
    commands = _seedfast_commands()
    assert {c[0] for c in commands} >= {"demo", "tokenize", "detokenize", "generate", "caption", "train", "budget"}
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)  # exits (fails the test) on an unknown command or flag
        assert callable(args.func), argv


def test_quick_start_is_two_commands_and_ci_runs_the_second():
    blocks = re.findall(r"```bash\n(.*?)```", _section("Quick start"), re.S)
    assert len(blocks) == 2 and all(len(b.strip().splitlines()) == 1 for b in blocks)
    main, tests = (b.strip() for b in blocks)
    assert main.endswith("seedfast demo") and main.startswith("pip install")
    assert tests in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_no_placeholder_left():
    assert not re.search(r"\b[A-Z]+_TABLE\b|TODO|TBD", README)
