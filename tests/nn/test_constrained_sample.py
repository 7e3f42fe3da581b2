"""ConstrainedSampler and image_positions: state tracking against the functional op, the
grammar against a plain-torch masked argmax, in-place state, errors."""
from __future__ import annotations

import pytest
import torch

from seedfast.nn import ConstrainedSampler, VisualVocab, image_positions
from seedfast.nn.constrained_sample import image_positions_by_token
from seedfast.ops import FLAG_NON_FINITE, constrained_sample

# Text 0..9 (eos 2), span ids 10..15, <open> 16, <close> 17, three span tokens per span.
VOCAB = VisualVocab(text_vocab_size=10, first_code_id=10, num_codes=6, boi_id=16, eoi_id=17, eos_id=2,
                    codes_per_image=3)
V = 18


def grammar_violations(tokens: list[int], vocab: VisualVocab = VOCAB, *, start_pos: int = -1) -> list[str]:
    """Every place ``tokens`` break "open + N span ids + close"; a span cut by the end is fine."""
    problems, pos = [], start_pos
    span = range(vocab.first_code_id, vocab.first_code_id + vocab.num_codes)
    for i, t in enumerate(tokens):
        if pos < 0:
            if t == vocab.boi_id:
                pos = 0
            elif t >= vocab.text_vocab_size:
                problems.append(f"{i}: id {t} in text")
        elif pos < vocab.codes_per_image:
            if t not in span:
                problems.append(f"{i}: id {t} inside a span")
            pos += 1
        else:
            if t != vocab.eoi_id:
                problems.append(f"{i}: id {t} where the closing marker is due")
            pos = -1
    return problems


def test_grammar_checker_catches_violations():
    assert grammar_violations([1, 16, 10, 11, 12, 17, 3]) == []
    assert grammar_violations([1, 16, 10, 11, 12, 17, 16, 10]) == []
    assert len(grammar_violations([1, 10, 17, 16, 10, 3, 12, 4])) == 4


@pytest.mark.parametrize(
    "row, expected",
    [
        ([1, 2, 3, 4], -1),
        ([1, 2, 3, 16], 0),
        ([1, 16, 10, 11], 2),
        ([16, 10, 11, 12], 3),
        ([16, 10, 17, 5], -1),
        ([16, 10, 17, 16], 0),
        ([16, 10, 11, 12, 17, 1, 16, 13], 1),
        ([0, 0, 0, 16], 0),  # left padding
        ([16, 1, 2, 3, 4, 5, 6, 7], 7),  # a malformed open span: the closing marker is overdue
    ],
)
def test_image_positions(row, expected):
    ids = torch.tensor([row, [1] * len(row)])
    assert image_positions(ids, VOCAB).tolist() == [expected, -1]
    assert image_positions(ids, VOCAB).dtype == torch.int32


def test_positions_by_token_are_the_positions_of_every_prefix():
    g = torch.Generator().manual_seed(0)
    # Mostly markers and span ids, so rows open, fill, close and break spans.
    ids = torch.tensor([10, 11, 12, 16, 17, 1])[torch.randint(0, 6, (5, 30), generator=g)]
    by_token = image_positions_by_token(ids, VOCAB)
    assert by_token.dtype == torch.int32 and by_token.shape == (5, 30)
    for i in range(30):
        assert torch.equal(by_token[:, i], image_positions(ids[:, : i + 1], VOCAB)), i
    assert image_positions_by_token(torch.zeros(2, 0, dtype=torch.int64), VOCAB).shape == (2, 0)
    with pytest.raises(TypeError, match="image_positions_by_token: input_ids must be an integer tensor"):
        image_positions_by_token(torch.zeros(2, 3), VOCAB)


def test_image_positions_of_empty_rows_and_bad_inputs():
    assert image_positions(torch.zeros(3, 0, dtype=torch.int64), VOCAB).tolist() == [-1, -1, -1]
    with pytest.raises(TypeError, match="input_ids must be an integer tensor, got torch.float32"):
        image_positions(torch.zeros(2, 3), VOCAB)
    with pytest.raises(ValueError, match=r"input_ids must have shape \[B, L\], got \(3,\)"):
        image_positions(torch.zeros(3, dtype=torch.int64), VOCAB)
    with pytest.raises(TypeError, match="vocab must be a VisualVocab, got dict"):
        image_positions(torch.zeros(2, 3, dtype=torch.int64), {})


