"""Batched generation, ids in and ids out: parity with transformers' greedy generate, per-row
stopping, the image grammar in outputs, the runner cache, and (on a GPU) the graph-captured path
against the eager one."""
from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

from seedfast.generation import cuda_graphs
from seedfast.generation.cuda_graphs import DecodeRunner, batch_bucket, decode_runner, drop_runner
from seedfast.generation.generate import generate
from seedfast.generation.sampling import SamplingParams
from seedfast.models.llama import Llama, LlamaConfig
from seedfast.models.seed_llama import image_block, tiny_visual_vocab
from tests.generation.tiny import (  # noqa: F401 (one_thread: fixture)
    non_text_ids,
    one_thread,
    silence_rows,
    tiny_pair,
)

VOCAB = tiny_visual_vocab()
PROMPTS = [[1, 17, 29, 4], [1, 200, 3, 77, 91, 12, 5, 8, 140, 33, 2, 64], [1, 9, 9]]


@pytest.fixture(scope="module")
def pair():
    """Our model and transformers' on the same weights; visual ids and eos silenced for greedy parity."""
    model, hf = tiny_pair(seed=21)
    silence_rows(model, [*non_text_ids(VOCAB), VOCAB.eos_id])
    hf.load_state_dict(model.hf_state_dict())
    return model, hf


def _hf_greedy(hf, prompts, new_tokens):
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):  # left padding, as transformers wants for generation
        ids[b, width - len(p):] = torch.tensor(p)
        mask[b, width - len(p):] = 1
    out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                      do_sample=False, pad_token_id=0, eos_token_id=VOCAB.eos_id)
    return out[:, width:].tolist()


def test_greedy_is_token_identical_to_transformers_generate(pair):
    model, hf = pair
    ours = generate(model, PROMPTS, SamplingParams.greedy(32), vocab=VOCAB)
    theirs = _hf_greedy(hf, PROMPTS, 32)
    for b, out in enumerate(ours):
        assert out.finish_reason == "length"
        assert out.token_ids == theirs[b], f"row {b}"
        assert len(set(out.token_ids)) > 3  # a real continuation, not one repeated id


def test_rows_in_a_batch_equal_rows_alone(pair):
    model, _ = pair
    sampling = SamplingParams(max_new_tokens=20, temperature=0.8, top_p=0.9, top_k=0)
    together = generate(model, PROMPTS, sampling, vocab=VOCAB, seed=[5, 6, 7])
    # Sampling draws depend on (seed, step, row), so each prompt goes alone at its own row index.
    for b, prompt in enumerate(PROMPTS):
        batch = [[1]] * b + [prompt]
        alone = generate(model, batch, sampling, vocab=VOCAB, seed=[0] * b + [5 + b])
        assert alone[b].token_ids == together[b].token_ids


def test_sampling_is_seeded(pair):
    model, _ = pair
    sampling = SamplingParams(max_new_tokens=16, temperature=1.0, top_k=0, top_p=1.0)
    a = generate(model, PROMPTS, sampling, vocab=VOCAB, seed=1)
    b = generate(model, PROMPTS, sampling, vocab=VOCAB, seed=1)
    c = generate(model, PROMPTS, sampling, vocab=VOCAB, seed=2)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert [o.token_ids for o in a] != [o.token_ids for o in c]


