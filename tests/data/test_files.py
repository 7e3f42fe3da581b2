"""Real-data loaders: folder, webdataset tar and JSONL, built in tmp_path from procedural
renders so that every loaded image can be compared with what was written."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from seedfast.data import (
    DatasetError,
    ImageCaptionFiles,
    ProceduralConfig,
    ProceduralDataset,
    TarImageCaptions,
    iter_batches,
    open_image_captions,
)

COUNT = 7


@pytest.fixture(scope="module")
def samples():
    return list(ProceduralDataset(ProceduralConfig(heldout_size=COUNT), "heldout"))


def _png(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def _folder(tmp_path, samples):
    root = tmp_path / "folder"
    (root / "sub").mkdir(parents=True)
    for i, sample in enumerate(samples):
        stem = root / ("sub" if i % 2 else "") / f"{i:02d}"
        stem.with_suffix(".png").write_bytes(_png(sample.image))
        stem.with_suffix(".txt").write_text(sample.caption + "\n", encoding="utf-8")
    (root / "notes.md").write_text("not a sample")
    return root


def _tar(tmp_path, samples, name="data.tar", json_from=4):
    path = tmp_path / name
    with tarfile.open(path, "w:gz" if name.endswith(".gz") else "w") as archive:
        for i, sample in enumerate(samples):
            caption = (json.dumps({"caption": sample.caption}), "json") if i >= json_from else (sample.caption, "txt")
            for data, extension in ((_png(sample.image), "png"), (caption[0].encode(), caption[1])):
                info = tarfile.TarInfo(f"shard/{i:02d}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def _jsonl(tmp_path, samples):
    (tmp_path / "images").mkdir()
    lines = []
    for i, sample in enumerate(samples):
        path = tmp_path / "images" / f"{i}.png"
        path.write_bytes(_png(sample.image))
        image = str(path) if i == 0 else f"images/{i}.png"
        lines.append(json.dumps({"image": image, "caption": sample.caption}))
        if i == 2:
            lines.append("")
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _check_loaded(loaded, samples):
    assert len(loaded) == len(samples)
    for got, expected in zip(loaded, samples):
        assert torch.equal(got.image, expected.image)
        assert got.caption == expected.caption and got.truth is None


def test_folder(tmp_path, samples):
    dataset = open_image_captions(_folder(tmp_path, samples), 64)
    assert isinstance(dataset, ImageCaptionFiles) and len(dataset) == COUNT
    by_key = {sample.key: sample for sample in dataset}
    assert sorted(by_key) == sorted(("sub/" if i % 2 else "") + f"{i:02d}" for i in range(COUNT))
    _check_loaded([by_key[("sub/" if i % 2 else "") + f"{i:02d}"] for i in range(COUNT)], samples)


def test_tar_plain_and_compressed(tmp_path, samples):
    for name in ("data.tar", "data.tar.gz"):
        dataset = open_image_captions(_tar(tmp_path, samples, name), 64)
        assert isinstance(dataset, TarImageCaptions)
        loaded = list(dataset)
        assert [s.key for s in loaded] == [f"shard/{i:02d}" for i in range(COUNT)]
        _check_loaded(loaded, samples)


def test_jsonl(tmp_path, samples):
    dataset = open_image_captions(_jsonl(tmp_path, samples), 64)
    assert isinstance(dataset, ImageCaptionFiles)
    _check_loaded(list(dataset), samples)


def test_resizing_to_the_requested_size(tmp_path, samples):
    root = _folder(tmp_path, samples)
    for resample, pil_filter in (("bicubic", Image.Resampling.BICUBIC), ("bilinear", Image.Resampling.BILINEAR)):
        sample = open_image_captions(root, 24, resample=resample)[0]
        source = Image.fromarray(samples[0].image.permute(1, 2, 0).numpy())
        expected = np.asarray(source.resize((24, 24), pil_filter))
        assert sample.image.shape == (3, 24, 24) and sample.image.dtype == torch.uint8
        assert np.array_equal(sample.image.permute(1, 2, 0).numpy(), expected)
    wide = tmp_path / "wide"
    wide.mkdir()
    Image.new("RGB", (50, 10), (0, 0, 255)).save(wide / "a.jpg")
    Image.new("RGBA", (10, 30), (255, 0, 0, 0)).save(wide / "b.webp", lossless=True)
    for stem in ("a", "b"):
        (wide / f"{stem}.txt").write_text(stem)
    first, second = open_image_captions(wide, 16)
    assert first.image.shape == second.image.shape == (3, 16, 16)
    assert first.image[2].float().mean() > 240 and first.image[0].float().mean() < 15
    # Fully transparent pixels are composited onto white.
    assert (second.image == 255).all()


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_are_disjoint_and_complete(tmp_path, samples, world_size):
    for folder in ("f", "j"):
        (tmp_path / folder).mkdir()
    opened = [_folder(tmp_path / "f", samples), _tar(tmp_path, samples), _jsonl(tmp_path / "j", samples)]
    for path in opened:
        everything = sorted(s.key for s in open_image_captions(path, 16))
        shards = [[s.key for s in open_image_captions(path, 16, rank=r, world_size=world_size)]
                  for r in range(world_size)]
        keys = [key for shard in shards for key in shard]
        assert sorted(keys) == everything and len(set(keys)) == len(keys)
        assert min(len(shard) for shard in shards) >= COUNT // world_size


def test_batches_from_files(tmp_path, samples):
    batches = list(iter_batches(open_image_captions(_tar(tmp_path, samples), 32), 3))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert batches[0].images.shape == (3, 3, 32, 32) and batches[0].truths == [None] * 3
    folder = open_image_captions(_folder(tmp_path, samples), 32)
    assert folder.batch([0, 1]).images.shape == (2, 3, 32, 32)


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found") as error:
        open_image_captions(tmp_path / "nowhere.tar")
    assert "nowhere.tar" in _one_line(error)
    (tmp_path / "data.csv").write_text("x")
    with pytest.raises(DatasetError, match="expected a folder, a .tar or a .jsonl"):
        open_image_captions(tmp_path / "data.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        open_image_captions(tmp_path / "empty")


def test_undecodable_image_is_named(tmp_path, samples):
    root = _folder(tmp_path, samples)
    (root / "broken.png").write_bytes(b"not a png at all")
    (root / "broken.txt").write_text("caption")
    with pytest.raises(DatasetError, match="cannot decode image") as error:
        list(open_image_captions(root, 32))
    assert "broken.png" in _one_line(error)
    path = tmp_path / "broken.tar"
    with tarfile.open(path, "w") as archive:
        for name, data in (("k.jpg", b"\xff\xd8 garbage"), ("k.txt", b"caption")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(DatasetError, match="cannot decode image") as error:
        list(open_image_captions(path, 32))
    assert "k.jpg" in _one_line(error)


def test_missing_caption_is_named(tmp_path, samples):
    root = _folder(tmp_path, samples)
    (root / "sub" / "01.txt").unlink()
    with pytest.raises(DatasetError, match="caption file missing") as error:
        open_image_captions(root, 32)
    assert "01.png" in _one_line(error)
    path = tmp_path / "nocaption.tar"
    with tarfile.open(path, "w") as archive:
        for name in ("a.png", "a.txt", "b.png", "c.txt"):
            data = _png(samples[0].image) if name.endswith(".png") else b"caption"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    # Every rank fails alike, also the one that would not read b.png.
    for rank in (0, 1):
        with pytest.raises(DatasetError, match="caption missing for image") as error:
            list(open_image_captions(path, 32, rank=rank, world_size=2))
        assert "b.png" in _one_line(error)


@pytest.mark.parametrize("line,problem", [
    ('{"image": "a.png", "caption": ', "not valid JSON"),
    ('{"image": "a.png"}', "field 'caption' missing"),
    ('{"caption": "x"}', "field 'image' missing"),
    ('{"image": 3, "caption": "x"}', "field 'image' not a string"),
    ('["a.png", "x"]', "expected a JSON object"),
])
def test_bad_jsonl_lines_are_named(tmp_path, line, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"image": "a.png", "caption": "fine"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=problem) as error:
        open_image_captions(path)
    assert "bad.jsonl line 3" in _one_line(error)


def test_jsonl_image_that_does_not_exist(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"image": "gone.png", "caption": "x"}\n', encoding="utf-8")
    dataset = open_image_captions(path)
    with pytest.raises(DatasetError, match="does not exist") as error:
        dataset[0]
    assert "data.jsonl line 1" in _one_line(error) and "gone.png" in _one_line(error)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DatasetError, match="holds no samples"):
        open_image_captions(tmp_path / "empty.jsonl")


def test_bad_json_caption_and_bad_options(tmp_path, samples):
    path = tmp_path / "json.tar"
    with tarfile.open(path, "w") as archive:
        for name, data in (("a.png", _png(samples[0].image)), ("a.json", b'{"text": "no caption field"}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(DatasetError, match="string field 'caption'") as error:
        list(TarImageCaptions(path))
    assert "a.json" in _one_line(error)
    (tmp_path / "junk.tar").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DatasetError, match="cannot read tar .*junk.tar"):
        list(TarImageCaptions(tmp_path / "junk.tar"))
    with pytest.raises(ValueError, match="resample"):
        open_image_captions(path, resample="nearest")
    with pytest.raises(ValueError, match="rank must be in"):
        open_image_captions(path, rank=1, world_size=1)
    with pytest.raises(ValueError, match="image_size"):
        TarImageCaptions(path, 0)