def masked_argmax(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The grammar in plain torch: allowed ids by state, then argmax; forced close."""
    ids = torch.arange(V)
    text = (ids < VOCAB.text_vocab_size) | (ids == VOCAB.boi_id)
    span = (ids >= VOCAB.first_code_id) & (ids < VOCAB.first_code_id + VOCAB.num_codes)
    allowed = torch.where((pos < 0)[:, None], text, span)
    best = logits.masked_fill(~allowed, -float("inf")).argmax(1)
    return torch.where(pos >= VOCAB.codes_per_image, VOCAB.eoi_id, best)


def test_greedy_matches_masked_argmax_over_many_steps():
    torch.manual_seed(0)
    b, steps = 4, 40
    history = torch.tensor([[1, 16], [1, 2], [16, 10], [3, 4]])
    sampler = ConstrainedSampler(VOCAB, b, temperature=0.0)
    sampler.reset(history)
    bias = torch.zeros(V)
    bias[VOCAB.boi_id] = 1.5  # open spans often
    bias[VOCAB.eoi_id] = 3.0  # and tempt early closes
    for _ in range(steps):
        logits = torch.randn(b, V) + bias
        expected = masked_argmax(logits, image_positions(history, VOCAB))
        tokens = sampler(logits)
        assert torch.equal(tokens, expected)
        history = torch.cat([history, tokens[:, None]], 1)
        assert torch.equal(sampler.image_pos, image_positions(history, VOCAB))
    assert all(grammar_violations(row) == [] for row in history.tolist())
    assert (history == VOCAB.eoi_id).sum() >= 4, "the run must close several spans"


def test_sampling_matches_the_functional_op_step_by_step():
    torch.manual_seed(1)
    b = 3
    sampler = ConstrainedSampler(VOCAB, b, temperature=0.8, top_k=5, top_p=0.9, seed=1234)
    sampler.reset()
    pos = torch.full((b,), -1, dtype=torch.int32)
    offset_storage = sampler.offset.data_ptr()
    for step in range(25):
        logits = torch.randn(b, V)
        tokens = sampler(logits)
        ref, pos = constrained_sample(logits, pos, vocab=VOCAB, temperature=0.8, top_k=5, top_p=0.9,
                                      seed=1234, offset=step)
        assert torch.equal(tokens, ref)
        assert torch.equal(sampler.image_pos, pos)
        assert sampler.offset.tolist() == [step + 1] * b
    assert sampler.offset.data_ptr() == offset_storage, "offset must be advanced in place"


def test_seeds_reset_and_reproducibility():
    torch.manual_seed(2)
    logits = [torch.randn(2, V) for _ in range(20)]

    def run(sampler):
        return torch.stack([sampler(x) for x in logits])

    a = ConstrainedSampler(VOCAB, 2, seed=7)
    first = run(a)
    a.reset()
    assert a.offset.tolist() == [0, 0] and a.image_pos.tolist() == [-1, -1]
    assert torch.equal(run(a), first)
    assert torch.equal(run(ConstrainedSampler(VOCAB, 2, seed=torch.tensor([7, 7]))), first)
    a.reset(seed=8)
    assert not torch.equal(run(a), first)
    a.reset(seed=torch.tensor([7, 8]))
    mixed = run(a)
    assert torch.equal(mixed[:, 0], first[:, 0])


def test_per_row_parameters_and_in_place_changes():
    torch.manual_seed(3)
    logits = torch.randn(2, V)
    sampler = ConstrainedSampler(VOCAB, 2, temperature=torch.tensor([0.0, 1.0]))
    greedy_row = masked_argmax(logits, torch.tensor([-1, -1]))[0]
    assert sampler(logits)[0] == greedy_row
    sampler.temperature.fill_(0.0)
    sampler.reset()
    assert torch.equal(sampler(logits), masked_argmax(logits, torch.tensor([-1, -1])))


def test_error_rows_set_sticky_flags_without_check():
    sampler = ConstrainedSampler(VOCAB, 2, check=False)
    logits = torch.randn(2, V)
    logits[1, 3] = float("nan")
    tokens = sampler(logits)
    assert tokens[1] == VOCAB.eos_id
    assert sampler.error_flags.tolist() == [0, FLAG_NON_FINITE]
    sampler(torch.randn(2, V))
    assert sampler.error_flags.tolist() == [0, FLAG_NON_FINITE], "flags stay set until reset"
    sampler.reset()
    assert sampler.error_flags.tolist() == [0, 0]
    checking = ConstrainedSampler(VOCAB, 2, check=True)
    with pytest.raises(ValueError, match="row 1: an allowed logit is NaN"):
        checking(logits)


def test_the_default_sampler_checks_once_when_asked():
    sampler = ConstrainedSampler(VOCAB, 3)
    sampler.check()  # nothing went wrong yet
    bad = torch.randn(3, V)
    bad[2, 4] = float("nan")
    tokens = sampler(bad)  # no per-call check, no host synchronisation
    assert tokens[2] == VOCAB.eos_id and sampler.error_flags.tolist() == [0, 0, FLAG_NON_FINITE]
    sampler(torch.randn(3, V))
    with pytest.raises(ValueError, match="row 2: an allowed logit is NaN") as info:
        sampler.check()
    assert "row 0" not in str(info.value) and "row 1" not in str(info.value)
    sampler.reset()
    sampler.check()


def test_step_runs_a_prefix_of_rows_and_holds_inactive_ones():
    """What the decode runner needs: a batch of 3 in a sampler of 4, stopped rows masked."""
    torch.manual_seed(5)
    full = ConstrainedSampler(VOCAB, 3, temperature=0.9, top_k=6, seed=3)
    wide = ConstrainedSampler(VOCAB, 4, temperature=0.9, top_k=6, seed=3)
    full.reset(torch.tensor([[1, 16], [1, 2], [16, 10]]))
    wide.image_pos[:3].copy_(full.image_pos)
    for _ in range(6):
        logits = torch.randn(3, V)
        tokens, flags = wide.step(logits)
        assert torch.equal(tokens, full(logits)) and flags.tolist() == [0, 0, 0]
        assert torch.equal(wide.image_pos[:3], full.image_pos)
    assert wide.offset.tolist() == [6, 6, 6, 0] and wide.image_pos[3] == -1
    active = torch.tensor([True, False, True])
    wide.image_pos[1] = 0  # inside a span: sampled, it would move on
    before = wide.image_pos[:3].clone()
    logits = torch.randn(3, V)
    logits[1] = float("nan")  # an error row, if it were sampled
    tokens, flags = wide.step(logits, active)
    assert tokens[1] == VOCAB.eos_id and wide.image_pos[1] == before[1] == 0 and flags[1] == 0
    assert wide.error_flags.tolist() == [0, 0, 0, 0] and wide.offset.tolist() == [7, 7, 7, 0]
    with pytest.raises(ValueError, match="5 rows of logits for a sampler of batch_size=4"):
        wide.step(torch.randn(5, V))


@pytest.mark.parametrize(
    "args, kwargs, exc, words",
    [
        (({}, 2), {}, TypeError, "vocab must be a VisualVocab, got dict"),
        ((VOCAB, 0), {}, ValueError, "batch_size must be >= 1, got 0"),
        ((VOCAB, True), {}, TypeError, "batch_size must be an int, got bool"),
        ((VOCAB, 2), dict(temperature=-1.0), ValueError, "temperature must be a finite number >= 0"),
        ((VOCAB, 2), dict(top_p=0.0), ValueError, "top_p must be in (0, 1], got 0.0"),
        ((VOCAB, 2), dict(top_k=2.5), TypeError, "top_k must be an int or an integer tensor, got float"),
        ((VOCAB, 2), dict(seed=torch.tensor([1.0, 2.0])), TypeError, "seed must be an integer tensor"),
        ((VOCAB, 2), dict(seed=torch.tensor([1, 2, 3])), ValueError, "seed must be a scalar or a [batch_size] = [2]"),
        ((VOCAB, 2), dict(backend="numpy"), ValueError, "backend must be one of"),
    ],
)
def test_bad_constructor_arguments(args, kwargs, exc, words):
    with pytest.raises(exc) as info:
        ConstrainedSampler(*args, **kwargs)
    assert words in str(info.value) and "ConstrainedSampler" in str(info.value), str(info.value)


def test_bad_call_arguments():
    sampler = ConstrainedSampler(VOCAB, 2)
    with pytest.raises(ValueError, match=r"logits must have shape \[batch_size, V\] = \[2, V\], got \(3, 18\)"):
        sampler(torch.randn(3, V))
    with pytest.raises(ValueError, match="the vocab layout needs at least 18"):
        sampler(torch.randn(2, 12))
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        sampler([[0.0] * V] * 2)
    with pytest.raises(ValueError, match="prompt_ids must have batch_size = 2 rows"):
        sampler.reset(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="seed must be an int or an integer tensor, got float"):
        sampler.reset(seed=1.5)


def test_triton_backend_draws_the_same_tokens(device):
    torch.manual_seed(4)
    samplers = [ConstrainedSampler(VOCAB, 3, temperature=0.9, top_k=8, top_p=0.95, seed=11, backend=b, device=device)
                for b in ("torch", "triton")]
    bias = torch.zeros(V, device=device)
    bias[VOCAB.boi_id] = 2.0
    for _ in range(10):
        logits = torch.randn(3, V, device=device) + bias
        assert torch.equal(samplers[1](logits), samplers[0](logits))
        assert torch.equal(samplers[1].image_pos, samplers[0].image_pos)