def test_each_row_stops_at_its_own_limit_or_eos(pair):
    model, _ = pair
    free = generate(model, PROMPTS, SamplingParams.greedy(24), vocab=VOCAB)
    # Make a token that first appears in row 1 at step k >= 3 the eos: that row stops there.
    row = free[1].token_ids
    k = next(i for i in range(3, 24) if row[i] not in row[:i])
    stop_id = row[k]
    vocab = dataclasses.replace(VOCAB, eos_id=stop_id)
    out = generate(model, PROMPTS, [SamplingParams(max_new_tokens=v, temperature=0) for v in [24, 24, 7]], vocab=vocab)
    assert out[1].token_ids == row[: k + 1] and out[1].finish_reason == "eos"
    assert out[1].text_ids == [row[:k]]  # the eos is not text
    assert out[2].token_ids == free[2].token_ids[:7] and out[2].finish_reason == "length"
    # Row 0 stops wherever the new eos first appears in its own stream, or runs to 24.
    first = free[0].token_ids.index(stop_id) + 1 if stop_id in free[0].token_ids else 24
    assert out[0].token_ids == free[0].token_ids[:first]
    ignored = generate(model, PROMPTS, SamplingParams.greedy(24), vocab=vocab, ignore_eos=True)
    assert [o.token_ids for o in ignored] == [o.token_ids for o in free]


def _image_model(seed=22, boi_bias=4.0):
    """A model that likes to open images: the <img> row of the output is a large multiple of a text row."""
    model, _ = tiny_pair(seed=seed)
    with torch.no_grad():
        model.output.weight[VOCAB.boi_id] = boi_bias * model.output.weight[:256].mean(0)
        model.output.weight[VOCAB.boi_id] += model.output.weight[40]
    return model


def _assert_grammar(ids, vocab=VOCAB, pos=-1):
    """Check ``ids`` against the image grammar from position ``pos``; return where they end."""
    for t in ids:
        if pos < 0:
            assert t < vocab.text_vocab_size or t == vocab.boi_id, t
            pos = 0 if t == vocab.boi_id else -1
        elif pos < vocab.codes_per_image:
            assert vocab.first_code_id <= t < vocab.first_code_id + vocab.num_codes, t
            pos += 1
        else:
            assert t == vocab.eoi_id
            pos = -1
    return pos


def test_generated_images_follow_the_grammar():
    model = _image_model()
    out = generate(model, PROMPTS * 2, SamplingParams(max_new_tokens=90, temperature=1.0, top_p=0.9, top_k=0),
                   vocab=VOCAB, seed=3, ignore_eos=True)
    images = 0
    for o in out:
        assert _assert_grammar(o.token_ids) == -1  # every image finished
        assert o.image_codes.shape == (o.token_ids.count(VOCAB.boi_id), 32)
        assert ((o.image_codes >= 0) & (o.image_codes < 64)).all()
        assert len(o.text_ids) == len(o.image_codes) + 1
        rebuilt = []
        for seg, codes in zip(o.text_ids, [*o.image_codes, None]):
            rebuilt += seg + (image_block(codes, VOCAB) if codes is not None else [])
        assert rebuilt == o.token_ids
        images += len(o.image_codes)
    assert images >= 3


def test_a_limit_inside_an_image_lets_it_finish():
    model = _image_model()
    forced = [p + [VOCAB.boi_id] for p in PROMPTS]  # force_boi, as SEED's flask server
    half = [p + image_block(list(range(32)), VOCAB)[:11] for p in PROMPTS]  # <img> + 10 codes
    limits = [5, 1, 40, 3, 3, 30]
    out = generate(model, forced + half, [SamplingParams(max_new_tokens=v, temperature=1.0, top_k=0, top_p=1.0)
                                          for v in limits], vocab=VOCAB, seed=4, ignore_eos=True)
    for o in out[:2]:
        assert len(o.token_ids) == 33 and o.token_ids[-1] == VOCAB.eoi_id and o.finish_reason == "length"
    for o in out[3:5]:
        assert len(o.token_ids) == 23 and o.token_ids[-1] == VOCAB.eoi_id
        assert o.image_codes[0, :10].tolist() == list(range(10))  # the prompt's codes start the image
    for o, start in zip(out, [0, 0, 0, 10, 10, 10]):
        assert _assert_grammar(o.token_ids, pos=start) == -1
        assert len(o.image_codes) >= 1


