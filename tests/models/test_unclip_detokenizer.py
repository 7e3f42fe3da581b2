"""UnclipDetokenizer on a tiny random SD-unCLIP pipeline, against diffusers' own
StableUnCLIPImg2ImgPipeline call; also the argument checks that SeedDetokenizer.decode shares
with every back end. Nothing is downloaded."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from seedfast.models.detokenizer import SeedDetokenizer  # noqa: E402
from seedfast.models.unclip_detokenizer import UnclipDetokenizer  # noqa: E402
from tests.models.detokenizer_helpers import (  # noqa: E402, F401 (one_thread: fixture)
    E,
    TEXT_LEN,
    one_thread,
    random_embeddings,
    tiny_unclip_pipeline,
)


@pytest.fixture(scope="module")
def unclip_dir(tmp_path_factory):
    """The tiny pipeline saved as a diffusers directory, the way users hold the real one."""
    root = tmp_path_factory.mktemp("unclip")
    tiny_unclip_pipeline(root).save_pretrained(root / "pipeline")
    return root / "pipeline"


@pytest.fixture(scope="module")
def unclip(unclip_dir):
    return SeedDetokenizer.from_unclip(unclip_dir, device="cpu")


def test_unclip_loads_and_decodes_batches(unclip):
    assert isinstance(unclip, UnclipDetokenizer)
    assert (unclip.embed_dim, unclip.image_size, unclip.dtype) == (E, 16, torch.float32)
    assert (unclip.default_steps, unclip.default_guidance_scale, unclip.noise_level) == (20, 10.0, 0)
    # Decoding needs neither CLIP encoder; the empty prompt was encoded once.
    assert unclip.pipeline.image_encoder is None and unclip.pipeline.text_encoder is None
    assert unclip.prompt_embeds.shape == (1, TEXT_LEN, 16)
    images = unclip.decode(random_embeddings(3), seed=1, steps=3)
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(unclip.decode(random_embeddings(3), seed=1, steps=3), images)
    other = unclip.decode(random_embeddings(3), seed=2, steps=3)
    assert (other - images).abs().mean() > 1e-3


@pytest.mark.parametrize("guidance", [1.0, 10.0])
def test_unclip_matches_the_diffusers_pipeline(unclip_dir, guidance):
    """Same latents and generator state ⇒ the diffusers pipeline's own call gives the same images."""
    from diffusers import StableUnCLIPImg2ImgPipeline

    embeddings = random_embeddings(2, seed=3)
    reference_pipeline = StableUnCLIPImg2ImgPipeline.from_pretrained(unclip_dir, local_files_only=True)
    reference_pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(7)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    expected = reference_pipeline(
        prompt=["", ""], image_embeds=embeddings, latents=latents, generator=generator, num_inference_steps=4,
        guidance_scale=guidance, noise_level=0, output_type="pt",
    ).images
    ours = UnclipDetokenizer.from_pretrained(unclip_dir, device="cpu").decode(
        embeddings, seed=7, steps=4, guidance_scale=guidance
    )
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_load_dispatches_to_unclip(unclip_dir, unclip):
    loaded = SeedDetokenizer.load(unclip_dir, device="cpu")
    assert isinstance(loaded, UnclipDetokenizer)
    assert torch.equal(loaded.decode(random_embeddings(1), steps=2), unclip.decode(random_embeddings(1), steps=2))


def test_unclip_per_row_seeds_do_not_depend_on_the_batch(unclip):
    embeddings = random_embeddings(3, seed=4)
    together = unclip.decode(embeddings, seed=[5, 6, 7], steps=2)
    alone = unclip.decode(embeddings[1:2], seed=[6], steps=2)
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=0)


def test_unclip_negativeembeddings(unclip):
    embeddings = random_embeddings(2, seed=8)
    zeros_negative = unclip.decode(embeddings, seed=0, steps=2)
    negative = unclip.decode(embeddings, seed=0, steps=2, negative_embeddings=random_embeddings(2, seed=9))
    assert negative.shape == zeros_negative.shape
    assert (negative - zeros_negative).abs().mean() > 1e-4


def test_unclip_accepts_other_dtypes(unclip):
    embeddings = random_embeddings(1, seed=10)
    torch.testing.assert_close(
        unclip.decode(embeddings.double(), steps=2), unclip.decode(embeddings, steps=2), atol=1e-6, rtol=0
    )


def test_unclip_errors(unclip, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        SeedDetokenizer.from_unclip(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        SeedDetokenizer.from_unclip(tmp_path)
    with pytest.raises(ValueError, match=r"shape \[B, 8\].*\(2, 16\)"):
        unclip.decode(torch.zeros(2, 16))
    with pytest.raises(ValueError, match="2 dimensions"):
        unclip.decode(torch.zeros(E))
    with pytest.raises(ValueError, match="at least one"):
        unclip.decode(torch.zeros(0, E))
    with pytest.raises(TypeError, match="dtype"):
        unclip.decode(torch.zeros(1, E, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        unclip.decode([[0.0] * E])
    with pytest.raises(ValueError, match="guidance_scale"):
        unclip.decode(torch.zeros(1, E), guidance_scale=0.5)
    with pytest.raises(ValueError, match="negative_embeddings are only used"):
        unclip.decode(torch.zeros(1, E), guidance_scale=1.0, negative_embeddings=torch.zeros(1, E))
    with pytest.raises(ValueError, match="negative_embeddings must have the shape"):
        unclip.decode(torch.zeros(2, E), negative_embeddings=torch.zeros(1, E))
    with pytest.raises(ValueError, match="steps"):
        unclip.decode(torch.zeros(1, E), steps=0)
    with pytest.raises(ValueError, match="one per embedding"):
        unclip.decode(torch.zeros(2, E), seed=[1])
    with pytest.raises(ValueError, match=r"seed must be in"):
        unclip.decode(torch.zeros(1, E), seed=-1)
    with pytest.raises(TypeError, match=r"seed\[0\] must be an int"):
        unclip.decode(torch.zeros(1, E), seed=[1.5])


def test_unclip_rejects_a_non_unclip_unet(tmp_path):
    pipeline = tiny_unclip_pipeline(tmp_path, unet_embed_dim=2 * E)
    with pytest.raises(ValueError, match="not an unCLIP UNet"):
        UnclipDetokenizer(pipeline, device="cpu")
    with pytest.raises(TypeError, match="StableUnCLIPImg2ImgPipeline"):
        UnclipDetokenizer(object(), device="cpu")
