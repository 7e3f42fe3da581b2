"""SeedTokenizer on the tiny config: numerics against a naive spec implementation (float64),
causality, the attention hook, which parameters each stage trains, shapes, dtypes and bad
inputs (the training losses are tested in tests/train/test_tokenizer_losses.py)."""
from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
import torch.nn.functional as F

from seedfast.models.preprocess import clip_preprocess
from seedfast.models.seed_tokenizer import SeedTokenizer
from seedfast.models.tokenizer_config import NUM_QUERY_TOKENS, SeedTokenizerConfig
from seedfast.nn import QFormerAttention, VectorQuantizer
from seedfast.ops import qformer_attention
from seedfast.ops._common import triton_available
from tests.accuracy import assert_within_baseline, rel_err
from tests.models import naive_seed as naive
from tests.models.tokenizer_helpers import BATCH, images_for, state64, text_for, tiny

FP32_TOL = 2e-5


# ---------------------------------------------------------------------------------------------
# Numerics against the naive implementation


def test_eva_block_matches_naive():
    model = tiny()
    cfg = model.config
    x = torch.randn(BATCH, cfg.num_patches + 1, cfg.vit_width, generator=torch.Generator().manual_seed(3))
    out = model.visual_encoder.blocks[1](x)
    ref = naive.eva_block(x.double(), state64(model), "visual_encoder.blocks.1.", cfg)
    assert rel_err(out, ref) < FP32_TOL


