"""ImageGrammarLogitsProcessor inside a tiny LlamaForCausalLM.generate: sampling, greedy and
beam search, batch > 1, against an adversarial bias that breaks the grammar without it."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from seedfast.integrations import ImageGrammarLogitsProcessor  # noqa: E402
from seedfast.nn import image_positions  # noqa: E402
from seedfast.ops import VisualVocab, constrained_sample  # noqa: E402
from tests.nn.test_constrained_sample import grammar_violations  # noqa: E402

# Text 0..19 (pad 0, bos 1, eos 2), codes 20..27, <img> 28, </img> 29, four codes per image.
VOCAB = VisualVocab(text_vocab_size=20, first_code_id=20, num_codes=8, boi_id=28, eoi_id=29, eos_id=2,
                    codes_per_image=4)
V = 30
PROMPTS = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 28], [0, 1, 3, 4]])  # text / ends with <img> / left padded
PROMPT_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])


class Tempt(transformers.LogitsProcessor):
    """Pushes towards every grammar break: </img> anywhere, codes in text, no eos."""

    def __call__(self, input_ids, scores):
        bias = torch.zeros(scores.shape[1])
        bias[VOCAB.eoi_id] = 6.0
        bias[VOCAB.first_code_id:VOCAB.first_code_id + VOCAB.num_codes] = 3.0
        bias[VOCAB.boi_id] = 2.0
        bias[VOCAB.eos_id] = -100.0
        return scores + bias


@pytest.fixture(scope="module")
def model():
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _generate(model, processors, **kwargs):
    torch.manual_seed(1)
    out = model.generate(PROMPTS, attention_mask=PROMPT_MASK, max_new_tokens=16, min_new_tokens=16,
                         logits_processor=transformers.LogitsProcessorList(processors), **kwargs)
    return out.tolist()


def test_the_bias_breaks_the_grammar_without_the_processor(model):
    rows = _generate(model, [Tempt()], do_sample=False)
    assert all(grammar_violations(row, VOCAB) for row in rows)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(do_sample=True, temperature=0.7, top_p=0.5),
        dict(do_sample=False),
        dict(do_sample=False, num_beams=2),
        dict(do_sample=True, num_beams=2, num_return_sequences=2),
    ],
    ids=["sample", "greedy", "beams", "beam-sample-x2"],
)
def test_generate_obeys_the_grammar(model, kwargs):
    rows = _generate(model, [Tempt(), ImageGrammarLogitsProcessor(VOCAB)], **kwargs)
    assert len(rows) == PROMPTS.shape[0] * kwargs.get("num_return_sequences", 1)
    for row in rows:
        assert grammar_violations(row, VOCAB) == [], row
    closed = sum(row.count(VOCAB.eoi_id) for row in rows)
    assert closed >= 2 * len(rows), f"expected complete images in every row, got {closed} closes in {rows}"


def _ids_for_states(states: list[int]) -> torch.Tensor:
    """Rows of equal length whose grammar positions are ``states``."""
    rows = []
    for s in states:
        row = [1, 5] if s < 0 else [1, VOCAB.boi_id] + [VOCAB.first_code_id + i % VOCAB.num_codes for i in range(s)]
        rows.append([0] * (8 - len(row)) + row)
    return torch.tensor(rows)


def test_agrees_with_the_fused_sampler_when_greedy():
    torch.manual_seed(2)
    states = [-1, 0, 1, 3, 4, -1, 2, 4]
    ids = _ids_for_states(states)
    assert image_positions(ids, VOCAB).tolist() == states
    processor = ImageGrammarLogitsProcessor(VOCAB)
    for _ in range(20):
        logits = torch.randn(len(states), V) * 3
        masked = processor(ids, logits)
        tokens, _ = constrained_sample(logits, torch.tensor(states, dtype=torch.int32), vocab=VOCAB, temperature=0.0)
        assert torch.equal(masked.argmax(1), tokens)


def test_mask_values():
    ids = _ids_for_states([-1, 2, 4])
    scores = torch.randn(3, V + 2)  # an LM head wider than the layout
    out = ImageGrammarLogitsProcessor(VOCAB)(ids, scores)
    finite = torch.isfinite(out)
    assert finite[0].nonzero().flatten().tolist() == list(range(20)) + [VOCAB.boi_id]
    assert torch.equal(out[0, :20], scores[0, :20])
    assert finite[1].nonzero().flatten().tolist() == list(range(20, 28))
    assert finite[2].nonzero().flatten().tolist() == [VOCAB.eoi_id] and out[2, VOCAB.eoi_id] == 0
    assert not torch.isfinite(scores).logical_not().any(), "the input must be left untouched"


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda p: p(_ids_for_states([-1]), torch.randn(1, 25)), ValueError,
         "V=25 ids but the vocab layout needs at least 30"),
        (lambda p: p(_ids_for_states([-1, -1]), torch.randn(1, V)), ValueError, "input_ids must have shape [1, L]"),
        (lambda p: p(_ids_for_states([-1]), torch.zeros(1, V, dtype=torch.int64)), TypeError,
         "scores must be a floating tensor"),
        (lambda p: p(_ids_for_states([-1]), torch.randn(V)), ValueError, "scores must have shape [rows, V]"),
    ],
)
def test_bad_inputs(call, exc, words):
    with pytest.raises(exc) as info:
        call(ImageGrammarLogitsProcessor(VOCAB))
    assert words in str(info.value), str(info.value)


def test_bad_vocab():
    with pytest.raises(TypeError, match="vocab must be a VisualVocab, got int"):
        ImageGrammarLogitsProcessor(32000)
