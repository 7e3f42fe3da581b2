"""Configs: the per-stage defaults are the official recipe; a resume compares what, not how."""
import pytest

from seedfast.train.config import differing_fields
from seedfast.train.config_sources import build_config, read_preset


def test_stage_defaults_are_the_official_recipe():
    s1, s2, s3 = (build_config(s) for s in (1, 2, 3))
    assert (s1.optim.lr, s1.optim.min_lr, s1.optim.warmup_lr, s1.optim.warmup_steps) == (3e-5, 3e-6, 3e-7, 2000)
    assert (s2.optim.lr, s2.optim.min_lr, s2.optim.warmup_lr) == (1e-4, 1e-5, 1e-6)
    assert (s1.train.global_batch, s2.train.global_batch) == (4096, 16384)
    assert (s3.optim.lr, s3.optim.beta2, s3.optim.eps, s3.optim.grad_clip) == (1.5e-4, 0.95, 1e-5, 1.0)
    assert s3.optim.min_lr == pytest.approx(0.05 * s3.optim.lr)
    assert (s3.lora.r, s3.lora.alpha, s3.lora.dropout) == (16, 32.0, 0.05)
    assert s1.optim.weight_decay == s2.optim.weight_decay == 0.05


def test_differing_fields_ignore_how_but_not_what():
    a = build_config(2, [read_preset("tiny")]).flat()
    b = build_config(2, [read_preset("tiny")], ["train.micro_batch=8", "train.ckpt_every=7", "optim.lr=0.1",
                                                "tokenizer.qformer_dropout=0.1"]).flat()
    assert differing_fields(a, b) == ["optim.lr: 0.003 → 0.1", "tokenizer.qformer_dropout: 0.0 → 0.1"]


def test_a_setting_added_after_a_checkpoint_counts_as_its_default():
    current = build_config(3, [read_preset("tiny")]).flat()
    older = {k: v for k, v in current.items() if k != "data.caption_order"}
    assert differing_fields(older, current) == []
    reading = build_config(3, [read_preset("tiny")], ["data.caption_order=reading"]).flat()
    assert differing_fields(older, reading) == ["data.caption_order: 'given' → 'reading'"]
    # A missing key with no default (a model override) still differs.
    assert differing_fields({k: v for k, v in current.items() if k != "llm.preset"}, current) == [
        "llm.preset: '<unset>' → 'tiny'"]
