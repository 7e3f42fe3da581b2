"""Precomputed frozen-encoder features train stages 1–3 exactly as the online path does."""
import numpy as np
import pytest
import torch

from seedfast.data import ProceduralConfig, ProceduralDataset
from seedfast.models.preprocess import clip_preprocess
from seedfast.train.stages import build_tokenizer

from seedfast.train.config import ConfigError
from seedfast.train.features import FeatureStore, precompute
from seedfast.train.loop import train

from .helpers import max_diff, steps_of, tiny, weights

# 80 samples: epochs wrap within a few steps. eps = 1 keeps AdamW's update linear in the gradient,
# so the comparison sees the features' agreement, not rounding amplified where v ≈ 0 (the ViT
# runs on batches of another size when precomputing).
SMALL = ("data.train_size=80", "optim.eps=1.0")


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    precompute(tiny(1, *SMALL), root / "vit", device="cpu", progress=False)
    train(tiny(1, *SMALL), root / "s1", steps=3, device="cpu", progress=False)
    return root


def test_stage1_from_vit_features_equals_online(stage1, tmp_path):
    store = FeatureStore(stage1 / "vit")
    assert store.kind == "vit" and len(store) == 80 and not store.has_target
    batch = store.read(np.array([79, 0, 5]))
    assert batch.features.shape == (3, 17, 48) and batch.indices.tolist() == [79, 0, 5]
    model, _ = build_tokenizer(tiny(1, *SMALL), 1)
    data = ProceduralDataset(ProceduralConfig(image_size=32, train_size=80)).batch([79, 0, 5])
    assert batch.captions == data.captions
    with torch.no_grad():
        online = model.visual_encoder(clip_preprocess(data.images, size=32))
    torch.testing.assert_close(batch.features, online, rtol=1e-5, atol=1e-5)
    train(tiny(1, *SMALL, f'data.features="{stage1 / "vit"}"'), tmp_path, steps=3, device="cpu", progress=False)
    assert max_diff(weights(tmp_path, 3), weights(stage1 / "s1", 3)) < 1e-6


def test_stage2_from_causal_features_equals_online(stage1, tmp_path):
    init = f'train.init="{stage1 / "s1" / "final"}"'
    precompute(tiny(2, *SMALL, init), tmp_path / "causal", device="cpu", progress=False)
    store = FeatureStore(tmp_path / "causal")
    assert store.kind == "causal" and store.has_target and store.meta["target"] == "stand-in"
    train(tiny(2, *SMALL, init), tmp_path / "online", steps=3, device="cpu", progress=False)
    train(tiny(2, *SMALL, init, f'data.features="{tmp_path / "causal"}"'), tmp_path / "cached", steps=3,
          device="cpu", progress=False)
    assert max_diff(weights(tmp_path / "online", 3), weights(tmp_path / "cached", 3)) < 1e-6


def test_stage3_codes_from_causal_features_equal_online(stage1, tmp_path):
    """Stage 3 quantises the pool's causal features: the same rows, so the same LLM weights, as
    encoding the images; a pool of another encoder (stage 1's fresh Q-Former) is refused."""
    init = f'train.init="{stage1 / "s1" / "final"}"'
    precompute(tiny(2, *SMALL, init), tmp_path / "causal", device="cpu", progress=False)
    result = train(tiny(2, *SMALL, init), tmp_path / "s2", steps=2, device="cpu", progress=False)
    coder = f'data.tokenizer="{result.final}"'
    # Every row in both directions, captions and codes, so a wrong code changes the loss.
    common = (*SMALL, coder, "data.image_size=32", "data.seq_len=48", "train.global_batch=8")
    train(tiny(3, *common), tmp_path / "online", steps=3, device="cpu", progress=False)
    train(tiny(3, *common, f'data.features="{tmp_path / "causal"}"'), tmp_path / "cached", steps=3,
          device="cpu", progress=False)
    online, cached = steps_of(tmp_path / "online"), steps_of(tmp_path / "cached")
    assert [r["loss"] for r in online] == [r["loss"] for r in cached]
    assert max_diff(weights(tmp_path / "online", 3), weights(tmp_path / "cached", 3)) == 0
    # Stage 1's causal features (its Q-Former before stage 1 trained it) do not fit stage 2's tokenizer.
    precompute(tiny(2, *SMALL), tmp_path / "other", device="cpu", progress=False)
    with pytest.raises(ConfigError, match="computed by other frozen weights"):
        train(tiny(3, *common, f'data.features="{tmp_path / "other"}"'), tmp_path / "x", steps=1, device="cpu",
              progress=False)