def test_eva_block_bf16_within_baseline():
    model = tiny()
    cfg = model.config
    x = torch.randn(BATCH, cfg.num_patches + 1, cfg.vit_width, generator=torch.Generator().manual_seed(4))
    oracle = naive.eva_block(x.double(), state64(model), "visual_encoder.blocks.0.", cfg)
    block = model.visual_encoder.blocks[0].to(torch.bfloat16)
    sd16 = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    baseline = naive.eva_block(x.to(torch.bfloat16), sd16, "visual_encoder.blocks.0.", cfg)
    out = block(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert_within_baseline(out, baseline, oracle, floor=1e-3, what="EVA block bf16")


def test_vit_matches_naive():
    model = tiny()
    images = images_for(model.config)
    out = model.visual_encoder(images)
    ref = naive.eva_vit(images.double(), state64(model), model.config)
    assert out.shape == (BATCH, model.config.num_patches + 1, model.config.vit_width)
    assert rel_err(out, ref) < FP32_TOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_ln_vision_normalises_in_fp32_and_casts_back(dtype):
    model = tiny()
    ln = model.ln_vision
    g = torch.Generator().manual_seed(5)
    # Offset 300: x² overflows float16, so a half-precision variance would be inf.
    x = (300.0 + torch.randn(2, 5, model.config.vit_width, generator=g)).to(dtype)
    out = ln(x)
    assert out.dtype == dtype
    want = F.layer_norm(x.float(), ln.normalized_shape, ln.weight.float(), ln.bias.float(), 1e-5).to(dtype)
    assert torch.equal(out, want)
    # The same with half-precision weights (the whole model cast): they are upcast, not used in half.
    ln_half = ln.to(dtype)
    want = F.layer_norm(x.float(), ln.normalized_shape, ln_half.weight.float(), ln_half.bias.float(), 1e-5)
    assert torch.equal(ln_half(x), want.to(dtype))


def test_ln_vision_eps_is_1e_5():
    model = tiny()
    sd = state64(model)
    # Tiny variance, so that the epsilon matters.
    x = 1e-3 * torch.randn(4, model.config.vit_width, generator=torch.Generator().manual_seed(6))
    ref = naive.layer_norm(x.double(), sd, "ln_vision", 1e-5)
    assert rel_err(model.ln_vision(x), ref) < 1e-5
    assert rel_err(naive.layer_norm(x.double(), sd, "ln_vision", 1e-6), ref) > 1e-2


@pytest.mark.parametrize("layer", [0, 1], ids=["cross", "self-only"])
def test_qformer_layer_matches_naive(layer):
    model = tiny()
    cfg = model.config
    g = torch.Generator().manual_seed(7)
    h = torch.randn(BATCH, NUM_QUERY_TOKENS, cfg.qformer_hidden, generator=g)
    image = torch.randn(BATCH, cfg.num_patches + 1, cfg.vit_width, generator=g)
    out = model.Qformer.layers[layer].forward_queries(h, image)
    ref = naive.qformer_layer(h.double(), image.double(), state64(model), layer, cfg)
    assert (layer % cfg.cross_attention_freq == 0) == (model.Qformer.layers[layer].crossattention is not None)
    assert rel_err(out, ref) < FP32_TOL


@pytest.mark.parametrize("attention", ["fused", "sdpa"])
def test_encode_and_generation_embedding_match_naive(attention):
    model = tiny(qformer_attention=attention)
    cfg = model.config
    images = images_for(cfg)
    sd = state64(model)
    causal = model.causal_embeddings(images)
    ref_causal = naive.causal_embeddings(images.double(), sd, cfg)
    assert rel_err(causal, ref_causal) < FP32_TOL
    ref_codes, _ = naive.encode(images.double(), sd, cfg)
    codes = model.encode(images)
    assert torch.equal(codes, ref_codes)
    assert len(codes.unique()) > 1, "degenerate test: every query got the same code"
    assert rel_err(model.embed_codes(codes), naive.embed_codes(codes, sd)) < FP32_TOL
    assert rel_err(model.generation_embedding(codes), naive.generation_embedding(codes, sd, cfg)) < FP32_TOL


def test_batched_encode_equals_one_by_one():
    model = tiny()
    images = images_for(model.config, batch=4)
    together = model.encode(images)
    alone = torch.cat([model.encode(images[i:i + 1]) for i in range(4)])
    assert torch.equal(together, alone)
    assert torch.equal(model(images), together)  # calling the model encodes


def test_built_from_the_seedfast_nn_modules_under_official_names():
    model = tiny(training_heads=True)
    assert type(model.quantize) is VectorQuantizer
    attentions = {n: m for n, m in model.named_modules() if isinstance(m, QFormerAttention)}
    cfg = model.config
    assert len(attentions) == cfg.qformer_layers + len(range(0, cfg.qformer_layers, cfg.cross_attention_freq))
    for name, module in attentions.items():
        assert name.endswith(("attention.self", "crossattention.self")) and module.layout == "bert"
        assert {n for n, _ in module.named_parameters()} == {f"{p}.{w}" for p in ("query", "key", "value")
                                                             for w in ("weight", "bias")}
    # The drop-in VQ layer's own codes and codebook lookup are the tokenizer's.
    z = torch.randn(2, NUM_QUERY_TOKENS, cfg.code_dim, generator=torch.Generator().manual_seed(13))
    codes = model.quantize.encode(z)
    assert torch.equal(codes, torch.cdist(z, model.quantize.embedding.weight[None]).argmin(-1))
    assert torch.equal(model.embed_codes(codes), model.decode_task_layer(model.quantize.embedding.weight[codes]))


# ---------------------------------------------------------------------------------------------
# Causality and the attention hook


@pytest.mark.parametrize("j", [0, 13, NUM_QUERY_TOKENS - 1])
def test_qformer_is_causal(j):
    model = tiny()
    cfg = model.config
    g = torch.Generator().manual_seed(8)
    queries = torch.randn(2, NUM_QUERY_TOKENS, cfg.qformer_hidden, generator=g)
    image = torch.randn(2, cfg.num_patches + 1, cfg.vit_width, generator=g)
    before = model.Qformer(queries, image)
    perturbed = queries.clone()
    perturbed[:, j] += torch.randn(cfg.qformer_hidden, generator=g)
    after = model.Qformer(perturbed, image)
    torch.testing.assert_close(after[:, :j], before[:, :j], rtol=0, atol=1e-6)
    assert (after[:, j] - before[:, j]).abs().max() > 1e-2
    if j + 1 < NUM_QUERY_TOKENS:
        # Later queries see query j, so they change too: the mask is not over-restrictive.
        assert (after[:, j + 1:] - before[:, j + 1:]).abs().max() > 1e-2


def test_every_attention_goes_through_the_hook():
    model = tiny(training_heads=True)
    cfg = model.config
    calls = []

    def spy(q, k, v, *, causal=False, kv_lens=None):
        calls.append((q.shape[-2], k.shape[-2], causal, kv_lens is not None))
        return qformer_attention(q, k, v, causal=causal, kv_lens=kv_lens)

    model.Qformer.attend = spy
    model.encode(images_for(cfg))
    n_cross = len(range(0, cfg.qformer_layers, cfg.cross_attention_freq))
    lv = cfg.num_patches + 1
    assert calls.count((NUM_QUERY_TOKENS, NUM_QUERY_TOKENS, True, False)) == cfg.qformer_layers
    assert calls.count((NUM_QUERY_TOKENS, lv, False, False)) == n_cross
    assert len(calls) == cfg.qformer_layers + n_cross
    calls.clear()
    model.Qformer.forward_text(torch.zeros(2, 5, dtype=torch.int64), torch.tensor([5, 2]))
    assert calls == [(5, 5, False, True)] * cfg.qformer_layers


@pytest.mark.skipif(not triton_available(), reason="needs triton")
def test_qformer_through_the_triton_kernel(device):
    """The model with the fused kernel (GPU, or Triton's interpreter on CPU) against the reference path."""
    model = tiny(training_heads=True).to(device)
    cfg = model.config
    images = images_for(cfg, batch=2).to(device)
    ids, lengths = text_for(cfg)
    ids, lengths = ids[:2].to(device), lengths[:2].to(device)
    ref_causal, ref_text = model.causal_embeddings(images), model.Qformer.forward_text(ids, lengths)
    model.Qformer.attend = functools.partial(qformer_attention, backend="triton")
    # fp32 tl.dot may use TF32 on a GPU.
    tol = 1e-5 if device == "cpu" else 5e-3
    assert rel_err(model.causal_embeddings(images), ref_causal) < tol
    assert rel_err(model.Qformer.forward_text(ids, lengths), ref_text) < tol


def test_train_mode_dropout_is_per_image():
    model = tiny().train()
    image = images_for(model.config, batch=1)
    seen = []
    model.Qformer.embeddings.dropout.register_forward_hook(lambda mod, args, out: seen.append(out))
    out = model.causal_embeddings(image.expand(2, -1, -1, -1))
    assert not torch.allclose(out[0], out[1]), "the two copies drew the same dropout mask"
    # Already the embedding dropout (on the shared queries) differs per image.
    (dropped,) = seen
    assert dropped.shape[0] == 2 and not torch.equal(dropped[0], dropped[1])
    model.eval()
    out = model.causal_embeddings(image.expand(2, -1, -1, -1))
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Training features and stages


def test_stage1_padding_is_masked():
    model = tiny(training_heads=True)
    cfg = model.config
    ids, lengths = text_for(cfg)
    changed = ids.clone()
    changed[1, 3:] = (changed[1, 3:] + 1) % cfg.vocab_size  # row 1 has 3 real tokens
    a = model.Qformer.forward_text(ids, lengths)[:, 0]
    b = model.Qformer.forward_text(changed, lengths)[:, 0]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    c = model.Qformer.forward_text(changed, torch.tensor([7, 7, 5]))[:, 0]
    assert (c[1] - b[1]).abs().max() > 1e-3


def test_set_trainable():
    model = tiny(training_heads=True)
    model.set_trainable(2)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in model.trainable_parameters(2)}
    assert "quantize.embedding.weight" in trained and "query_tokens" not in trained
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        model.trainable_parameters(3)


