"""Tiny de-tokenizers for the tests: a random SD-unCLIP pipeline with the real one's structure,
and a pixel de-tokenizer trained on a flat-colour task. Nothing is downloaded."""
from __future__ import annotations

import functools
import json

import pytest
import torch

E = 8  # tiny unCLIP embedding size (SEED-2: 1024)
TEXT_LEN = 16
COLOURS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
PIXEL_E = 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are so small that a second intra-op thread only adds synchronisation, and
    on a busy machine OpenMP spin-waiting makes two threads 10-50× slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_embeddings(batch, dim=E, seed=0):
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed))


def _clip_tokenizer(tmp_path):
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

    tokenizer = _clip_tokenizer(tmp_path)
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


def small_config(**overrides):
    from seedfast.models.pixel_detokenizer import PixelDetokenizerConfig

    fields = dict(embed_dim=PIXEL_E, image_size=8, channels=(8, 16), norm_groups=4, sample_steps=8)
    return PixelDetokenizerConfig(**{**fields, **overrides})


def colour_task(steps, batch, seed=2):
    """Embedding = a fixed random projection of a colour id; image = that flat colour."""
    codes = torch.randn(len(COLOURS), PIXEL_E, generator=torch.Generator().manual_seed(1)) * 3
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        ids = torch.randint(0, len(COLOURS), (batch,), generator=generator)
        batches.append((codes[ids], COLOURS[ids][:, :, None, None].expand(batch, 3, 8, 8).clone()))
    return codes, batches


@functools.cache
def trained_colour_model():
    """A tiny pixel de-tokenizer after a short training on the colour task, the task's codes and
    the training losses; trained once per session (callers only read it)."""
    from seedfast.models.pixel_detokenizer import PixelDetokenizer
    from seedfast.train.pixel_detokenizer import train_pixel_detokenizer

    codes, batches = colour_task(steps=100, batch=32)
    model = PixelDetokenizer(small_config(), device="cpu")
    losses = train_pixel_detokenizer(model, batches, steps=100, lr=5e-3, progress=False)
    return model, codes, losses
