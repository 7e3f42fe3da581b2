"""patch_qformer_attention: a tiny random Blip2QFormerModel gives the same outputs and
gradients before and after patching, for each mask form transformers produces; unsupported
calls fall back to transformers' attention with a warning (or raise)."""
from __future__ import annotations

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

import seedfast.integrations.hf_qformer as hf_qformer  # noqa: E402
from seedfast.integrations import QFormerPatchWarning, patch_qformer_attention, read_mask  # noqa: E402

B, LQ, LK, DIM, ENC = 3, 5, 7, 32, 24
LAYERS = 2  # cross-attention in both: 4 attention modules


def _model(impl: str, dropout: float = 0.0):
    cfg = transformers.Blip2QFormerConfig(
        hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=64,
        encoder_hidden_size=ENC, cross_attention_frequency=1, attention_probs_dropout_prob=dropout,
        hidden_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return transformers.Blip2QFormerModel._from_config(cfg, attn_implementation=impl).eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, LQ, DIM, generator=g), torch.randn(B, LK, ENC, generator=g)


RIGHT_PAD = torch.tensor([[1] * LQ, [1] * 3 + [0] * 2, [1] * 4 + [0]])
ENC_PAD = torch.tensor([[1] * LK, [1] * 6 + [0], [1] * 2 + [0] * 5])
# SEED's causal query mask (spec §4): additive, -10000 above the diagonal, 4-D.
CAUSAL = ((1.0 - torch.ones(LQ, LQ).tril()) * -10000.0)[None, None].expand(B, 1, LQ, LQ)
CAUSAL_AND_PAD = torch.where(RIGHT_PAD[:, None, None, :].bool(), CAUSAL, -10000.0)

MASKS = {
    "none": {},
    "padding": dict(attention_mask=RIGHT_PAD, encoder_attention_mask=ENC_PAD),
    "all-ones": dict(attention_mask=torch.ones(B, LQ, dtype=torch.long), encoder_attention_mask=torch.ones(B, LK)),
    "causal": dict(attention_mask=CAUSAL),
    "causal+padding": dict(attention_mask=CAUSAL_AND_PAD, encoder_attention_mask=ENC_PAD),
}


@pytest.fixture
def op_calls(monkeypatch):
    """Counts the calls that reach seedfast's op through the patch."""
    calls = []
    real = hf_qformer.qformer_attention

    def counting(q, k, v, **kwargs):
        calls.append(kwargs)
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(hf_qformer, "qformer_attention", counting)
    return calls


def _run(model, queries, image, **masks):
    q = queries.clone().requires_grad_()
    e = image.clone().requires_grad_()
    out = model(query_embeds=q, encoder_hidden_states=e, **masks).last_hidden_state
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    grads = torch.autograd.grad((out * g).sum(), [q, e, *model.parameters()])
    return out.detach(), grads


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("case", list(MASKS))
def test_patched_model_matches_original(impl, case, op_calls):
    model = _model(impl)
    queries, image = _inputs()
    ref, ref_grads = _run(model, queries, image, **MASKS[case])
    patch = patch_qformer_attention(model)
    assert len(patch.modules) == 2 * LAYERS
    with warnings.catch_warnings():
        warnings.simplefilter("error", QFormerPatchWarning)
        out, grads = _run(model, queries, image, **MASKS[case])
    assert len(op_calls) == 2 * LAYERS, "every self- and cross-attention must run seedfast's op"
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    expect_causal = case.startswith("causal")
    assert [c["causal"] for c in op_calls[::2]] == [expect_causal] * LAYERS
    if case in ("padding", "causal+padding"):
        assert op_calls[1]["kv_lens"].tolist() == ENC_PAD.sum(1).tolist()
    if case in ("none", "all-ones"):
        assert all(c["kv_lens"] is None for c in op_calls)