# ---------------------------------------------------------------------------------------------
# API: shapes, dtypes, inference mode, bad inputs


def test_shapes_and_dtypes():
    model = tiny()
    cfg = model.config
    images = images_for(cfg)
    with torch.inference_mode():
        codes = model.encode(images)
        emb = model.embed_codes(codes)
        gen = model.generation_embedding(codes)
    assert codes.shape == (BATCH, NUM_QUERY_TOKENS) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < cfg.codebook_size
    assert emb.shape == (BATCH, NUM_QUERY_TOKENS, cfg.qformer_hidden) and emb.dtype == torch.float32
    assert gen.shape == (BATCH, cfg.generation_embed_dim) and gen.dtype == torch.float32
    assert model.image_features(images).shape == (BATCH, cfg.num_patches + 1, cfg.vit_width)
    assert torch.equal(model.embed_codes(codes.to(torch.int32)), emb)


def test_bf16_model():
    model = tiny()
    images = images_for(model.config)
    ref_gen = model.generation_embedding(model.encode(images))
    half = model.to(torch.bfloat16)
    with torch.inference_mode():
        codes = half.encode(images)  # float32 images are cast to the weights' dtype
        gen = half.generation_embedding(codes)
    assert codes.dtype == torch.int64 and gen.dtype == torch.bfloat16
    assert half.image_features(images).dtype == torch.bfloat16
    # Codes may flip where two codes are near-equidistant; the embedding stays close.
    assert rel_err(half.generation_embedding(half.encode(images)), ref_gen) < 0.1


def test_encode_pixels_preprocesses():
    model = tiny()
    g = torch.Generator().manual_seed(12)
    pixels = torch.randint(0, 256, (2, 3, 40, 52), dtype=torch.uint8, generator=g)
    codes = model.encode_pixels(pixels)
    assert torch.equal(codes, model.encode(clip_preprocess(pixels, size=model.config.image_size)))
    floats = pixels.float() / 255.0
    assert torch.equal(model.encode_pixels(floats), codes)


def test_encode_causal_quantises_cached_embeddings():
    model = tiny()
    images = images_for(model.config, batch=3)
    causal = model.causal_embeddings(images)
    codes = model.encode(images)
    assert len(codes.unique()) > 1, "degenerate test: every query got the same code"
    assert torch.equal(model.encode_causal(causal), codes)
    assert torch.equal(model.encode_causal(causal.double()), codes)  # cast to the weights' dtype
    h = model.config.qformer_hidden
    with pytest.raises(ValueError, match=rf"causal must have shape \[B >= 1, 32, {h}\], got \(3, 31, {h}\)"):
        model.encode_causal(causal[:, :31])
    with pytest.raises(ValueError, match="causal must have shape"):
        model.encode_causal(causal[:0])
    with pytest.raises(TypeError, match="causal must be a floating tensor, got torch.int64"):
        model.encode_causal(codes[..., None].expand(-1, -1, h))
    with pytest.raises(ValueError, match="causal is on meta, the model on cpu"):
        model.encode_causal(torch.empty(3, 32, h, device="meta"))


