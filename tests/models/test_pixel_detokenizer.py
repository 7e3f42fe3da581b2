"""PixelDetokenizer, the embedded back end: decoding, save/load, the config and its preset.

Its training is tested in tests/train/test_pixel_detokenizer.py; the decoding tests here use a
model trained there, so that decoding has a condition worth following."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")

from seedfast.checkpoint_io import CheckpointError  # noqa: E402
from seedfast.models.detokenizer import SeedDetokenizer  # noqa: E402
from seedfast.models.pixel_detokenizer import (  # noqa: E402
    PIXEL_CONFIG_FILE,
    PIXEL_WEIGHTS_FILE,
    PixelDetokenizer,
    PixelDetokenizerConfig,
)
from tests.models.detokenizer_helpers import (  # noqa: E402, F401 (one_thread: fixture)
    PIXEL_E,
    one_thread,
    small_config,
    trained_colour_model,
)


@pytest.fixture(scope="module")
def trained():
    return trained_colour_model()


def test_pixel_decode_is_deterministic_per_seed(trained):
    model, codes, _ = trained
    first = model.decode(codes, seed=3, steps=4)
    assert torch.equal(first, model.decode(codes, seed=3, steps=4))
    assert (first - model.decode(codes, seed=4, steps=4)).abs().mean() > 1e-3
    together = model.decode(codes, seed=[11, 12, 13, 14], steps=4)
    torch.testing.assert_close(together[2:3], model.decode(codes[2:3], seed=[13], steps=4), atol=1e-5, rtol=0)
    negative = model.decode(codes, seed=3, steps=4, negative_embeddings=codes.flip(0))
    assert negative.shape == first.shape and not torch.equal(negative, first)


def test_pixel_save_load_round_trip(trained, tmp_path):
    model, codes, _ = trained
    model.save(tmp_path / "detok")
    assert {p.name for p in (tmp_path / "detok").iterdir()} == {PIXEL_CONFIG_FILE, PIXEL_WEIGHTS_FILE}
    loaded = SeedDetokenizer.load(tmp_path / "detok", device="cpu")
    assert isinstance(loaded, PixelDetokenizer) and loaded.config == model.config
    assert torch.equal(loaded.decode(codes, seed=5, steps=3), model.decode(codes, seed=5, steps=3))
    with pytest.raises(ValueError, match="runs in float32"):
        SeedDetokenizer.load(tmp_path / "detok", dtype=torch.float16)


def test_pixel_same_seed_same_weights():
    a = PixelDetokenizer(small_config(), device="cpu", seed=3)
    b = PixelDetokenizer(small_config(), device="cpu", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.unet.parameters(), b.unet.parameters()))


def test_pixel_condition_is_unit_rms_and_keeps_zero_rows():
    model = PixelDetokenizer(small_config(), device="cpu")
    embeddings = torch.cat([torch.zeros(1, PIXEL_E), 5 * torch.randn(2, PIXEL_E)]).double()
    condition = model.condition(embeddings)
    assert condition.dtype == torch.float32 and condition.shape == (3, PIXEL_E)
    assert torch.equal(condition[0], torch.zeros(PIXEL_E))
    torch.testing.assert_close(condition[1:].pow(2).mean(dim=1), torch.ones(2))


def test_tiny_preset():
    config = PixelDetokenizerConfig.tiny()
    assert (config.embed_dim, config.image_size, config.channels) == (1024, 32, (16, 32, 64))
    model = SeedDetokenizer.tiny(device="cpu")
    assert isinstance(model, PixelDetokenizer)
    assert model.embed_dim == 1024 and model.image_size == 32
    assert 0.5e6 < model.num_parameters() < 1e6
    images = model.decode(torch.randn(2, 1024), steps=2)
    assert images.shape == (2, 3, 32, 32)
    assert PixelDetokenizerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_pixel_errors(tmp_path):
    model = PixelDetokenizer(small_config(), device="cpu")
    with pytest.raises(ValueError, match=r"embeddings must have shape \[B, 16\]"):
        model.decode(torch.zeros(2, 1024))
    with pytest.raises(ValueError, match="divisible by 2"):
        small_config(image_size=9)
    with pytest.raises(ValueError, match="norm_groups"):
        small_config(channels=(6, 16))
    with pytest.raises(ValueError, match="attention_levels"):
        small_config(attention_levels=(2,))
    with pytest.raises(ValueError, match="cond_dropout"):
        small_config(cond_dropout=1.0)
    with pytest.raises(ValueError, match="unknown fields"):
        PixelDetokenizerConfig.from_dict({"embed_dim": 4, "colour": 1})
    with pytest.raises(TypeError, match="must be a PixelDetokenizerConfig"):
        PixelDetokenizer({"embed_dim": 4}, device="cpu")
    model.save(tmp_path / "a")
    (tmp_path / "a" / PIXEL_WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=PIXEL_WEIGHTS_FILE):
        PixelDetokenizer.load(tmp_path / "a")
    model.save(tmp_path / "b")
    header = json.loads((tmp_path / "b" / PIXEL_CONFIG_FILE).read_text())
    header["config"]["channels"] = [8, 24]
    (tmp_path / "b" / PIXEL_CONFIG_FILE).write_text(json.dumps(header))
    with pytest.raises(ValueError, match="do not match the config"):
        PixelDetokenizer.load(tmp_path / "b")


def test_pixel_load_refuses_damaged_weights_naming_the_file(tmp_path):
    model = PixelDetokenizer(small_config(), device="cpu")
    model.save(tmp_path / "detok")
    weights = tmp_path / "detok" / PIXEL_WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # a flipped byte inside the tensor data: safetensors alone would load it
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{PIXEL_WEIGHTS_FILE}.*SHA-256"):
        PixelDetokenizer.load(tmp_path / "detok")
    weights.write_bytes(bytes(data[:-100]))
    with pytest.raises(CheckpointError, match=f"{PIXEL_WEIGHTS_FILE}.*truncated"):
        PixelDetokenizer.load(tmp_path / "detok")


def test_pixel_load_reads_folders_written_before_checksums(tmp_path, caplog):
    model = PixelDetokenizer(small_config(), device="cpu")
    model.save(tmp_path / "detok")
    header_path = tmp_path / "detok" / PIXEL_CONFIG_FILE
    header = json.loads(header_path.read_text())
    del header["files"]
    header["version"] = 1
    header_path.write_text(json.dumps(header))
    with caplog.at_level("WARNING"):
        loaded = PixelDetokenizer.load(tmp_path / "detok")
    assert "without checksums" in caplog.text
    for name, tensor in model.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[name], tensor), name


def _quadrant_task(steps, batch, seed=0):
    """Embedding = a fixed random projection of which quadrants are lit; image = those quadrants."""
    patterns = torch.tensor([[a, b, c, d] for a in (0, 1) for b in (0, 1) for c in (0, 1) for d in (0, 1)],
                            dtype=torch.float32)
    codes = patterns @ torch.randn(4, PIXEL_E, generator=torch.Generator().manual_seed(5)) * 2 + 0.5
    images = patterns.view(-1, 1, 2, 2).repeat_interleave(4, 2).repeat_interleave(4, 3).expand(-1, 3, 8, 8)
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        ids = torch.randint(0, len(patterns), (batch,), generator=generator)
        batches.append((codes[ids], images[ids].clone()))
    return codes, images, batches


def test_pixel_condition_map_is_part_of_the_unet_and_is_used(tmp_path):
    from seedfast.train.pixel_detokenizer import make_optimizer, train_step

    model = PixelDetokenizer(small_config(map_channels=2, map_size=4), device="cpu", seed=1)
    assert model.unet.config.in_channels == 5
    assert tuple(model.unet.condition_map.weight.shape) == (2 * 4 * 4, PIXEL_E)
    plain = PixelDetokenizer(small_config(), device="cpu", seed=1)
    assert not hasattr(plain.unet, "condition_map") and plain.unet.config.in_channels == 3
    sample, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 500])
    condition = model.condition(torch.randn(2, PIXEL_E))
    before = model.predict(sample, t, condition)
    with torch.no_grad():
        model.unet.condition_map.weight.mul_(3)
    assert not torch.allclose(before, model.predict(sample, t, condition))
    optimizer = make_optimizer(model)
    weight = model.unet.condition_map.weight.detach().clone()
    train_step(model, optimizer, torch.randn(4, PIXEL_E), torch.rand(4, 3, 8, 8), generator=torch.Generator())
    assert not torch.equal(weight, model.unet.condition_map.weight)
    model.save(tmp_path / "m")
    loaded = SeedDetokenizer.load(tmp_path / "m", device="cpu")
    assert loaded.config == model.config
    codes = torch.randn(2, PIXEL_E)
    assert torch.equal(loaded.decode(codes, seed=2, steps=3), model.decode(codes, seed=2, steps=3))


@pytest.mark.usefixtures("one_thread")
def test_pixel_condition_map_learns_a_layout():
    from seedfast.train.pixel_detokenizer import train_pixel_detokenizer

    codes, images, batches = _quadrant_task(steps=150, batch=32)
    errors = {}
    for channels in (2, 0):
        model = PixelDetokenizer(small_config(map_channels=channels, map_size=2), device="cpu", seed=0)
        train_pixel_detokenizer(model, batches, steps=150, lr=5e-3, progress=False)
        decoded = model.decode(codes, seed=0, steps=8, guidance_scale=1.0)
        errors[channels] = (decoded - images).abs().mean().item()
    # Lit quadrants near 1 and dark ones near 0 (drawing the mean everywhere errs by 0.5); the
    # same budget through the class embedding alone learned the layout less well (0.17 vs 0.10).
    assert errors[2] < 0.15 and errors[2] < 0.75 * errors[0], errors


def test_pixel_condition_map_errors_and_older_configs():
    with pytest.raises(ValueError, match="map_channels must be an int >= 0"):
        small_config(map_channels=-1)
    with pytest.raises(ValueError, match="map_size must be an int >= 1 that divides image_size=8"):
        small_config(map_channels=2, map_size=3)
    fields = small_config().to_dict()
    del fields["map_channels"], fields["map_size"]
    assert PixelDetokenizerConfig.from_dict(fields) == small_config()