def test_one_mask_reading_per_mask_per_forward(monkeypatch):
    model = _model("eager")
    queries, image = _inputs()
    patch_qformer_attention(model)
    reads = []
    real = hf_qformer.read_mask
    monkeypatch.setattr(hf_qformer, "read_mask", lambda *a: reads.append(a) or real(*a))
    model(query_embeds=queries, encoder_hidden_states=image, **MASKS["padding"])
    assert len([r for r in reads if r[0] is not None]) == 2, "one self-attention mask and one encoder mask"


def test_left_padding_falls_back_with_one_warning(op_calls):
    model = _model("eager")
    queries, image = _inputs()
    masks = dict(attention_mask=RIGHT_PAD.flip(1))
    ref = model(query_embeds=queries, encoder_hidden_states=image, **masks).last_hidden_state
    patch_qformer_attention(model)
    with pytest.warns(QFormerPatchWarning, match="left padding") as record:
        out = model(query_embeds=queries, encoder_hidden_states=image, **masks).last_hidden_state
        model(query_embeds=queries, encoder_hidden_states=image, **masks)
    assert len(record) == 1
    assert torch.allclose(out, ref, atol=1e-6)
    # Two forwards × one cross-attention (no mask) per layer still run the op.
    assert len(op_calls) == 2 * LAYERS and all(c["kv_lens"] is None for c in op_calls)


def test_on_unsupported_error():
    model = _model("eager")
    queries, image = _inputs()
    patch_qformer_attention(model, on_unsupported="error")
    with pytest.raises(ValueError, match="not 'keys < kv_lens\\[b\\]'"):
        model(query_embeds=queries, encoder_hidden_states=image, attention_mask=RIGHT_PAD.flip(1))


def test_training_with_attention_dropout_falls_back(op_calls):
    model = _model("eager", dropout=0.1).train()
    queries, image = _inputs()
    patch_qformer_attention(model)
    with pytest.warns(QFormerPatchWarning, match="attention dropout in training mode"):
        model(query_embeds=queries, encoder_hidden_states=image)
    assert op_calls == []
    model.eval()
    model(query_embeds=queries, encoder_hidden_states=image)
    assert len(op_calls) == 2 * LAYERS


def test_output_attentions_falls_back():
    model = _model("eager")
    queries, image = _inputs()
    patch_qformer_attention(model)
    with pytest.warns(QFormerPatchWarning, match="output_attentions"):
        out = model(query_embeds=queries, encoder_hidden_states=image, output_attentions=True)
    assert out.attentions and all(isinstance(w, torch.Tensor) for w in out.attentions)
    assert out.attentions[0].shape == (B, 4, LQ, LQ)


def test_remove_restores_the_original(op_calls):
    model = _model("sdpa")
    queries, image = _inputs()
    patch = patch_qformer_attention(model)
    patch.remove()
    model(query_embeds=queries, encoder_hidden_states=image)
    assert op_calls == []
    patch_qformer_attention(model)  # patchable again
    model(query_embeds=queries, encoder_hidden_states=image)
    assert len(op_calls) == 2 * LAYERS


