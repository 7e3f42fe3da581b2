"""seedfast.checkpoint_io: folders round-trip, a write that fails half-way leaves the old folder
as it was, and every kind of damage is refused with the file named."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from seedfast import checkpoint_io as io
from seedfast.checkpoint_io import CheckpointError, read_folder, write_folder


def _files(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "weights.safetensors": {"a": torch.randn(3, 4, generator=g), "b": torch.arange(5)},
        "meta.json": {"format": "test", "seed": seed},
        "notes.bin": bytes(range(seed, seed + 10)),
    }


def _same(got: dict, want: dict) -> None:
    assert got["meta.json"] == want["meta.json"] and got["notes.bin"] == want["notes.bin"]
    tensors = got["weights.safetensors"]
    assert tensors.keys() == want["weights.safetensors"].keys()
    assert all(torch.equal(tensors[k], v) for k, v in want["weights.safetensors"].items())


def _flip_byte(path: Path, at: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_round_trip_with_a_separate_manifest(tmp_path):
    folder = write_folder(tmp_path / "ckpt", _files(), metadata={"format": "test"})
    assert {p.name for p in folder.iterdir()} == {"weights.safetensors", "meta.json", "notes.bin", io.MANIFEST_FILE}
    got = read_folder(folder)
    _same(got, _files())
    record = got[io.MANIFEST_FILE][io.FILES_KEY]
    assert set(record) == {"weights.safetensors", "meta.json", "notes.bin"}
    for name, info in record.items():
        assert info == {"bytes": (folder / name).stat().st_size, "sha256": io.sha256(folder / name)}
    from safetensors import safe_open

    with safe_open(str(folder / "weights.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "test"}


def test_one_of_the_files_is_the_manifest(tmp_path):
    folder = write_folder(tmp_path / "ckpt", _files(), manifest="meta.json")
    assert io.MANIFEST_FILE not in {p.name for p in folder.iterdir()}
    got = read_folder(folder, manifest="meta.json")
    assert got["meta.json"]["format"] == "test" and set(got["meta.json"][io.FILES_KEY]) == {
        "weights.safetensors", "notes.bin"}
    assert torch.equal(got["weights.safetensors"]["b"], torch.arange(5))
    with pytest.raises(ValueError, match="must be a JSON object without a 'files' key"):
        write_folder(tmp_path / "bad", {"meta.json": {"files": 1}}, manifest="meta.json")


def test_replacing_a_folder(tmp_path):
    write_folder(tmp_path / "ckpt", _files(0))
    write_folder(tmp_path / "ckpt", {"notes.bin": b"new"})
    got = read_folder(tmp_path / "ckpt")
    assert got["notes.bin"] == b"new" and set(got) == {"notes.bin", io.MANIFEST_FILE}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary or old folder left


def test_a_write_that_fails_half_way_leaves_the_old_folder(tmp_path):
    write_folder(tmp_path / "ckpt", _files(0))
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}
    # The second file cannot be serialised: the first is already on disk in the temporary folder.
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_folder(tmp_path / "ckpt", {"notes.bin": b"new", "meta.json": {"x": object()}})
    assert {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    _same(read_folder(tmp_path / "ckpt"), _files(0))


def test_a_crash_at_the_rename_leaves_the_old_folder(tmp_path, monkeypatch):
    write_folder(tmp_path / "ckpt", _files(0))

    def crash(src, dst):
        raise KeyboardInterrupt  # as if killed at the rename

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_folder(tmp_path / "ckpt", _files(1))
    monkeypatch.undo()
    _same(read_folder(tmp_path / "ckpt"), _files(0))


def test_an_error_between_the_two_renames_puts_the_old_folder_back(tmp_path, monkeypatch):
    write_folder(tmp_path / "ckpt", _files(0))
    real_replace, calls = os.replace, []

    def second_rename_fails(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="disk gone"):
        write_folder(tmp_path / "ckpt", _files(1))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    _same(read_folder(tmp_path / "ckpt"), _files(0))


def test_a_kill_between_the_two_renames_is_named_and_recovered(tmp_path):
    write_folder(tmp_path / "ckpt", _files(0))
    # What a process killed between the renames leaves: the complete old folder, set aside.
    os.replace(tmp_path / "ckpt", tmp_path / ".old-ckpt")
    with pytest.raises(CheckpointError, match=r"manifest\.json: missing; .*previous version in .*\.old-ckpt"):
        read_folder(tmp_path / "ckpt")
    _same(read_folder(tmp_path / ".old-ckpt"), _files(0))
    write_folder(tmp_path / "ckpt", _files(2))  # the next write keeps it until its own is in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    _same(read_folder(tmp_path / "ckpt"), _files(2))


@pytest.mark.parametrize("damage, message", [
    (lambda f: _flip_byte(f / "weights.safetensors"), r"weights\.safetensors: SHA-256 does not match"),
    (lambda f: _flip_byte(f / "notes.bin", 0), r"notes\.bin: SHA-256 does not match"),
    (lambda f: (f / "weights.safetensors").write_bytes((f / "weights.safetensors").read_bytes()[:-7]),
     r"weights\.safetensors: \d+ bytes, expected \d+ \(truncated or overwritten\)"),
    (lambda f: (f / "meta.json").unlink(), r"meta\.json: missing from the checkpoint"),
    (lambda f: (f / io.MANIFEST_FILE).unlink(), r"manifest\.json: missing; .* is not a complete checkpoint"),
    (lambda f: (f / io.MANIFEST_FILE).write_text("{"), r"manifest\.json: not valid JSON"),
    (lambda f: (f / io.MANIFEST_FILE).write_text('{"files": [1]}'), r"manifest\.json: no valid 'files' record"),
])
def test_damage_is_refused_naming_the_file(tmp_path, damage, message):
    folder = write_folder(tmp_path / "ckpt", _files())
    damage(folder)
    with pytest.raises(CheckpointError, match=message) as info:
        read_folder(folder)
    assert str(info.value).startswith(str(folder))


def test_recorded_but_unreadable_files_are_refused(tmp_path):
    folder = tmp_path / "ckpt"
    write_folder(folder, {"weights.safetensors": b"not safetensors", "meta.json": b"{"})
    with pytest.raises(CheckpointError, match=r"weights\.safetensors: unreadable safetensors file"):
        read_folder(folder)
    write_folder(folder, {"meta.bin": b"", "meta.json": b"{"})
    with pytest.raises(CheckpointError, match=r"meta\.json: not valid JSON"):
        read_folder(folder)


def test_single_files(tmp_path):
    path = io.save_safetensors(tmp_path / "t.safetensors", {"x": torch.ones(2)}, metadata={"k": "v"})
    assert torch.equal(io.load_safetensors(path)["x"], torch.ones(2))
    assert json.loads(io.save_json(tmp_path / "c.json", {"a": [1]}).read_text()) == {"a": [1]}
    assert io.load_json(tmp_path / "c.json") == {"a": [1]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "t.safetensors"]
    with pytest.raises(CheckpointError, match=r"nope\.safetensors: missing"):
        io.load_safetensors(tmp_path / "nope.safetensors")
    (tmp_path / "c.json").write_text("[")
    with pytest.raises(CheckpointError, match=r"c\.json: not valid JSON"):
        io.load_json(tmp_path / "c.json")


def test_bad_names_and_contents(tmp_path):
    for name in ("../x", "a/b", "", ".."):
        with pytest.raises(ValueError, match="plain names"):
            write_folder(tmp_path / "ckpt", {name: b""})
    with pytest.raises(TypeError, match="takes bytes"):
        write_folder(tmp_path / "ckpt", {"x.bin": "text"})
    with pytest.raises(TypeError, match="mapping of names to tensors"):
        write_folder(tmp_path / "ckpt", {"x.safetensors": [torch.ones(1)]})
    assert not (tmp_path / "ckpt").exists() and not list(tmp_path.iterdir())


def test_key_mismatch_error_lists_the_keys():
    err = CheckpointError.for_keys("w.safetensors", "the model", {"a": (2,)}, {"b": (3, 1)}, {"c": ((1,), (2,))})
    assert isinstance(err, ValueError)
    assert err.missing == {"a": (2,)} and err.unexpected == {"b": (3, 1)} and err.mismatched == {"c": ((1,), (2,))}
    text = str(err)
    assert text.startswith("w.safetensors does not fit the model:")
    assert "a [2]" in text and "b [3, 1]" in text and "c: expected [1], got [2]" in text
    assert CheckpointError("plain").missing == {}


def test_one_checkpoint_error_for_the_package():
    from seedfast.models.checkpoints import CheckpointError as models_error
    from seedfast.train import CheckpointError as train_lazy_error
    from seedfast.train.checkpoint import CheckpointError as train_error

    assert models_error is train_error is train_lazy_error is CheckpointError


def test_a_byte_flipped_tokenizer_fails_to_load(tmp_path):
    from seedfast.models.seed_tokenizer import SeedTokenizer
    from seedfast.models.tokenizer_config import SeedTokenizerConfig

    path = SeedTokenizer(SeedTokenizerConfig.tiny()).save(tmp_path / "tok")
    _flip_byte(path / "model.safetensors", -100)
    with pytest.raises(CheckpointError, match=r"tok/model\.safetensors: SHA-256 does not match"):
        SeedTokenizer.load(path)


def test_save_bytes_replaces_atomically(tmp_path, monkeypatch):
    from seedfast import checkpoint_io

    target = tmp_path / "out.png"
    checkpoint_io.save_bytes(target, b"old")
    real_write = checkpoint_io._write

    def full_disk(path, *args, **kwargs):
        real_write(path, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_io, "_write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        checkpoint_io.save_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