def test_bad_images():
    model = tiny()
    s = model.config.image_size
    with pytest.raises(ValueError, match=rf"images must have shape \[B, 3, {s}, {s}\].*\(2, 3, 31, 31\)"):
        model.encode(torch.randn(2, 3, 31, 31))
    with pytest.raises(ValueError, match="images must have shape"):
        model.encode(torch.randn(3, s, s))
    with pytest.raises(ValueError, match="images must have shape"):
        model.encode(torch.randn(2, 1, s, s))
    with pytest.raises(ValueError, match="B >= 1"):
        model.encode(torch.randn(0, 3, s, s))
    with pytest.raises(TypeError, match="floating.*encode_pixels"):
        model.encode(torch.zeros(2, 3, s, s, dtype=torch.uint8))
    with pytest.raises(TypeError, match="images must be a torch.Tensor"):
        model.encode([[0.0]])
    with pytest.raises(ValueError, match="is on meta but the model is on cpu"):
        model.encode(torch.empty(2, 3, s, s, device="meta"))


def test_bad_codes():
    model = tiny()
    k = model.config.codebook_size
    good = torch.zeros(2, NUM_QUERY_TOKENS, dtype=torch.int64)
    for fn in (model.embed_codes, model.generation_embedding):
        with pytest.raises(ValueError, match=rf"codes must lie in \[0, {k}\), got values from 0 to {k}"):
            fn(torch.cat([good[:, :-1], torch.full((2, 1), k)], dim=1))
        with pytest.raises(ValueError, match="from -1 to 0"):
            fn(good - (torch.arange(NUM_QUERY_TOKENS) == 5).long())
        with pytest.raises(ValueError, match=r"codes must have shape \[B, 32\].*\(2, 31\)"):
            fn(good[:, :31])
        with pytest.raises(ValueError, match=r"codes must have shape"):
            fn(good[0])
        with pytest.raises(TypeError, match="codes must be int64 or int32"):
            fn(good.float())
    # Out-of-range codes are only caught when checked (check_range=False skips the host sync).
    assert model.embed_codes(good, check_range=False).shape == (2, NUM_QUERY_TOKENS, model.config.qformer_hidden)


# ---------------------------------------------------------------------------------------------
# Config


def test_official_config_numbers():
    c = SeedTokenizerConfig.official()
    assert (c.image_size, c.patch_size, c.vit_width, c.vit_depth, c.vit_heads, c.vit_mlp_dim) == (
        224, 14, 1408, 39, 16, 6144)
    assert (c.vit_eps, c.ln_vision_eps, c.qformer_eps, c.head_eps) == (1e-6, 1e-5, 1e-12, 1e-6)
    assert (c.qformer_hidden, c.qformer_layers, c.qformer_heads, c.qformer_intermediate) == (768, 12, 12, 3072)
    assert (c.cross_attention_freq, c.qformer_dropout, c.codebook_size, c.code_dim) == (2, 0.1, 8192, 32)
    assert (c.head_depth, c.head_heads, c.head_mlp_dim, c.image_down_dims) == (4, 12, 3072, (256, 128, 32))
    assert (c.generation_embed_dim, c.vocab_size, c.max_text_positions, c.proj_dim) == (1024, 30523, 512, 256)
    assert c.num_patches == 256 and not c.training_heads
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.vit_depth = 40  # type: ignore[misc]


def test_config_validation_and_round_trip():
    c = SeedTokenizerConfig.tiny(training_heads=True)
    assert SeedTokenizerConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="vit_width .* divisible by vit_heads"):
        SeedTokenizerConfig.tiny(vit_heads=5)
    with pytest.raises(ValueError, match="image_size .* multiple of patch_size"):
        SeedTokenizerConfig.tiny(image_size=30)
    with pytest.raises(ValueError, match="qformer_attention must be one of"):
        SeedTokenizerConfig.tiny(qformer_attention="flash")
    with pytest.raises(ValueError, match="codebook_size must be a positive int"):
        SeedTokenizerConfig.tiny(codebook_size=0)
    with pytest.raises(ValueError, match="unknown field"):
        SeedTokenizerConfig.from_dict({**c.to_dict(), "num_queries": 16})
    with pytest.raises(TypeError, match="SeedTokenizerConfig"):
        SeedTokenizer({"vit_width": 4})  # type: ignore[arg-type]