def test_features_that_do_not_fit_the_run_are_refused(stage1):
    where = f'data.features="{stage1 / "vit"}"'
    with pytest.raises(ConfigError, match="computed by other frozen weights"):
        train(tiny(1, *SMALL, where, "train.seed=1"), stage1 / "x", steps=1, device="cpu", progress=False)
    with pytest.raises(ConfigError, match="holds no stage-2 targets; precompute with --stage 2"):
        train(tiny(2, *SMALL, where), stage1 / "y", steps=1, device="cpu", progress=False)
    with pytest.raises(ConfigError, match="holds ViT features; stage 3 makes codes from causal"):
        train(tiny(3, where), stage1 / "z", steps=1, device="cpu", progress=False)


def test_damaged_or_unfinished_stores_are_refused(stage1, tmp_path):
    import shutil

    shutil.copytree(stage1 / "vit", tmp_path / "vit")
    shard = next((tmp_path / "vit").glob("shard-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"shard-r000-00000\.safetensors: expected \d+ bytes, got 1000"):
        FeatureStore(tmp_path / "vit")
    (tmp_path / "vit" / "features.json").unlink()
    with pytest.raises(ValueError, match="no features.json; not a features folder, or its precompute did not finish"):
        FeatureStore(tmp_path / "vit")


def _image_caption_files(folder, n: int) -> list[tuple[bytes, str]]:
    """``n`` procedural scenes as PNG bytes with captions (real-data stand-ins)."""
    import io

    from PIL import Image

    data = ProceduralDataset(ProceduralConfig(image_size=40, train_size=n)).batch(range(n))
    out = []
    for image, caption in zip(data.images, data.captions):
        buf = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
        out.append((buf.getvalue(), caption.upper() + "."))  # cleaning lower-cases and drops the stop
    return out


def test_a_folder_trains_and_a_tar_goes_through_features(tmp_path):
    import io
    import tarfile

    files = _image_caption_files(tmp_path, 16)
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, (png, caption) in enumerate(files):
        (folder / f"{i:02d}.png").write_bytes(png)
        (folder / f"{i:02d}.txt").write_text(caption)
    common = ("data.image_size=32", "train.global_batch=8")
    train(tiny(1, *common, f'data.source="{folder}"'), tmp_path / "from-folder", steps=2, device="cpu",
          progress=False)
    tar = tmp_path / "pairs.tar"
    with tarfile.open(tar, "w") as archive:
        for i, (png, caption) in enumerate(files):
            for name, payload in ((f"{i:02d}.png", png), (f"{i:02d}.txt", caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
    with pytest.raises(ValueError, match="is a stream .* run --precompute-features on it"):
        train(tiny(1, *common, f'data.source="{tar}"'), tmp_path / "x", steps=1, device="cpu", progress=False)
    precompute(tiny(1, *common, f'data.source="{tar}"'), tmp_path / "tar-features", device="cpu", progress=False)
    store = FeatureStore(tmp_path / "tar-features")
    assert len(store) == 16 and store.read(np.array([3])).captions == [files[3][1]]
    train(tiny(1, *common, f'data.features="{tmp_path / "tar-features"}"'), tmp_path / "from-tar", steps=2,
          device="cpu", progress=False)
    # Same images, same order of reading (folder sorted by name, tar in archive order): same training.
    assert max_diff(weights(tmp_path / "from-folder", 2), weights(tmp_path / "from-tar", 2)) < 1e-6
