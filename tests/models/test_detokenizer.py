"""SeedDetokenizer: the unCLIP back end on a tiny random SD-unCLIP pipeline (against diffusers'
own StableUnCLIPImg2ImgPipeline call), and the embedded pixel back end (training, decoding,
save/load). Nothing is downloaded."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from seedfast.models.detokenizer import (  # noqa: E402
    PIXEL_CONFIG_FILE,
    PIXEL_WEIGHTS_FILE,
    PixelDetokenizer,
    PixelDetokenizerConfig,
    SeedDetokenizer,
    UnclipDetokenizer,
)

E = 8  # tiny unCLIP embedding size (SEED-2: 1024)
TEXT_LEN = 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are so small that a second intra-op thread only adds synchronisation, and
    on a busy machine OpenMP spin-waiting makes two threads 10-50× slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=TEXT_LEN)


def tiny_unclip_pipeline(tmp_path, *, embed_dim=E, unet_embed_dim=None):
    """A random SD-unCLIP img2img pipeline with the real one's structure at toy sizes:
    8×8×4 latents → 16×16 images, a 1-layer CLIP text encoder, the real schedulers' configs."""
    from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    tokenizer = _tokenizer(tmp_path)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=TEXT_LEN, projection_dim=16,
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        ))
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
            norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16, attention_head_dim=4,
            class_embed_type="projection", projection_class_embeddings_input_dim=2 * (unet_embed_dim or embed_dim),
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
        )
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
            patch_size=8, projection_dim=embed_dim,
        ))
        normalizer = StableUnCLIPImageNormalizer(embedding_dim=embed_dim)
        with torch.no_grad():
            normalizer.mean.normal_(0, 0.5)
            normalizer.std.uniform_(0.5, 2.0)
    return StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=16, size=16),
        image_encoder=image_encoder,
        image_normalizer=normalizer,
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=PNDMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
            set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
        ),
        vae=vae,
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


def _embeddings(batch, dim=E, seed=0):
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# unCLIP back end


def test_unclip_loads_and_decodes_batches(unclip):
    assert isinstance(unclip, UnclipDetokenizer)
    assert (unclip.embed_dim, unclip.image_size, unclip.dtype) == (E, 16, torch.float32)
    assert (unclip.default_steps, unclip.default_guidance_scale, unclip.noise_level) == (20, 10.0, 0)
    # Decoding needs neither CLIP encoder; the empty prompt was encoded once.
    assert unclip.pipeline.image_encoder is None and unclip.pipeline.text_encoder is None
    assert unclip.prompt_embeds.shape == (1, TEXT_LEN, 16)
    images = unclip.decode(_embeddings(3), seed=1, steps=3)
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(unclip.decode(_embeddings(3), seed=1, steps=3), images)
    other = unclip.decode(_embeddings(3), seed=2, steps=3)
    assert (other - images).abs().mean() > 1e-3


@pytest.mark.parametrize("guidance", [1.0, 10.0])
def test_unclip_matches_the_diffusers_pipeline(unclip_dir, guidance):
    """Same latents and generator state ⇒ the diffusers pipeline's own call gives the same images."""
    from diffusers import StableUnCLIPImg2ImgPipeline

    embeddings = _embeddings(2, seed=3)
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
    assert torch.equal(loaded.decode(_embeddings(1), steps=2), unclip.decode(_embeddings(1), steps=2))


def test_unclip_per_row_seeds_do_not_depend_on_the_batch(unclip):
    embeddings = _embeddings(3, seed=4)
    together = unclip.decode(embeddings, seed=[5, 6, 7], steps=2)
    alone = unclip.decode(embeddings[1:2], seed=[6], steps=2)
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=0)


def test_unclip_negative_embeddings(unclip):
    embeddings = _embeddings(2, seed=8)
    zeros_negative = unclip.decode(embeddings, seed=0, steps=2)
    negative = unclip.decode(embeddings, seed=0, steps=2, negative_embeddings=_embeddings(2, seed=9))
    assert negative.shape == zeros_negative.shape
    assert (negative - zeros_negative).abs().mean() > 1e-4


def test_unclip_accepts_other_dtypes(unclip):
    embeddings = _embeddings(1, seed=10)
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


# ---------------------------------------------------------------------------------------------
# Embedded pixel back end

COLOURS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
PIXEL_E = 16


def _small_config(**overrides):
    fields = dict(embed_dim=PIXEL_E, image_size=8, channels=(8, 16), norm_groups=4, sample_steps=8)
    return PixelDetokenizerConfig(**{**fields, **overrides})