def test_streaming_callback_sees_every_token_in_order(pair):
    model, _ = pair
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    out = generate(model, PROMPTS, [SamplingParams.greedy(v) for v in (9, 4, 12)], vocab=VOCAB,
                   on_token=lambda row, tok: seen[row].append(tok), progress=True)
    assert [seen[b] for b in range(3)] == [o.token_ids for o in out]


def test_stop_checks_are_rare(pair, monkeypatch):
    model, _ = pair
    calls = []
    original = DecodeRunner.all_done
    monkeypatch.setattr(DecodeRunner, "all_done", lambda self: calls.append(self.steps) or original(self))
    out = generate(model, PROMPTS, SamplingParams.greedy(40), vocab=VOCAB, stop_check_every=8)
    assert all(len(o.token_ids) == 40 for o in out)
    assert calls == [8, 16, 24, 32, 40]  # the last one (at the limit) ends the loop without a wasted step
    calls.clear()
    generate(model, PROMPTS, [SamplingParams.greedy(v) for v in (12, 13, 14)], vocab=VOCAB, ignore_eos=True,
             stop_check_every=5)
    assert calls == [14]  # with ignore_eos nobody stops before the shortest limit: no checks at 5 and 10


def test_runner_is_cached_per_model_and_grows_sensibly():
    model, _ = tiny_pair(seed=23)
    drop_runner(model)
    a = decode_runner(model, VOCAB, batch_size=3, max_seq_len=100, use_cuda_graphs=False)
    assert a.max_seq_len == 128 and a.batch_size == 4
    cache_bytes = 2 * 2 * 4 * 128 * 2 * 16 * 4  # k and v × layers × rows × positions × kv heads × head dim × fp32
    assert cache_bytes < a.nbytes < cache_bytes + 4 * 128 * 8 + 2 * 128 * 16 * 4 + 4096
    assert decode_runner(model, VOCAB, batch_size=2, max_seq_len=120, use_cuda_graphs=False) is a
    b = decode_runner(model, VOCAB, batch_size=5, max_seq_len=100, use_cuda_graphs=False)
    assert b is not a and (b.batch_size, b.max_seq_len) == (8, 128)  # union: no dearer than both
    c = decode_runner(model, VOCAB, batch_size=1, max_seq_len=2000, use_cuda_graphs=False)
    assert (c.batch_size, c.max_seq_len) == (1, 2048)  # 8 × 2048 would cost more than both
    other_vocab = dataclasses.replace(VOCAB, eos_id=3)
    assert decode_runner(model, other_vocab, batch_size=1, max_seq_len=10, use_cuda_graphs=False) is not c
    d = decode_runner(model, VOCAB, batch_size=1, max_seq_len=10, use_cuda_graphs=False)
    model.output.weight = torch.nn.Parameter(model.output.weight.detach().clone())  # graphs would be stale
    assert decode_runner(model, VOCAB, batch_size=1, max_seq_len=10, use_cuda_graphs=False) is not d
    assert batch_bucket(1) == 1 and batch_bucket(3) == 4 and batch_bucket(64) == 64 and batch_bucket(65) == 128
    with pytest.raises(ValueError, match="use_cuda_graphs=True needs a CUDA model"):
        DecodeRunner(model, VOCAB, batch_size=1, max_seq_len=8, use_cuda_graphs=True)
    drop_runner(model)
    assert model not in cuda_graphs._RUNNERS


@pytest.mark.parametrize("attention_bucket", [64, 128])
def test_the_decode_step_never_reads_back_to_the_host(attention_bucket):
    """What a CUDA graph needs: on meta tensors any .item(), bool(), nonzero or data-dependent
    shape raises, so a step that completes there has no host synchronisation."""
    with torch.device("meta"):
        model = Llama(LlamaConfig.tiny())
    runner = DecodeRunner(model, VOCAB, batch_size=4, max_seq_len=128, use_cuda_graphs=False)
    runner._decode_step(4, attention_bucket)
    assert runner.state.tokens.is_meta and runner.cache.k.is_meta and runner.sampler.offset.is_meta
    with pytest.raises(RuntimeError, match="meta"):
        runner.all_done()  # the check itself: a host read, so it fails here