def test_instructblip_qformer_is_patched_too(op_calls):
    cfg = transformers.InstructBlipQFormerConfig(
        hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=64,
        encoder_hidden_size=ENC, cross_attention_frequency=1, vocab_size=50, max_position_embeddings=16,
    )
    torch.manual_seed(0)
    model = transformers.InstructBlipQFormerModel._from_config(cfg, attn_implementation="eager").eval()
    queries, image = _inputs()
    ids = torch.randint(0, 50, (B, 4))
    ref = model(input_ids=ids, query_embeds=queries, encoder_hidden_states=image).last_hidden_state
    patch_qformer_attention(model)
    out = model(input_ids=ids, query_embeds=queries, encoder_hidden_states=image).last_hidden_state
    assert len(op_calls) == 2 * LAYERS
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize(
    "mask, expected",
    [
        (None, (False, None)),
        (torch.ones(2, 1, 3, 4, dtype=torch.bool), (False, None)),
        (torch.arange(4).expand(2, 1, 3, 4) < torch.tensor([4, 2])[:, None, None, None], (False, [4, 2])),
        (torch.ones(3, 3, dtype=torch.bool).tril().expand(2, 1, 3, 3), (True, None)),
        (torch.zeros(1, 1, 3, 4), (False, None)),  # broadcast batch
        (torch.arange(4).expand(2, 1, 1, 4) < torch.tensor([1, 3])[:, None, None, None], (False, [1, 3])),  # and rows
        (torch.where(torch.arange(4) < 3, 0.0, torch.finfo(torch.float32).min).expand(2, 1, 3, 4), (False, [3, 3])),
    ],
)
def test_read_mask_patterns(mask, expected):
    lq, lk = (3, mask.shape[-1]) if mask is not None else (3, 4)
    reading = read_mask(mask, 2, lq, lk)
    assert not isinstance(reading, str), reading
    assert reading.causal == expected[0]
    assert (reading.kv_lens.tolist() if reading.kv_lens is not None else None) == expected[1]


@pytest.mark.parametrize(
    "mask, words",
    [
        (torch.full((2, 1, 3, 4), -5.0), "neither 0 nor <= -1e4"),
        (torch.ones(2, 2, 3, 4, dtype=torch.bool).index_fill(1, torch.tensor([1]), False), "differs between heads"),
        (torch.arange(4).expand(2, 1, 3, 4) >= 1, "not 'keys < kv_lens[b]'"),
        (torch.arange(4).expand(2, 1, 3, 4) < torch.tensor([4, 0])[:, None, None, None], "sees no key"),
        (torch.ones(2, 3, 4, dtype=torch.bool), "a mask of shape (2, 3, 4)"),
        (torch.ones(2, 1, 2, 4, dtype=torch.bool), "a mask of shape (2, 1, 2, 4)"),
        (torch.ones(2, 1, 3, 4, dtype=torch.int64), "dtype torch.int64"),
        ("block mask", "a str mask"),
    ],
)
def test_read_mask_rejects(mask, words):
    reading = read_mask(mask, 2, 3, 4)
    assert isinstance(reading, str) and words in reading, reading


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        patch_qformer_attention("blip2")
    with pytest.raises(ValueError, match="holds no Q-Former attention module"):
        patch_qformer_attention(torch.nn.Linear(2, 2))
    model = _model("eager")
    with pytest.raises(ValueError, match="on_unsupported must be one of"):
        patch_qformer_attention(model, on_unsupported="ignore")
    with pytest.raises(ValueError, match="backend must be one of"):
        patch_qformer_attention(model, backend="flash")
    patch_qformer_attention(model)
    with pytest.raises(ValueError, match="already patched"):
        patch_qformer_attention(model)
    older = _model("eager")
    del older.encoder.layer[0].attention.attention.scaling
    with pytest.raises(ValueError, match=r"lacks \['scaling'\]; the patch follows the structure of transformers 5.x"):
        patch_qformer_attention(older)


def test_patched_model_compiles_with_a_mask(op_calls):
    model = _model("sdpa")
    queries, image = _inputs()
    ref = model(query_embeds=queries, encoder_hidden_states=image, attention_mask=RIGHT_PAD).last_hidden_state
    patch_qformer_attention(model)
    compiled = torch.compile(model, backend="aot_eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error", QFormerPatchWarning)
        out = compiled(query_embeds=queries, encoder_hidden_states=image, attention_mask=RIGHT_PAD).last_hidden_state
    # Masked self-attention runs transformers' attention when compiled (reading the mask would
    # break the graph), silently; the unmasked cross-attention is seedfast's op in the graph.
    assert len(op_calls) == LAYERS and all(not c["causal"] and c["kv_lens"] is None for c in op_calls)
    assert torch.allclose(out, ref, atol=1e-5)
