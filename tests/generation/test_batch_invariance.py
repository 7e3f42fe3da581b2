"""Batch invariance: with per-request seeds and one stream id, a request's tokens do not depend on its batch or row;
context limits and int64 seeds are checked before anything runs."""
from __future__ import annotations

import pytest
import torch

from seedfast.generation.generate import generate
from seedfast.generation.sampling import SamplingParams
from seedfast.models.seed_llama import tiny_visual_vocab
from seedfast.nn import ConstrainedSampler
from tests.generation.tiny import one_thread, tiny_pair  # noqa: F401 (one_thread: fixture)

VOCAB = tiny_visual_vocab()
# Nine requests of different lengths, some ending in <img> (the model must draw 32 codes).
PROMPTS = [[1, *range(10, 10 + n)] + ([VOCAB.boi_id] if n % 3 == 0 else []) for n in (1, 3, 4, 6, 2, 9, 5, 7, 12)]
SEEDS = [101, 7, 7, 55, 3, 9000, 12, 1, 42]
SAMPLING = dict(sampling=SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=12), ignore_eos=True)


@pytest.fixture(scope="module")
def model():
    return tiny_pair(seed=41)[0]


def test_each_request_in_a_batch_of_nine_gives_its_tokens_alone(model):
    batch = generate(model, PROMPTS, vocab=VOCAB, seed=SEEDS, stream=0, **SAMPLING)
    for i, (prompt, seed) in enumerate(zip(PROMPTS, SEEDS)):
        alone = generate(model, [prompt], vocab=VOCAB, seed=seed, stream=0, **SAMPLING)[0]
        assert batch[i].token_ids == alone.token_ids, f"request {i}"
    # Any row: the batch reversed gives the same per-request tokens.
    reversed_batch = generate(model, PROMPTS[::-1], vocab=VOCAB, seed=SEEDS[::-1], stream=0, **SAMPLING)
    assert [o.token_ids for o in reversed_batch[::-1]] == [o.token_ids for o in batch]


def test_the_default_stream_is_the_row_index(model):
    """What changed is opt-in: without ``stream`` the row index keys the draws, as before."""
    prompt = PROMPTS[1]
    rows = generate(model, [prompt, prompt], vocab=VOCAB, seed=5, **SAMPLING)
    assert rows[0].token_ids != rows[1].token_ids
    same = generate(model, [prompt, prompt], vocab=VOCAB, seed=5, stream=[0, 0], **SAMPLING)
    assert same[0].token_ids == same[1].token_ids == rows[0].token_ids
    assert generate(model, [prompt, prompt], vocab=VOCAB, seed=5, stream=[0, 1], **SAMPLING)[1].token_ids == \
        rows[1].token_ids


def test_sampler_stream_buffer():
    torch.manual_seed(0)
    logits = torch.randn(1, VOCAB.min_vocab_size).expand(4, -1).contiguous()
    sampler = ConstrainedSampler(VOCAB, 4, seed=3, stream=0)
    tokens = torch.stack([sampler(logits) for _ in range(6)])
    assert (tokens == tokens[:, :1]).all()  # every row draws the same stream
    by_row = ConstrainedSampler(VOCAB, 4, seed=3)
    assert by_row.stream.tolist() == [0, 1, 2, 3]
    sampler.reset(stream=torch.tensor([0, 1, 2, 3]))
    assert torch.equal(torch.stack([sampler(logits) for _ in range(6)]),
                       torch.stack([by_row(logits) for _ in range(6)]))
    with pytest.raises(TypeError, match="stream must be an int or an integer tensor"):
        ConstrainedSampler(VOCAB, 4, stream=0.5)
    with pytest.raises(TypeError, match="reset: stream must be an int"):
        sampler.reset(stream="0")


def test_context_limit_is_an_error_naming_both_numbers(model):
    ctx = model.config.max_seq_len
    long_prompt = [1] + [5] * (ctx - 40)
    with pytest.raises(ValueError, match=rf"prompts\[0\] has {len(long_prompt)} tokens and max_new_tokens=20 .* "
                                         rf"beyond the model's context of {ctx}"):
        generate(model, [long_prompt], SamplingParams(max_new_tokens=20), vocab=VOCAB)
    with pytest.raises(ValueError, match=rf"prompts\[1\] has 3 tokens and max_new_tokens={ctx} "):
        generate(model, [[1, 5], [1, 5, 6]], [SamplingParams(max_new_tokens=v) for v in [4, ctx]], vocab=VOCAB)
    fits = ctx - len(long_prompt) - VOCAB.codes_per_image - 1
    out = generate(model, [long_prompt], SamplingParams.greedy(fits), vocab=VOCAB, ignore_eos=True)
    assert len(out[0].token_ids) >= fits


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, 2**64])
def test_out_of_range_seed_is_a_clear_error(model, seed):
    with pytest.raises(ValueError, match=r"seed must be an int in \[-2\*\*63, 2\*\*63\) \(int64\)"):
        generate(model, [[1, 5]], SamplingParams(max_new_tokens=2), vocab=VOCAB, seed=seed)
    with pytest.raises(ValueError, match=r"stream must be an int in"):
        generate(model, [[1, 5]], SamplingParams(max_new_tokens=2), vocab=VOCAB, stream=seed)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batch_invariance_with_cuda_graphs(model):
    """The graph-captured decode reads the sampler's stream buffer too (fp32, so batch shapes do not move logits
    enough to flip a draw on this tiny model)."""
    cuda = tiny_pair(seed=41)[0].to("cuda")
    batch = generate(cuda, PROMPTS, vocab=VOCAB, seed=SEEDS, stream=0, use_cuda_graphs=True, **SAMPLING)
    for i in (0, 4, 8):
        alone = generate(cuda, [PROMPTS[i]], vocab=VOCAB, seed=SEEDS[i], stream=0, use_cuda_graphs=True, **SAMPLING)
        assert batch[i].token_ids == alone[0].token_ids, f"request {i}"