def _colour_task(steps, batch, seed=2):
    """Embedding = a fixed random projection of a colour id; image = that flat colour."""
    codes = torch.randn(len(COLOURS), PIXEL_E, generator=torch.Generator().manual_seed(1)) * 3
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        ids = torch.randint(0, len(COLOURS), (batch,), generator=generator)
        batches.append((codes[ids], COLOURS[ids][:, :, None, None].expand(batch, 3, 8, 8).clone()))
    return codes, batches


@pytest.fixture(scope="module")
def trained():
    """A tiny pixel de-tokenizer after a short training on the colour task, and its losses."""
    codes, batches = _colour_task(steps=100, batch=32)
    model = PixelDetokenizer(_small_config(), device="cpu")
    losses = model.train(batches, steps=100, lr=5e-3, progress=False)
    return model, codes, losses


def test_pixel_training_lowers_the_loss_and_follows_the_condition(trained):
    model, codes, losses = trained
    assert len(losses) == 100 and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, f"loss {first:.3f} → {last:.3f}"
    for guidance in (1.0, 2.0):
        images = model.decode(codes, seed=0, guidance_scale=guidance)
        assert images.shape == (len(COLOURS), 3, 8, 8) and images.dtype == torch.float32
        assert images.min() >= 0 and images.max() <= 1
        error = (images.mean(dim=(2, 3)) - COLOURS).abs()
        assert error.max() < 0.35, f"guidance {guidance}: mean colours off by {error}"


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


def test_pixel_train_step_and_batches():
    model = PixelDetokenizer(_small_config(cond_dropout=0.5), device="cpu", seed=1)
    _, batches = _colour_task(steps=2, batch=4)
    loss = model.train_step(*batches[0])
    assert loss.shape == () and loss.dtype == torch.float32 and not loss.requires_grad
    # A list is passed over again; an iterator that runs out is an error.
    assert len(model.train(batches, steps=5, progress=True)) == 5
    with pytest.raises(ValueError, match="ran out after 2 of 5"):
        model.train(iter(batches), steps=5, progress=False)
    with pytest.raises(ValueError, match="ran out after 0 of 1"):
        model.train([], steps=1, progress=False)


def test_pixel_same_seed_same_weights():
    a = PixelDetokenizer(_small_config(), device="cpu", seed=3)
    b = PixelDetokenizer(_small_config(), device="cpu", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.unet.parameters(), b.unet.parameters()))


def test_tiny_preset():
    config = PixelDetokenizerConfig.tiny()
    assert (config.embed_dim, config.image_size, config.channels) == (1024, 32, (16, 32, 64))
    model = SeedDetokenizer.tiny(device="cpu")
    assert model.embed_dim == 1024 and model.image_size == 32
    assert 0.5e6 < model.num_parameters() < 1e6
    images = model.decode(torch.randn(2, 1024), steps=2)
    assert images.shape == (2, 3, 32, 32)
    assert PixelDetokenizerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_pixel_errors(tmp_path):
    model = PixelDetokenizer(_small_config(), device="cpu")
    with pytest.raises(ValueError, match=r"images must have shape \[B, 3, 8, 8\] with B = 2"):
        model.train_step(torch.zeros(2, PIXEL_E), torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"images must have shape"):
        model.train_step(torch.zeros(2, PIXEL_E), torch.zeros(3, 3, 8, 8))
    with pytest.raises(TypeError, match="images must have dtype"):
        model.train_step(torch.zeros(2, PIXEL_E), torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"embeddings must have shape \[B, 16\]"):
        model.decode(torch.zeros(2, 1024))
    with pytest.raises(ValueError, match="steps must be"):
        model.train([], steps=0)
    with pytest.raises(ValueError, match="divisible by 2"):
        _small_config(image_size=9)
    with pytest.raises(ValueError, match="norm_groups"):
        _small_config(channels=(6, 16))
    with pytest.raises(ValueError, match="attention_levels"):
        _small_config(attention_levels=(2,))
    with pytest.raises(ValueError, match="cond_dropout"):
        _small_config(cond_dropout=1.0)
    with pytest.raises(ValueError, match="unknown fields"):
        PixelDetokenizerConfig.from_dict({"embed_dim": 4, "colour": 1})
    with pytest.raises(FileNotFoundError, match="not a directory"):
        SeedDetokenizer.load(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds neither"):
        SeedDetokenizer.load(tmp_path)
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


def test_import_is_lazy():
    """Importing the module must not import diffusers or transformers."""
    import subprocess
    import sys

    code = (
        "import sys, seedfast.models.detokenizer; "
        "assert 'diffusers' not in sys.modules and 'transformers' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'transformers'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