def test_generate_reuses_the_runner_across_calls(pair):
    model, _ = pair
    drop_runner(model)
    generate(model, PROMPTS, SamplingParams.greedy(30), vocab=VOCAB)
    runner = cuda_graphs._RUNNERS[model]
    generate(model, PROMPTS[:2], SamplingParams.greedy(10), vocab=VOCAB)
    generate(model, PROMPTS[::-1], SamplingParams(max_new_tokens=30, temperature=0.5), vocab=VOCAB)
    assert cuda_graphs._RUNNERS[model] is runner


@pytest.mark.parametrize("kwargs, words", [
    (dict(seed=[1, 2]), "seed must be one value or 3 values"),
    (dict(sampling=[SamplingParams()] * 2), "sampling must be one value or 3 values"),
    (dict(sampling=dict(temperature=0)), "sampling must be a SamplingParams"),
    (dict(stop_check_every=0), "stop_check_every must be an int >= 1"),
    (dict(vocab=dataclasses.replace(VOCAB, boi_id=400, eoi_id=401)), "needs 402 ids but the model has 322"),
])
def test_bad_arguments_are_named(pair, kwargs, words):
    model, _ = pair
    with pytest.raises(ValueError, match=words):
        generate(model, PROMPTS, **{"vocab": VOCAB, **kwargs})


@pytest.mark.parametrize("kwargs, words", [
    (dict(max_new_tokens=0), "max_new_tokens must be an int >= 1"),
    (dict(max_new_tokens=2.0), "max_new_tokens must be an int >= 1"),
    (dict(temperature=-1.0), "temperature must be a finite number >= 0"),
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
    (dict(top_k=1.5), "top_k must be an int"),
    (dict(top_p=0.0), r"top_p must be a number in \(0, 1\]"),
    (dict(top_p=True), r"top_p must be a number in \(0, 1\]"),
])
def test_bad_sampling_params_are_named(kwargs, words):
    with pytest.raises(ValueError, match=f"SamplingParams: {words}"):
        SamplingParams(**kwargs)


def test_generation_config_gives_the_defaults(tmp_path):
    assert SamplingParams.from_generation_config(tmp_path) == SamplingParams()
    (tmp_path / "generation_config.json").write_text('{"do_sample": false, "max_new_tokens": 7, "top_k": 3}')
    assert SamplingParams.from_generation_config(tmp_path) == SamplingParams(max_new_tokens=7, temperature=0.0, top_k=3)
    (tmp_path / "generation_config.json").write_text('{"top_p": 0}')
    with pytest.raises(ValueError, match="generation_config.json: SamplingParams: top_p"):
        SamplingParams.from_generation_config(tmp_path)
    (tmp_path / "generation_config.json").write_text('{"top_k": "3"}')
    with pytest.raises(ValueError, match="generation_config.json: top_k must be a number"):
        SamplingParams.from_generation_config(tmp_path)


def test_bad_prompts_are_named(pair):
    model, _ = pair
    with pytest.raises(ValueError, match="token-id lists; for strings and images use seedfast.pipeline"):
        generate(model, "hello", vocab=VOCAB)
    with pytest.raises(ValueError, match="prompts is empty"):
        generate(model, [], vocab=VOCAB)
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        generate(model, [[1], []], vocab=VOCAB)
    with pytest.raises(ValueError, match="token-id lists"):
        generate(model, ["a cat"], vocab=VOCAB)
    with pytest.raises(ValueError, match=r"prompts\[1\] must be a sequence of ints"):
        generate(model, [[1], 5], vocab=VOCAB)
    with pytest.raises(ValueError, match=r"prompts\[0\] has ids outside \[0, 322\)"):
        generate(model, [[1, 500]], vocab=VOCAB)
    with pytest.raises(ValueError, match="breaks the image grammar"):
        generate(model, [[1, VOCAB.boi_id, 5]], vocab=VOCAB)


