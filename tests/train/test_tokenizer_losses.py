"""The tokenizer's training losses (stages 1 and 2) on the tiny config: against a naive spec
implementation (float64), the loss weights, the contrastive gather, which parameters they
train, and bad training calls."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seedfast.train.tokenizer_losses import contrastive_loss, stage_losses
from tests.accuracy import rel_err
from tests.models import naive_seed as naive
from tests.models.tokenizer_helpers import BATCH, images_for, state64, text_for, tiny


def test_stage1_loss_matches_naive():
    model = tiny(training_heads=True)
    cfg = model.config
    images = images_for(cfg)
    ids, lengths = text_for(cfg)
    out = stage_losses(model, images, stage=1, text_ids=ids, text_lengths=lengths)
    assert set(out) == {"itc", "loss"}
    ref = naive.stage1_losses(images.double(), ids, lengths, state64(model), cfg)
    for name in out:
        assert out[name].dtype == torch.float32 and out[name].dim() == 0
        assert torch.isfinite(out[name])
        assert rel_err(out[name], ref[name]) < 1e-5, name


def test_stage2_losses_match_naive_and_weights():
    model = tiny(training_heads=True)
    cfg = model.config
    images = images_for(cfg)
    target = torch.randn(BATCH, cfg.generation_embed_dim, generator=torch.Generator().manual_seed(10))
    out = stage_losses(model, images, stage=2, target_image_embeds=target)
    assert set(out) == {"vq", "mse", "cos", "loss"}
    for name, value in out.items():
        assert value.dtype == torch.float32 and value.dim() == 0 and torch.isfinite(value), name
    torch.testing.assert_close(out["loss"], 5.0 * out["vq"] + 0.5 * out["mse"] + 2.0 * out["cos"])
    ref = naive.stage2_losses(images.double(), target.double(), state64(model), cfg)
    for name in out:
        assert rel_err(out[name], ref[name]) < 1e-5, name


def test_contrastive_loss_gather_and_rank():
    g = torch.Generator().manual_seed(11)
    img = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    other_img = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    other_txt = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    temp = torch.tensor(0.07)

    def gather(x):
        return torch.cat([other_img if x.data_ptr() == img.data_ptr() else other_txt, x])

    got = contrastive_loss(img, txt, temp, gather=gather, rank=1)
    # By hand: rank 1's targets are rows 3..5 of the gathered features.
    all_img, all_txt = torch.cat([other_img, img]), torch.cat([other_txt, txt])
    t = torch.arange(3, 6)
    want = 0.5 * (F.cross_entropy(img @ all_txt.t() / temp, t, label_smoothing=0.1)
                  + F.cross_entropy(txt @ all_img.t() / temp, t, label_smoothing=0.1))
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, contrastive_loss(img, txt, temp))


@pytest.mark.parametrize("stage", [1, 2])
def test_gradients_reach_exactly_the_stage_parameters(stage):
    model = tiny(training_heads=True).train()
    cfg = model.config
    for p in model.parameters():
        p.requires_grad_(True)
    images = images_for(cfg)
    if stage == 1:
        ids, lengths = text_for(cfg)
        out = stage_losses(model, images, stage=1, text_ids=ids, text_lengths=lengths)
    else:
        target = torch.randn(BATCH, cfg.generation_embed_dim)
        out = stage_losses(model, images, stage=2, target_image_embeds=target)
    out["loss"].backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    want = {n for n, _ in model.trainable_parameters(stage)}
    assert got == want, f"extra: {sorted(got - want)[:5]}, missing: {sorted(want - got)[:5]}"
    assert not any(n.startswith("visual_encoder.") for n in want)
    top = {n.split(".", 1)[0] for n in want}
    if stage == 1:
        assert top == {"Qformer", "query_tokens", "ln_vision", "vision_proj", "text_proj", "temp"}
        assert "Qformer.bert.embeddings.word_embeddings.weight" in want
    else:
        assert top == {"quantize", "encode_task_layer", "decode_task_layer", "pos_embed", "pos_embed_image",
                       "blocks", "blocks_image", "image_down", "distill_image_proj"}


def test_bad_training_calls():
    inference = tiny()
    images = images_for(inference.config)
    with pytest.raises(RuntimeError, match="training_heads=True"):
        stage_losses(inference, images, stage=2,
                     target_image_embeds=torch.zeros(BATCH, inference.config.generation_embed_dim))
    with pytest.raises(RuntimeError, match="without the text path"):
        inference.Qformer.forward_text(torch.zeros(1, 3, dtype=torch.int64), torch.tensor([3]))
    model = tiny(training_heads=True)
    cfg = model.config
    ids, lengths = text_for(cfg)
    with pytest.raises(ValueError, match="stage must be 1 or 2, got 3"):
        stage_losses(model, images, stage=3)
    with pytest.raises(TypeError, match="text_ids"):
        stage_losses(model, images, stage=1)
    with pytest.raises(ValueError, match=r"text_ids must have shape \[B=3"):
        stage_losses(model, images, stage=1, text_ids=ids[:2], text_lengths=lengths)
    with pytest.raises(ValueError, match=r"text_lengths must have shape \[3\]"):
        stage_losses(model, images, stage=1, text_ids=ids, text_lengths=lengths[:2])
    with pytest.raises(ValueError, match="at most 16"):
        stage_losses(model, images, stage=1, text_ids=torch.zeros(BATCH, 17, dtype=torch.int64),
                     text_lengths=lengths)
    with pytest.raises(TypeError, match="target_image_embeds"):
        stage_losses(model, images, stage=2)
    with pytest.raises(ValueError, match=rf"target_image_embeds must have shape \[3, {cfg.generation_embed_dim}\]"):
        stage_losses(model, images, stage=2, target_image_embeds=torch.zeros(BATCH, 7))