def test_sampler_errors_are_raised_after_the_run(monkeypatch):
    broken, _ = tiny_pair(seed=24)
    with torch.no_grad():
        broken.output.weight[100] = float("nan")
    checks = []
    generate_module = sys.modules["seedfast.generation.generate"]  # the package's `generate` is the function
    original = generate_module.raise_on_flags
    monkeypatch.setattr(generate_module, "raise_on_flags", lambda flags: checks.append(1) or original(flags))
    with pytest.raises(ValueError, match="row 0: an allowed logit is NaN"):
        generate(broken, [[1, 2, 3]], SamplingParams(max_new_tokens=4), vocab=VOCAB)
    assert checks == [1]  # once, after the run: the steps themselves never synchronise
    with pytest.raises(ValueError, match=r"row 1: an allowed logit is NaN") as info:
        generate(broken, [[1, 2, 3], [1, 4]], SamplingParams(max_new_tokens=4), vocab=VOCAB)
    assert "row 0" in str(info.value)
    out = generate(broken, [[1, 2, 3]], SamplingParams(max_new_tokens=4), vocab=VOCAB, check=False)
    assert out[0].finish_reason == "error" and out[0].token_ids == [VOCAB.eos_id]


# ---------------------------------------------------------------------------------------------
# CUDA graphs (need a GPU)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_replay_equals_eager_token_for_token(dtype):
    model = _image_model(seed=25).to("cuda", dtype)
    long_prompt = [1] + list(range(3, 250))  # crosses the 256-position attention bucket while decoding
    prompts = [*PROMPTS, long_prompt, [1, VOCAB.boi_id]]
    limits = [40, 20, 60, 30, 35]
    for settings in (dict(temperature=0), dict(temperature=1.0, top_p=0.9, top_k=20)):
        kwargs = dict(sampling=[SamplingParams(max_new_tokens=m, **settings) for m in limits], vocab=VOCAB,
                      seed=[1, 2, 3, 4, 5])
        drop_runner(model)
        eager = generate(model, prompts, use_cuda_graphs=False, **kwargs)
        drop_runner(model)
        graphed = generate(model, prompts, use_cuda_graphs=True, **kwargs)
        runner = cuda_graphs._RUNNERS[model]
        assert runner.batch_size == 8  # 5 rows run in the graph of 8
        assert {s for _, s in runner.graphs} == {256, 384}  # capacity 248 + 60 + 32 → 384
        assert [o.token_ids for o in graphed] == [o.token_ids for o in eager]
        assert [o.finish_reason for o in graphed] == [o.finish_reason for o in eager]
        captured = dict(runner.graphs)
        again = generate(model, prompts, use_cuda_graphs=True, **kwargs)
        assert [o.token_ids for o in again] == [o.token_ids for o in graphed]
        assert cuda_graphs._RUNNERS[model] is runner and runner.graphs == captured  # no recapture


@pytest.mark.gpu
def test_graphs_match_eager_for_a_smaller_batch_in_a_cached_runner():
    model = _image_model(seed=26).to("cuda", torch.bfloat16)
    drop_runner(model)
    generate(model, PROMPTS * 3, SamplingParams.greedy(8), vocab=VOCAB)  # runner of 16 rows
    sampling = SamplingParams(max_new_tokens=40, temperature=0.7, top_p=0.5)
    graphed = generate(model, PROMPTS[:2], sampling, vocab=VOCAB, seed=3)
    eager = generate(model, PROMPTS[:2], sampling, vocab=VOCAB, seed=3, use_cuda_graphs=False)
    assert [o.token_ids for o in graphed] == [o.token_ids for o in eager]
