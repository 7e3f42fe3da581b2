"""constrained_sample: every backend that runs here (the torch reference and the Triton kernel,
interpreted on CPU) against the grammar, an independent float64 oracle of the truncated
distribution, and each other."""
from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from seedfast.kernels import constrained_sample as kcs
from seedfast.ops.constrained_sample import (
    FLAG_NON_FINITE,
    FLAG_NOTHING_ALLOWED,
    VisualVocab,
    _layout,
    constrained_sample,
    cuda_extension,
    grammar_masks,
    raise_on_flags,
    row_uniform,
)
from seedfast.models.seed_llama import seed_llama_vocab
from tests.aot import aot_compile

# The interpreter evaluates both sides of every tl.where in numpy, including inf - inf on lanes
# that the kernel then discards.
pytestmark = [pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")]

# V = 17: text 0..5 (eos 1), codes 6..13, <img> 14, </img> 15, and id 16 that nothing allows.
SMALL = VisualVocab(text_vocab_size=6, first_code_id=6, num_codes=8, boi_id=14, eoi_id=15, eos_id=1)
# V = 47: the markers sit between text and codes.
MID = VisualVocab(text_vocab_size=20, first_code_id=22, num_codes=24, boi_id=20, eoi_id=21, eos_id=2)
SEED = seed_llama_vocab()
# V = 152064 (a Qwen-sized vocabulary) with the codes at the very end.
AT_END = VisualVocab(text_vocab_size=143870, first_code_id=143872, num_codes=8192, boi_id=143870, eoi_id=143871,
                     eos_id=2)
BACKENDS = ["torch", "triton"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# ---------------------------------------------------------------------------------------------
# Oracles and checks


def allowed_ids(vocab: VisualVocab, v: int, pos: torch.Tensor) -> torch.Tensor:
    """``[B, V]`` bool: the ids the grammar allows each row (``</img>`` alone for forced rows)."""
    text, codes = grammar_masks(vocab, v, pos.device)
    allowed = torch.where((pos < 0)[:, None], text, codes)
    forced = (pos >= vocab.codes_per_image)[:, None]
    return torch.where(forced, torch.arange(v, device=pos.device) == vocab.eoi_id, allowed)


def exact_distribution(logits, pos, vocab, temperature, top_k, top_p):
    """The truncated, renormalised distribution ``[B, V]`` in float64, straight from the
    definitions (pairwise comparisons, no sort): the oracle of the distribution tests."""
    x = logits.double().cpu()
    pos = pos.cpu().long()
    b, v = x.shape
    text, codes = grammar_masks(vocab, v, torch.device("cpu"))
    live = torch.where((pos < 0)[:, None], text, codes) & torch.isfinite(x)
    xs = torch.where(live, x, -math.inf)
    m = xs.max(1, keepdim=True).values
    w = torch.where(live, torch.exp((xs - m) / temperature), 0.0)
    larger = xs[:, None, :] > xs[:, :, None]  # [b, i, j]: x_j > x_i
    keep = live.clone()
    if top_k > 0:
        keep &= (larger & live[:, None, :]).sum(2) < top_k
    if top_p < 1:
        wk = torch.where(keep, w, 0.0)
        above = (larger * wk[:, None, :]).sum(2)
        keep &= (above < top_p * wk.sum(1, keepdim=True)) | (xs == m)
    probs = torch.where(keep, w, 0.0)
    return probs / probs.sum(1, keepdim=True)


def chi2_limit(df: int, z: float = 5.0) -> float:
    """Wilson–Hilferty upper quantile of chi-square(df) at ``z`` standard deviations (~3e-7 tail)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def chi2_fits(counts: torch.Tensor, probs: torch.Tensor) -> tuple[bool, float]:
    """Whether counts drawn from ``probs`` pass: no draw where ``probs`` is 0 and Pearson's
    statistic below :func:`chi2_limit`."""
    n = counts.sum().item()
    support = probs > 0
    if (counts[~support] > 0).any():
        return False, math.inf
    expected = probs[support] * n
    stat = ((counts[support].double() - expected) ** 2 / expected).sum().item()
    df = int(support.sum()) - 1
    return (stat <= chi2_limit(df)) if df > 0 else True, stat


def assert_grammar(tokens, next_pos, flags, logits, pos, vocab):
    """Every row: forced rows emit ``</img>``; error rows ``eos`` with the right flags; the others
    an allowed id with a finite logit and the right next state."""
    tokens, next_pos, flags, logits, pos = (t.cpu() for t in (tokens, next_pos, flags, logits, pos))
    pos = pos.long()
    b, v = logits.shape
    assert tokens.dtype == torch.int64 and next_pos.dtype == torch.int32 and flags.dtype == torch.int32
    assert tokens.shape == next_pos.shape == flags.shape == (b,)
    forced = pos >= vocab.codes_per_image
    allowed = allowed_ids(vocab, v, pos)
    x = logits.float()
    bad = ((torch.isnan(x) | (x == math.inf)) & allowed).any(1) & ~forced
    none = ~(allowed & torch.isfinite(x)).any(1) & ~bad & ~forced
    want_flags = bad.int() * FLAG_NON_FINITE + none.int() * FLAG_NOTHING_ALLOWED
    assert torch.equal(flags, want_flags), (flags != want_flags).nonzero().flatten()[:10]
    error = want_flags != 0
    assert (tokens[forced] == vocab.eoi_id).all()
    assert (tokens[error] == vocab.eos_id).all()
    ok = ~forced & ~error
    rows = ok.nonzero().flatten()
    picked = tokens[rows]
    assert ((picked >= 0) & (picked < v)).all()
    assert allowed[rows, picked].all(), "a forbidden token was sampled"
    assert torch.isfinite(x[rows, picked]).all(), "a token with a -inf logit was sampled"
    want_next = torch.full((b,), -1, dtype=torch.int64)
    want_next[ok & (pos < 0) & (tokens == vocab.boi_id)] = 0
    want_next[ok & (pos >= 0)] = pos[ok & (pos >= 0)] + 1
    assert torch.equal(next_pos.long(), want_next)


def random_case(b, vocab, v, seed, *, device="cpu", dtype=torch.float32):
    """Random rows in every grammar state with random filters, including -inf-heavy rows, rows
    with a single finite allowed logit, rows of tied (quantised) logits and greedy rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, v, generator=g) * (torch.rand(b, 1, generator=g) * 4 + 0.05)
    kind = torch.randint(0, 5, (b,), generator=g)
    x = torch.where((kind == 1)[:, None], (x * 2).round() / 2, x)
    x = torch.where((kind == 2)[:, None] & (torch.rand(b, v, generator=g) < 0.85), -math.inf, x)
    pos = torch.randint(-4, vocab.codes_per_image + 3, (b,), generator=g)
    allowed = allowed_ids(vocab, v, pos)
    one = torch.multinomial(allowed.float(), 1, generator=g)[:, 0]
    single = torch.where(torch.arange(v) == one[:, None], x, -math.inf)
    x = torch.where((kind == 3)[:, None], single, x)
    temperature = torch.where(torch.rand(b, generator=g) < 0.15, 0.0, torch.rand(b, generator=g) * 1.9 + 0.1)
    top_k = torch.randint(-1, 10, (b,), generator=g)
    top_p = torch.where(torch.rand(b, generator=g) < 0.3, 1.0, torch.rand(b, generator=g))
    seed_t = torch.randint(-2**62, 2**62, (b,), generator=g)
    offset = torch.randint(-2**40, 2**40, (b,), generator=g)
    to = functools.partial(torch.Tensor.to, device=device)
    return dict(logits=to(x.to(dtype)), image_pos=to(pos.int()), temperature=to(temperature), top_k=to(top_k),
                top_p=to(top_p), seed=to(seed_t), offset=to(offset))


def run(case, vocab, backend, **kw):
    return constrained_sample(case["logits"], case["image_pos"], vocab=vocab, temperature=case["temperature"],
                              top_k=case["top_k"], top_p=case["top_p"], seed=case["seed"], offset=case["offset"],
                              return_flags=True, check=False, backend=backend, **kw)


@functools.cache
def fuzz_case(device):
    return random_case(10_000, MID, 47, seed=11, device=device)


@functools.cache
def fuzz_result(device, backend):
    return run(fuzz_case(device), MID, backend)


# ---------------------------------------------------------------------------------------------
# The shared uniform


def test_kernel_uniform_matches_row_uniform_bit_for_bit(device):
    g = torch.Generator().manual_seed(0)
    n = 4096
    seed = torch.randint(-2**63, 2**63 - 1, (n,), generator=g, dtype=torch.int64)
    offset = torch.randint(-2**63, 2**63 - 1, (n,), generator=g, dtype=torch.int64)
    seed[:4] = torch.tensor([0, -1, 2**63 - 1, -2**63])
    offset[:4] = torch.tensor([-2**63, 2**63 - 1, 0, -1])
    rows = torch.randint(0, 2**31 - 1, (n,), generator=g, dtype=torch.int64)
    rows[:8] = torch.arange(8)
    expected = row_uniform(seed, offset, rows)
    got = kcs.constrained_sample_uniform(seed.to(device), offset.to(device), rows.to(device)).cpu()
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))
    assert (expected >= 0).all() and (expected < 1).all()
    # 24 bits, roughly uniform: each tenth of [0, 1) holds about a tenth of the values.
    assert (expected * 2**24 == (expected * 2**24).round()).all()
    hist = torch.histc(expected, bins=10, min=0, max=1)
    assert (hist - n / 10).abs().max() < 5 * math.sqrt(n / 10)


def test_row_uniform_is_a_hash_of_seed_offset_and_row():
    zeros = torch.zeros(3, dtype=torch.int64)
    base = row_uniform(zeros, zeros, torch.arange(3))
    assert len(set(base.tolist())) == 3
    assert not torch.equal(base, row_uniform(zeros + 1, zeros, torch.arange(3)))
    assert not torch.equal(base, row_uniform(zeros, zeros + 2**32, torch.arange(3)))  # high word of offset
    assert not torch.equal(base, row_uniform(zeros + 2**32, zeros, torch.arange(3)))  # high word of seed


# ---------------------------------------------------------------------------------------------
# Grammar


@pytest.mark.parametrize("backend", BACKENDS)
def test_fuzz_never_samples_a_forbidden_token(backend, device):
    case = fuzz_case(device)
    tokens, next_pos, flags = fuzz_result(device, backend)
    assert_grammar(tokens, next_pos, flags, case["logits"], case["image_pos"], MID)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forty_steps_from_img_give_32_codes_then_eoi(backend, device):
    vocab, v, b = MID, 47, 64
    g = torch.Generator().manual_seed(5)
    pos = torch.zeros(b, dtype=torch.int32, device=device)
    history = []
    for step in range(40):
        x = torch.randn(b, v, generator=g) * 3
        # Adversarial logits: whatever the grammar forbids is by far the most likely.
        x[:, vocab.eoi_id] += 50 * (pos.cpu() < vocab.codes_per_image)
        x[:, vocab.first_code_id:] += 50 * (pos.cpu() < 0)[:, None]
        x[:, :vocab.text_vocab_size] += 40 * (pos.cpu() >= 0)[:, None]
        x[:, vocab.boi_id] += 40 * (pos.cpu() >= 0)
        x = x.to(device)
        temperature = [1.0, 0.0, 0.7][step % 3]
        tokens, nxt, flags = constrained_sample(x, pos, vocab=vocab, temperature=temperature, top_k=step % 5,
                                                top_p=0.9, seed=1, offset=step, return_flags=True, backend=backend)
        assert_grammar(tokens, nxt, flags, x, pos, vocab)
        history.append(tokens.cpu())
        pos = nxt
    history = torch.stack(history, 1)
    codes = history[:, :32]
    assert ((codes >= vocab.first_code_id) & (codes < vocab.first_code_id + vocab.num_codes)).all()
    assert (history[:, 32] == vocab.eoi_id).all()
    # Back in text after </img>: the adversarial logits push codes, which stay forbidden.
    assert (history[:, 33] < vocab.first_code_id).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_with_one_finite_allowed_token_emit_it(backend, device):
    vocab, v = SMALL, 17
    pos = torch.tensor([-1, -1, 0, 5, 31], dtype=torch.int32)
    only = torch.tensor([14, 3, 6, 13, 9])
    x = torch.full((5, v), -math.inf)
    x[torch.arange(5), only] = torch.tensor([-30.0, 2.0, 0.0, 1e30, -1e30])
    x[:, 15] = 100.0  # </img> is never allowed here
    x[:, 16] = 100.0  # an id outside every range
    for kw in (dict(temperature=1.0), dict(temperature=0.0), dict(temperature=0.3, top_k=1, top_p=0.1)):
        tokens, nxt = constrained_sample(x.to(device), pos.to(device), vocab=vocab, backend=backend, **kw)
        assert torch.equal(tokens.cpu(), only)
        assert nxt.tolist() == [0, -1, 1, 6, 32]


# ---------------------------------------------------------------------------------------------
# The distribution


def _draws(logits_row, pos, vocab, n, backend, device, **kw):
    """``n`` draws for one row (the row repeated with stride 0; rows hash to different ``u``)."""
    v = logits_row.numel()
    logits = logits_row.to(device).expand(n, v)
    image_pos = torch.full((n,), pos, dtype=torch.int32, device=device)
    tokens, _ = constrained_sample(logits, image_pos, vocab=vocab, seed=17, offset=3, backend=backend, **kw)
    return torch.bincount(tokens.cpu(), minlength=v)


# A text row of SMALL whose probabilities at temperature 1 are about
# [.35 .25 .15 .12 .08 .03] on ids 0..5 and .02 on <img> (14): with top_p = 0.7 the mass above
# id 2 is .60 (kept) and above id 3 is .75 (cut), far from the boundary either way.
_P = torch.tensor([0.35, 0.25, 0.15, 0.12, 0.08, 0.03])
TEXT_ROW = torch.full((17,), -4.0)
TEXT_ROW[:6] = _P.log()
TEXT_ROW[14] = math.log(0.02)
TEXT_ROW[6:14] = 5.0  # codes are forbidden in text, however likely
# An image row with a tie at the top-k boundary: k = 2 keeps the 3.0 and both 2.0s.
IMAGE_ROW = torch.tensor([9.0] * 6 + [3.0, 2.0, 1.0, 2.0, 0.5, -1.0, 0.0, 1.5] + [9.0] * 3)

DIST_CASES = {
    "top_p": (TEXT_ROW, -1, dict(temperature=1.0, top_p=0.7)),
    "top_k_ties": (IMAGE_ROW, 4, dict(temperature=1.0, top_k=2)),
    "k_and_p_and_t": (IMAGE_ROW, 0, dict(temperature=0.5, top_k=5, top_p=0.8)),
    "plain": (TEXT_ROW, -1, dict(temperature=1.3)),
}


@pytest.mark.parametrize("name", list(DIST_CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_empirical_distribution_matches_the_exact_one(backend, name, device):
    row, pos, kw = DIST_CASES[name]
    # The interpreter is slow: the kernel gets 2^14 draws per case, the reference 2^18.
    n = 2**18 if backend == "torch" else 2**14
    counts = _draws(row, pos, SMALL, n, backend, device, **kw)
    probs = exact_distribution(row[None], torch.tensor([pos]), SMALL, kw.get("temperature", 1.0),
                               kw.get("top_k", 0), kw.get("top_p", 1.0))[0]
    fits, stat = chi2_fits(counts, probs)
    assert fits, f"chi-square {stat:.1f} for counts {counts.tolist()} vs probs {probs.tolist()}"


def test_off_by_one_boundaries_would_be_caught():
    """The distribution test has the power to see a wrong boundary: the correct draws fail
    against the distributions an off-by-one top-p or top-k rule would give."""
    counts = _draws(TEXT_ROW, -1, SMALL, 2**16, "torch", "cpu", temperature=1.0, top_p=0.7)
    exact = exact_distribution(TEXT_ROW[None], torch.tensor([-1]), SMALL, 1.0, 0, 0.7)[0]
    assert chi2_fits(counts, exact)[0]
    kept = exact > 0
    assert kept.nonzero().flatten().tolist() == [0, 1, 2]
    w = torch.zeros(17, dtype=torch.float64)
    w[:6] = _P.double()
    w[14] = 0.02
    # Inclusive mass (keep iff the mass up to and including i is < top_p) drops id 2.
    inclusive = torch.where(torch.arange(17) < 2, w, 0.0)
    # "<=" on the next token (or a cumsum that keeps the first token reaching top_p) adds id 3.
    one_more = torch.where(torch.arange(17) < 4, w, 0.0)
    for wrong in (inclusive, one_more):
        assert not chi2_fits(counts, wrong / wrong.sum())[0]
    # Top-k with ties: keeping exactly k tokens (one of the tied 2.0s dropped) is caught too.
    counts = _draws(IMAGE_ROW, 4, SMALL, 2**16, "torch", "cpu", temperature=1.0, top_k=2)
    exact = exact_distribution(IMAGE_ROW[None], torch.tensor([4]), SMALL, 1.0, 2, 1.0)[0]
    assert chi2_fits(counts, exact)[0] and (exact > 0).sum() == 3
    exactly_k = exact.clone()
    exactly_k[9] = 0
    assert not chi2_fits(counts, exactly_k / exactly_k.sum())[0]


def test_reference_matches_the_oracle_on_random_rows():
    """Many rows, each its own distribution: the reference's tokens are distributed as the oracle
    says (a chi-square over the probability-integral transform of each draw)."""
    case = random_case(4000, SMALL, 17, seed=3)
    pos = case["image_pos"].clamp(max=31)  # forced rows carry no distribution
    # One (t, k, p) per block of rows, so the oracle's definitions apply directly.
    t, k, p = 0.8, 3, 0.85
    case["temperature"].fill_(t)
    case["top_k"].fill_(k)
    case["top_p"].fill_(p)
    case["logits"] = case["logits"].nan_to_num(neginf=-1e4)
    case["image_pos"] = pos
    tokens, _, _ = run(case, SMALL, "torch")
    probs = exact_distribution(case["logits"], pos, SMALL, t, k, p)
    # PIT: u' = F(token - 1) + U·p(token) is uniform when tokens follow probs.
    cdf = probs.cumsum(1)
    below = cdf.gather(1, tokens[:, None])[:, 0] - probs.gather(1, tokens[:, None])[:, 0]
    jitter = torch.rand(len(tokens), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pit = below + jitter * probs.gather(1, tokens[:, None])[:, 0]
    assert (probs.gather(1, tokens[:, None]) > 0).all()
    hist = torch.histc(pit.float(), bins=20, min=0, max=1).double()
    expected = len(tokens) / 20
    assert ((hist - expected) ** 2 / expected).sum() < chi2_limit(19)


# ---------------------------------------------------------------------------------------------
# Greedy, determinism, agreement between backends


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_is_the_masked_argmax_with_ties_to_the_lowest_id(backend, device):
    g = torch.Generator().manual_seed(2)
    b, v, vocab = 2000, 47, MID
    x = torch.randint(-3, 3, (b, v), generator=g).float()  # many ties
    x = torch.where(torch.rand(b, v, generator=g) < 0.3, -math.inf, x)
    pos = torch.randint(-2, 32, (b,), generator=g).int()
    allowed = allowed_ids(vocab, v, pos.long()) & torch.isfinite(x)
    keep = allowed.any(1)
    x, pos, allowed = x[keep], pos[keep], allowed[keep]
    # NaN temperature is greedy as well.
    temperature = torch.where(torch.arange(len(x)) % 7 == 0, math.nan, 0.0)
    tokens, _ = constrained_sample(x.to(device), pos.to(device), vocab=vocab, temperature=temperature.to(device),
                                   top_k=3, top_p=0.5, backend=backend)
    masked = torch.where(allowed, x, -math.inf)
    expected = torch.stack([torch.nonzero(r == r.max())[0, 0] for r in masked])
    assert torch.equal(tokens.cpu(), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_and_offset_same_draw_new_offset_new_draw(backend, device):
    b = 1000
    x = torch.zeros(b, 47, device=device)  # flat over 24 codes: draws differ often
    pos = torch.full((b,), 3, dtype=torch.int32, device=device)
    offset = torch.zeros(b, dtype=torch.int64, device=device)
    first, _ = constrained_sample(x, pos, vocab=MID, seed=9, offset=offset, backend=backend)
    again, _ = constrained_sample(x, pos, vocab=MID, seed=9, offset=offset, backend=backend)
    assert torch.equal(first, again)
    moved, _ = constrained_sample(x, pos, vocab=MID, seed=9, offset=offset + 1, backend=backend)
    other_seed, _ = constrained_sample(x, pos, vocab=MID, seed=10, offset=offset, backend=backend)
    # Two independent uniform draws over 24 codes coincide 1/24 of the time.
    assert (moved != first).float().mean() > 0.9
    assert (other_seed != first).float().mean() > 0.9
    # Per-row seeds: a row's draw depends on its own seed and offset only.
    seeds = torch.arange(b, device=device)
    per_row, _ = constrained_sample(x, pos, vocab=MID, seed=seeds, offset=offset, backend=backend)
    assert per_row[9].item() == first[9].item()


def test_triton_agrees_with_the_reference(device):
    case = fuzz_case(device)
    ref = fuzz_result(device, "torch")
    out = fuzz_result(device, "triton")
    same = out[0] == ref[0]
    # The same u and the same kept sets: only a float-rounding tie on the CDF can differ.
    assert same.float().mean() >= 0.999, f"agreement {same.float().mean():.5f}"
    greedy = ~(case["temperature"] > 0)
    assert same[greedy].all()
    assert torch.equal(out[1][same], ref[1][same]) and torch.equal(out[2], ref[2])


@pytest.mark.parametrize("cap, pivots, refine", [(1, 1, 0), (2, 2, 1), (4, 8, 3), (8, 4, 0)])
def test_refinement_and_fallback_paths_keep_the_same_tokens(cap, pivots, refine, device):
    """Small candidate caps force the refinement passes and the exact whole-row fallback."""
    case = random_case(1000, MID, 47, seed=23, device=device)
    ref = run(case, MID, "torch")
    out = kcs.constrained_sample_forward(
        case["logits"], case["image_pos"], case["temperature"], case["top_k"], case["top_p"], case["seed"],
        case["offset"], torch.arange(len(case["seed"]), device=device), tuple(_layout(MID)), method="rows", cap=cap,
        num_pivots=pivots, max_refine=refine)
    same = out[0] == ref[0]
    assert same.float().mean() >= 0.998
    assert same[~(case["temperature"] > 0)].all()
    assert_grammar(*out, case["logits"], case["image_pos"], MID)


def test_gpu_tiling_one_row_per_program(device):
    """The GPU's tiling (one row per program, rows spanning several tiles) under the interpreter,
    with <img> on the first lane of a tile and the codes filling exactly one tile."""
    vocab = VisualVocab(text_vocab_size=16, first_code_id=18, num_codes=16, boi_id=16, eoi_id=17, eos_id=0)
    case = random_case(32, vocab, 34, seed=29, device=device)
    case["logits"][:8, vocab.boi_id] = 9.0  # <img> is the argmax of some text rows
    ref = run(case, vocab, "torch")
    for cap, refine in ((8, 1), (2, 0)):
        out = kcs.constrained_sample_forward(
            case["logits"], case["image_pos"], case["temperature"], case["top_k"], case["top_p"], case["seed"],
            case["offset"], torch.arange(len(case["seed"]), device=device), tuple(_layout(vocab)), method="rows",
            cap=cap, max_refine=refine, rows=1, block_v=16)
        assert_grammar(*out, case["logits"], case["image_pos"], vocab)
        assert torch.equal(out[0], ref[0])


# ---------------------------------------------------------------------------------------------
# Sizes and dtypes


def _big_case(vocab, v, b, device, dtype=torch.float32):
    g = torch.Generator().manual_seed(v)
    x = (torch.randn(b, v, generator=g) * 2.5).to(dtype).to(device)
    pos = torch.tensor([-1, 0, 17, 31, 32, -1, 5, -1][:b], dtype=torch.int32, device=device)
    return x, pos


@pytest.mark.parametrize("vocab, v", [(SMALL, 17), (SEED, 40194), (AT_END, 152064)], ids=["17", "40194", "152064"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_odd_vocabulary_sizes(backend, vocab, v, device):
    x, pos = _big_case(vocab, v, 8, device)
    temperature = torch.tensor([1.0, 1.0, 0.0, 0.7, 1.0, 0.0, 1.0, 1.0], device=device)
    top_k = torch.tensor([50, 50, 0, 0, 50, 0, 0, 0], device=device)
    top_p = torch.tensor([0.9, 0.9, 1.0, 0.5, 1.0, 1.0, 1.0, 0.95], device=device)
    out = constrained_sample(x, pos, vocab=vocab, temperature=temperature, top_k=top_k, top_p=top_p, seed=4,
                             offset=torch.arange(8, device=device), return_flags=True, backend=backend)
    assert_grammar(*out, x, pos, vocab)
    ref = constrained_sample(x.cpu(), pos.cpu(), vocab=vocab, temperature=temperature.cpu(), top_k=top_k.cpu(),
                             top_p=top_p.cpu(), seed=4, offset=torch.arange(8), backend="torch")
    assert torch.equal(out[0].cpu(), ref[0])


def test_vocabulary_too_small_for_the_layout():
    with pytest.raises(ValueError, match="V=40000 ids but the vocab layout needs at least 40194"):
        constrained_sample(torch.zeros(2, 40000), torch.zeros(2, dtype=torch.int32), vocab=SEED)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("backend", BACKENDS)
def test_logit_dtypes(backend, dtype, device):
    case = random_case(1000, MID, 47, seed=31, device=device, dtype=dtype)
    out = run(case, MID, backend)
    assert_grammar(*out, case["logits"], case["image_pos"], MID)
    ref = run({**case, "logits": case["logits"].cpu().float()} | {k: v.cpu() for k, v in case.items()
                                                                    if k != "logits"}, MID, "torch")
    same = out[0].cpu() == ref[0]
    assert same.float().mean() >= 0.998
    assert same[~(case["temperature"].cpu() > 0)].all()


def test_float64_logits_run_on_the_reference():
    x = torch.randn(4, 17, dtype=torch.float64)
    pos = torch.tensor([-1, 0, 3, 40], dtype=torch.int32)
    tokens, _ = constrained_sample(x, pos, vocab=SMALL, temperature=0.0)
    assert torch.equal(tokens, constrained_sample(x.float(), pos, vocab=SMALL, temperature=0.0, backend="torch")[0])


@pytest.mark.parametrize("b", [0, 1, 1000])
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_sizes(backend, b, device):
    case = random_case(b, SMALL, 17, seed=b, device=device)
    out = run(case, SMALL, backend)
    assert out[0].shape == (b,) and out[0].device.type == torch.device(device).type
    assert_grammar(*out, case["logits"], case["image_pos"], SMALL)
    if b:
        ref = run({k: v.cpu() for k, v in case.items()}, SMALL, "torch")
        assert (out[0].cpu() == ref[0]).float().mean() >= 0.998


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_logits_and_scalar_tensor_arguments(backend, device):
    wide = torch.randn(64, 60, device=device)
    x = wide[:, 5:52]  # row stride 60
    pos = torch.randint(-1, 33, (64,), generator=torch.Generator().manual_seed(0)).int().to(device)
    kw = dict(vocab=MID, temperature=torch.tensor(0.8, device=device), top_k=torch.tensor([5], device=device),
              top_p=torch.tensor(0.9, device=device), seed=torch.tensor(3, device=device),
              offset=torch.tensor([7], dtype=torch.int32, device=device))
    tokens, nxt = constrained_sample(x, pos, backend=backend, **kw)
    same, _ = constrained_sample(x.contiguous(), pos, backend=backend, **kw)
    assert torch.equal(tokens, same)
    ref, _ = constrained_sample(x.cpu().contiguous(), pos.cpu(), backend="torch",
                                **{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()})
    assert (tokens.cpu() == ref).float().mean() >= 0.98


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_and_empty_rows_emit_eos_and_flags(backend, device):
    vocab, v = SMALL, 17
    pos = torch.tensor([-1, -1, 3, 0, -1, 40, 2, -1], dtype=torch.int32)
    x = torch.randn(8, v)
    x[0, 2] = math.nan  # allowed NaN
    x[1, 14] = math.inf  # allowed +inf on <img>
    x[2, 6:14] = -math.inf  # no allowed finite logit in an image
    x[3, 0] = math.nan  # NaN on a forbidden id: harmless
    x[3, 15] = math.inf  # +inf on </img>, forbidden inside an image: harmless
    x[4, :6] = -math.inf  # text row: everything -inf but <img>, which stays finite
    x[4, 14] = -2.0
    x[5] = math.nan  # forced </img>: never an error
    x[6, 6] = math.nan
    x[6, 7:14] = -math.inf  # NaN and nothing else: the NaN flag only
    x[7, :6] = -math.inf
    x[7, 14] = -math.inf  # nothing allowed at all
    x = x.to(device)
    pos = pos.to(device)
    tokens, nxt, flags = constrained_sample(x, pos, vocab=vocab, check=False, return_flags=True, backend=backend)
    assert flags.tolist() == [1, 1, 2, 0, 0, 0, 1, 2]
    assert tokens.tolist()[:3] == [1, 1, 1] and tokens[4].item() == 14 and tokens[5].item() == 15
    assert tokens[6].item() == 1 and tokens[7].item() == 1
    assert nxt.tolist() == [-1, -1, -1, 1, 0, -1, -1, -1]
    # By default nothing is checked: the bad rows only carry their flags, for the caller to check.
    quiet = constrained_sample(x, pos, vocab=vocab, return_flags=True, backend=backend)
    assert quiet[2].tolist() == flags.tolist() and torch.equal(quiet[0], tokens)
    with pytest.raises(ValueError) as info:
        constrained_sample(x, pos, vocab=vocab, check=True, backend=backend)
    message = str(info.value)
    with pytest.raises(ValueError) as later:
        raise_on_flags(quiet[2])
    assert str(later.value) == message
    for row in (0, 1, 2, 6, 7):
        assert f"row {row}:" in message
    assert "row 3" not in message and "row 5" not in message
    assert "NaN or +inf" in message and "no allowed token has a finite logit" in message and "eos" in message


def test_error_message_lists_ten_rows_and_counts_the_rest():
    x = torch.full((25, 17), math.nan)
    with pytest.raises(ValueError, match=r"row 9: .*\(and 15 more rows\)"):
        constrained_sample(x, torch.full((25,), -1, dtype=torch.int32), vocab=SMALL, check=True)


def test_the_default_call_never_reads_back_to_the_host():
    """Sync-free by default: on meta tensors any read of a value raises, so a call that completes
    there performed no check; ``check=True`` is the one that reads the flags."""
    x = torch.empty(4, 17, device="meta")
    pos = torch.full((4,), -1, dtype=torch.int32, device="meta")
    tokens, nxt, flags = constrained_sample(x, pos, vocab=SMALL, temperature=0.7, return_flags=True)
    assert tokens.is_meta and flags.shape == (4,)
    with pytest.raises((NotImplementedError, RuntimeError)):
        constrained_sample(x, pos, vocab=SMALL, check=True)


def _bad(**overrides):
    args = dict(logits=torch.randn(2, 17), image_pos=torch.tensor([-1, 0], dtype=torch.int32), vocab=SMALL)
    args.update(overrides)
    logits, image_pos = args.pop("logits"), args.pop("image_pos")
    return lambda: constrained_sample(logits, image_pos, **args)


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (_bad(vocab="seed"), TypeError, "vocab must be a VisualVocab"),
        (_bad(logits=[[0.0] * 17]), TypeError, "logits must be a torch.Tensor"),
        (_bad(logits=torch.zeros(2, 17, dtype=torch.int64)), TypeError, "logits must have dtype"),
        (_bad(logits=torch.zeros(2, 3, 17)), ValueError, "logits must have 2 dimensions"),
        (_bad(image_pos=torch.zeros(2)), TypeError, "image_pos must have dtype"),
        (_bad(image_pos=torch.zeros(2, 1, dtype=torch.int32)), ValueError, "image_pos must have 1 dimensions"),
        (_bad(image_pos=torch.zeros(3, dtype=torch.int32)), ValueError, "image_pos must have shape [B] = [2]"),
        (_bad(image_pos=torch.zeros(2, dtype=torch.int32, device="meta")), ValueError, "one device"),
        (_bad(logits=torch.zeros(2, 15)), ValueError, "needs at least 16"),
        (_bad(temperature=-0.5), ValueError, "temperature must be a finite number >= 0"),
        (_bad(temperature=math.inf), ValueError, "temperature must be a finite number >= 0"),
        (_bad(temperature="hot"), ValueError, "temperature must be"),
        (_bad(top_k=2.5), ValueError, "top_k must be an int"),
        (_bad(top_k=True), ValueError, "top_k must be an int"),
        (_bad(top_p=0.0), ValueError, "top_p must be in (0, 1]"),
        (_bad(top_p=1.5), ValueError, "top_p must be in (0, 1]"),
        (_bad(seed=1.5), ValueError, "seed must be an int"),
        (_bad(offset=None), ValueError, "offset must be an int"),
        (_bad(seed=torch.tensor([1.0, 2.0])), TypeError, "seed must be an int64 tensor"),
        (_bad(offset=torch.zeros(2, dtype=torch.int16)), TypeError, "offset must be an int64 tensor"),
        (_bad(top_k=torch.tensor([1.0, 2.0])), TypeError, "top_k must be an integer tensor"),
        (_bad(temperature=torch.ones(3)), ValueError, "temperature must be a scalar or a [B] = [2] tensor"),
        (_bad(top_p=torch.ones(2, 1)), ValueError, "top_p must be a scalar or a [B] = [2] tensor"),
        (_bad(seed=torch.zeros(2, dtype=torch.int64, device="meta")), ValueError, "seed must be on cpu"),
        (_bad(backend="fast"), ValueError, "backend must be one of"),
        (_bad(backend="cuda"), ValueError, "backend='cuda' needs CUDA tensors"),
        (_bad(logits=torch.randn(2, 17, dtype=torch.float64), backend="triton"), ValueError,
         "supports logits of dtype float32/float16/bfloat16"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "fields, words",
    [
        (dict(text_vocab_size=0), "text_vocab_size must be >= 1"),
        (dict(num_codes=0), "num_codes must be >= 1"),
        (dict(codes_per_image=0), "codes_per_image must be >= 1"),
        (dict(first_code_id=5), "overlap text ids"),
        (dict(boi_id=3), "boi_id=3 must be outside text ids and codes"),
        (dict(eoi_id=7), "eoi_id=7 must be outside text ids and codes"),
        (dict(eoi_id=14), "boi_id and eoi_id must differ"),
        (dict(eos_id=6), "eos_id=6 must be a text id"),
    ],
)
def test_bad_layouts_raise_clear_errors(fields, words):
    base = dict(text_vocab_size=6, first_code_id=6, num_codes=8, boi_id=14, eoi_id=15, eos_id=1)
    with pytest.raises(ValueError, match=None) as info:
        VisualVocab(**(base | fields))
    assert words in str(info.value)


def test_seed_llama_layout():
    assert (SEED.text_vocab_size, SEED.first_code_id, SEED.num_codes, SEED.boi_id, SEED.eoi_id) == (
        32000, 32000, 8192, 40192, 40193)
    assert SEED.min_vocab_size == 40194 and AT_END.min_vocab_size == 152064


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        constrained_sample(torch.randn(2, 17), torch.zeros(2, dtype=torch.int32), vocab=SMALL, backend="triton")


def test_auto_backend_uses_the_reference_on_cpu():
    case = random_case(50, SMALL, 17, seed=8)
    assert torch.equal(run(case, SMALL, "auto")[0], run(case, SMALL, "torch")[0])


def test_cuda_extension_reports_why_it_cannot_build(monkeypatch):
    from seedfast.ops import _cuda_ext

    monkeypatch.setattr(_cuda_ext, "cuda_unavailable_reason", lambda: "no CUDA device is visible to torch")
    _cuda_ext.load_extension.cache_clear()
    with pytest.raises(RuntimeError, match="cannot build the CUDA extension 'x': no CUDA device"):
        _cuda_ext.load_extension("x", ("constrained_sample.cu",))
    with pytest.raises(RuntimeError, match="'seedfast_constrained_sample': no CUDA device.*backend='triton'"):
        cuda_extension()
    for name in ("constrained_sample.cu", "constrained_sample_binding.cpp"):
        assert (_cuda_ext.csrc_dir() / name).is_file()
    monkeypatch.setattr(_cuda_ext, "cuda_unavailable_reason", lambda: None)
    with pytest.raises(RuntimeError, match="missing sources"):
        _cuda_ext.load_extension("y", ("no_such_file.cu",))


# ---------------------------------------------------------------------------------------------
# torch.library, compile, CUDA graphs, AOT


def test_custom_op_passes_opcheck(device):
    case = random_case(64, SMALL, 17, seed=4, device=device)
    args = (case["logits"], case["image_pos"], case["temperature"], case["top_k"], case["top_p"], case["seed"],
            case["offset"], torch.arange(64, device=device), _layout(SMALL))
    torch.library.opcheck(torch.ops.seedfast.constrained_sample.default, args)


def test_torch_compile_fullgraph_matches_eager(device):
    case = random_case(64, SMALL, 17, seed=6, device=device)
    # Finite logits: no error row, so eager and compiled agree on every flag too.
    case["logits"] = torch.randn(64, 17, generator=torch.Generator().manual_seed(6)).to(device)

    def step(logits, image_pos, offset):
        tokens, nxt = constrained_sample(logits, image_pos, vocab=SMALL, temperature=0.8, top_k=4, top_p=0.9,
                                         seed=1, offset=offset, backend="triton")
        return tokens, nxt

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    offset = torch.zeros(64, dtype=torch.int64, device=device)
    eager = step(case["logits"], case["image_pos"], offset)
    graph = compiled(case["logits"], case["image_pos"], offset)
    assert all(torch.equal(a, b) for a, b in zip(eager, graph))


@pytest.mark.gpu
def test_cuda_backend_matches_triton():
    case = random_case(4096, SEED, 40194, seed=12, device="cuda")
    a = run(case, SEED, "cuda")
    b = run(case, SEED, "triton")
    assert (a[0] == b[0]).float().mean() >= 0.999 and torch.equal(a[2], b[2])


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_stream_ids_make_a_row_independent_of_its_place_in_the_batch(backend, device):
    """With per-request stream ids, a request sampled at any row draws what it draws alone."""
    case = random_case(9, MID, 47, seed=31, device=device)
    case["temperature"] = torch.ones_like(case["temperature"])
    case["top_k"] = torch.zeros_like(case["top_k"])
    stream = torch.arange(100, 109, device=device)
    batch = run(case, MID, backend, stream=stream)
    for row in range(9):
        one = {k: v[row:row + 1] for k, v in case.items()}
        alone = run(one, MID, backend, stream=stream[row:row + 1])
        assert torch.equal(alone[0], batch[0][row:row + 1]), row
        moved = {k: torch.cat([v[row:row + 1], v[:row]]) for k, v in case.items()}  # now at row 0
        assert run(moved, MID, backend, stream=torch.cat([stream[row:row + 1], stream[:row]]))[0][0] == batch[0][row]
    # The default stream is the row index: the same as passing it explicitly, and a row moved
    # within the batch then draws a different uniform.
    assert torch.equal(run(case, MID, backend)[0], run(case, MID, backend, stream=torch.arange(9, device=device))[0])
    with pytest.raises(TypeError, match="stream must be an int64 tensor"):
        run(case, MID, backend, stream=torch.zeros(9, device=device))


@pytest.mark.skipif(os.environ.get("SEEDFAST_SKIP_AOT") == "1", reason="AOT compile disabled")
def test_kernels_compile_for_sm80_and_sm90():
    signature = {
        "logits_ptr": "*fp32", "pos_ptr": "*i32", "temp_ptr": "*fp32", "topk_ptr": "*i64", "topp_ptr": "*fp32",
        "seed_ptr": "*i64", "offset_ptr": "*i64", "stream_ptr": "*i64", "tokens_ptr": "*i64", "next_pos_ptr": "*i32",
        "flags_ptr": "*i32", "cand_x_ptr": "*fp32", "cand_id_ptr": "*i32", "mode_ptr": "*i32", "B": "i32",
        "stride_row": "i32",
        "s_temp": "i32", "s_topk": "i32", "s_topp": "i32", "s_seed": "i32", "s_off": "i32", "s_stream": "i32",
        "text_vocab": "i32",
        "first_code": "i32", "num_codes": "i32", "boi_id": "i32", "eoi_id": "i32", "eos_id": "i32",
        "codes_per_image": "i32",
    }
    specs = []
    # Each dtype once, across both GPU tile configurations (large and small vocabularies).
    for dt, v, only_fallback in (("fp32", 40194, False), ("fp16", 152064, True), ("bf16", 1000, True)):
        cfg = kcs.launch_config(256, v, None, interpret=False)  # what a GPU launch uses
        specs.append({
            "module": "seedfast.kernels.constrained_sample", "kernel": "_constrained_sample_kernel",
            "signature": dict(signature, logits_ptr=f"*{dt}"),
            "constexprs": {"ROWS": cfg["ROWS"], "BLOCK_V": cfg["BLOCK_V"], "NP": kcs.DEFAULT_NUM_PIVOTS,
                           "MAX_REFINE": kcs.DEFAULT_MAX_REFINE, "CAP": cfg["CAP"], "CHUNK": cfg["CHUNK"],
                           "VEC": 4 if dt == "fp32" else 8, "ONLY_FALLBACK": only_fallback},
            "num_warps": cfg["num_warps"],
        })
    specs.append({
        "module": "seedfast.kernels.constrained_sample", "kernel": "_row_uniform_kernel",
        "signature": {"seed_ptr": "*i64", "offset_ptr": "*i64", "rows_ptr": "*i64", "out_ptr": "*fp32", "N": "i32"},
        "constexprs": {"BLOCK": 1024},
    })
    # One subprocess per spec, two at a time: each big variant takes ~10 s to compile.
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda spec: aot_compile([spec]), specs))
    failures = [f for r in results for f in r["failures"]]
    assert not failures, "\n".join(failures)
    assert sum(r["compiled"] for r in results) == 2 * len(specs)


@pytest.mark.parametrize(
    "overrides, name",
    [
        (dict(seed=2**64), "seed"),
        (dict(seed=2**63), "seed"),
        (dict(seed=-(2**63) - 1), "seed"),
        (dict(offset=2**70), "offset"),
        (dict(stream=-(2**64)), "stream"),
        (dict(top_k=2**70), "top_k"),
        (dict(top_k=-(2**64)), "top_k"),
    ],
)
def test_ints_beyond_int64_are_a_clear_error(overrides, name):
    """Python ints outside int64 raised a bare OverflowError from torch.full before."""
    with pytest.raises(ValueError) as info:
        _bad(**overrides)()
    message = str(info.value)
    expected = f"constrained_sample: {name} must be an int in [-9223372036854775808, 9223372036854775807]"
    assert expected in message, message


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63)])
def test_int64_limits_are_accepted(value):
    """The bounds themselves fit: a seed, offset, stream or (off) top_k at either limit runs."""
    for name in ("seed", "offset", "stream", "top_k"):
        tokens, _ = _bad(**{name: value})()
        assert tokens.shape == (2,)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_top_k_at_int64_min_is_off_on_every_backend(backend):
    logits = torch.randn(2, 17, generator=torch.Generator().manual_seed(3))
    image_pos = torch.tensor([-1, 0], dtype=torch.int32)
    off = constrained_sample(logits, image_pos, vocab=SMALL, top_k=0, seed=5, backend=backend)
    lowest = constrained_sample(logits, image_pos, vocab=SMALL, top_k=-(2**63), seed=5, backend=backend)
    assert torch.equal(off[0], lowest[0])


# ---------------------------------------------------------------------------------------------
# Aligned vector loads, and what the compiled code says


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("start", [0, 1, 3, 5])
def test_rows_at_any_alignment_read_the_same_tokens(start, dtype, device):
    """Rows whose first virtual id is not on a 16-byte boundary (odd row stride, odd first code,
    a view that starts mid-block) and the unvectorised path (``vec=1``) keep the reference's
    tokens: the elements read beside a row in its 16-byte blocks are never sampled."""
    vocab = VisualVocab(text_vocab_size=37, first_code_id=39, num_codes=29, boi_id=37, eoi_id=38, eos_id=3)
    case = random_case(64, vocab, 69, seed=41 + start, device=device, dtype=dtype)
    # The neighbours in each row's blocks would win every draw if they were read as logits.
    wide = torch.full((64, 69 + 7 + start), 1e4, dtype=dtype, device=device)
    wide[:, start:start + 69] = case["logits"]
    case["logits"] = wide[:, start:start + 69]
    ref = run({k: v.cpu() for k, v in case.items()}, vocab, "torch")
    args = (case["logits"], case["image_pos"], case["temperature"], case["top_k"], case["top_p"], case["seed"],
            case["offset"], torch.arange(64, device=device), tuple(_layout(vocab)))
    widths = {1, kcs.vector_width(case["logits"])}
    assert max(widths) == (16 // case["logits"].element_size() if start == 0 else 1)
    for vec in sorted(widths):
        for method, rows, block_v in (("split", None, None), ("split", 1, 16), ("rows", None, None), ("rows", 1, 16)):
            out = kcs.constrained_sample_forward(*args, vec=vec, rows=rows, block_v=block_v, method=method)
            assert_grammar(*out, case["logits"], case["image_pos"], vocab)
            same = out[0].cpu() == ref[0]
            assert same.float().mean() >= 0.98, (vec, rows)
            assert same[~(case["temperature"].cpu() > 0)].all()
    # A vector width the logits' alignment cannot hold is refused.
    if start % 2:
        with pytest.raises(AssertionError, match="needs logits aligned"):
            kcs.constrained_sample_forward(*args, vec=16 // case["logits"].element_size())


def test_vector_width_is_16_bytes_on_aligned_logits():
    x = torch.zeros(4, 40, dtype=torch.float32)
    assert kcs.vector_width(x) == 4 and kcs.vector_width(x.half()) == 8 and kcs.vector_width(x.bfloat16()) == 8
    assert kcs.vector_width(x.view(-1)[1:157].view(13, 12)) == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_flat_image_rows_with_top_p_half_keep_more_than_any_capacity(dtype, device):
    """Flat image rows (all codes nearly equally likely) with top-p 0.5 keep thousands of codes:
    more than the candidate capacity, so the exact whole-row search decides; the draws stay inside
    the kept set the reference computes and spread over it."""
    v, b = 152064, 2
    g = torch.Generator().manual_seed(3)
    x = torch.randn(b, v, generator=g) * 0.01
    x = x.to(dtype).to(device)
    pos = torch.tensor([0, 7], dtype=torch.int32, device=device)
    kw = dict(vocab=AT_END, temperature=1.0, top_p=0.5, seed=5)
    kept = []
    for offset in range(3):
        tokens, _ = constrained_sample(x, pos, offset=offset, backend="triton", **kw)
        ref, _ = constrained_sample(x.cpu(), pos.cpu(), offset=offset, backend="torch", **kw)
        assert torch.equal(tokens.cpu(), ref)
        kept.append(tokens.cpu())
    # The kept set is about half of the 8192 codes, far above the default capacity.
    xs = x.float().cpu()[:, AT_END.first_code_id:]
    w = torch.softmax(xs.double(), 1)
    order = w.sort(1, descending=True).values.cumsum(1)
    caps = (kcs.launch_config(1, v, None, interpret=False)["CAP"], kcs.split_config(1, v, interpret=False)["CAP"])
    assert ((order < 0.5).sum(1) > 2 * max(caps)).all()


def test_batch_of_one_at_152064_and_batch_of_1000_agree_with_the_reference(device):
    x, pos = _big_case(AT_END, 152064, 1, device, dtype=torch.bfloat16)
    kw = dict(vocab=AT_END, temperature=0.8, top_k=40, top_p=0.9, seed=2, offset=9)
    one = constrained_sample(x, pos, backend="triton", **kw)[0]
    assert torch.equal(one.cpu(), constrained_sample(x.cpu(), pos.cpu(), backend="torch", **kw)[0])
    case = random_case(1000, MID, 47, seed=77, device=device, dtype=torch.float16)
    out = run(case, MID, "triton")
    ref = run({k: v.cpu() for k, v in case.items()}, MID, "torch")
    assert (out[0].cpu() == ref[0]).float().mean() >= 0.998 and torch.equal(out[2].cpu(), ref[2])


_EVIDENCE = textwrap.dedent(
    """
    import json, pathlib, re, subprocess, sys, tempfile
    import torch, triton
    from triton.backends.compiler import GPUTarget
    from seedfast.kernels import constrained_sample as kcs

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    tool = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    out = []
    for dt, v, b, cc in json.loads(sys.argv[1]):
        cfg = kcs.launch_config(b, v, None, interpret=False)
        fn = kcs._constrained_sample_kernel
        names = fn.arg_names
        # The arguments of a real launch on contiguous [B, V] logits with scalar settings; the
        # integers divisible by 16 and the (16-byte aligned) pointers get the hints Triton
        # gives them at launch.
        ints = dict(B=b, stride_row=v, s_temp=0, s_topk=0, s_topp=0, s_seed=0, s_off=0, s_stream=1,
                    text_vocab=v - 8194, first_code=v - 8192, num_codes=8192, boi_id=v - 8194,
                    eoi_id=v - 8193, eos_id=2, codes_per_image=32)
        sig = {n: ("i32" if n in ints else "*i64") for n in names if n not in kcs._KERNEL_CONSTEXPRS}
        sig.update(logits_ptr="*" + dt, pos_ptr="*i32", temp_ptr="*fp32", topp_ptr="*fp32", next_pos_ptr="*i32",
                   flags_ptr="*i32", cand_x_ptr="*fp32", cand_id_ptr="*i32", mode_ptr="*i32")
        const = {"ROWS": cfg["ROWS"], "BLOCK_V": cfg["BLOCK_V"], "NP": kcs.DEFAULT_NUM_PIVOTS,
                 "MAX_REFINE": kcs.DEFAULT_MAX_REFINE, "CAP": cfg["CAP"], "CHUNK": cfg["CHUNK"],
                 "VEC": kcs.vector_width(torch.empty(1, dtype=dtypes[dt])), "ONLY_FALLBACK": True}
        sig.update({k: "constexpr" for k in const})
        hinted = [n for n in names if n.endswith("_ptr") or (n in ints and ints[n] % 16 == 0)]
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in hinted}
        src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs)
        k = triton.compile(src, target=GPUTarget("cuda", cc, 32), options={"num_warps": cfg["num_warps"]})
        with tempfile.TemporaryDirectory() as d:
            cubin = pathlib.Path(d) / "k.cubin"
            cubin.write_bytes(k.asm["cubin"])
            res = subprocess.run([str(tool), "-res-usage", str(cubin)], capture_output=True, text=True,
                                 check=True).stdout
            sass = subprocess.run([str(tool), "-sass", str(cubin)], capture_output=True, text=True,
                                  check=True).stdout
        usage = dict(re.findall(r"(REG|STACK|LOCAL):(\\d+)", res))
        ops = re.findall(r"\\b(LDG\\.E(?:\\.[A-Z0-9]+)*|STL(?:\\.[A-Z0-9]+)*|LDL(?:\\.[A-Z0-9]+)*)\\b", sass)
        out.append(dict(dtype=dt, v=v, sm=cc, regs=int(usage["REG"]), stack=int(usage["STACK"]),
                        spill_stores=sum(o.startswith("STL") for o in ops),
                        spill_loads=sum(o.startswith("LDL") for o in ops),
                        ldg128=sum(o.startswith("LDG") and o.endswith(".128") for o in ops),
                        ptx_v4=len(re.findall(r"ld\\.global[.a-z0-9]*\\.v4", k.asm["ptx"]))))
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(os.environ.get("SEEDFAST_SKIP_AOT") == "1", reason="AOT compile disabled")
def test_compiled_kernel_has_no_spills_and_16_byte_loads():
    """The shipped GPU configs, compiled for sm_80 and sm_90: no local-memory spills (no
    ``STL``/``LDL``, no stack) and 128-bit global loads of the logits (``ld.global.v4`` in the
    PTX, ``LDG.E.128`` in the SASS) for 32- and 16-bit logits."""
    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").is_file():
        pytest.skip("Triton ships no cuobjdump here")
    cases = [[dt, v, b, cc] for dt, v, b in (("fp32", 40194, 1), ("bf16", 152064, 256), ("fp16", 1000, 8))
             for cc in (80, 90)]
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")

    def compile_one(case):
        proc = subprocess.run([sys.executable, "-c", _EVIDENCE, json.dumps([case])], capture_output=True, text=True,
                              env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])[0]

    with ThreadPoolExecutor(2) as pool:
        stats = list(pool.map(compile_one, cases))
    for s in stats:
        assert s["spill_stores"] == 0 and s["spill_loads"] == 0 and s["stack"] == 0, s
        assert s["regs"] <= 255, s
        assert s["ldg128"] > 0 and s["ptx_v4"] > 0, s


# The CUDA twin's kernels: the split sampler's four (select reads no logits, so it has no dtype
# variants) and the one-block-per-row pivot kernel (method "rows" and the split sampler's fallback).
CUDA_TWIN_KERNELS = {"constrained_sample_kernel": 3, "split_tiles_kernel": 3, "split_select_kernel": 1,
                     "split_collect_kernel": 3, "split_finish_kernel": 3}
# Kernels that stream the logits: their SASS must read them in 128-bit loads, in every dtype variant.
CUDA_TWIN_STREAMING = ("constrained_sample_kernel", "split_tiles_kernel", "split_collect_kernel")


def cuda_twin_usage(ptxas_log: str) -> dict[str, tuple[int, int, int]]:
    """``{mangled kernel name: (stack frame, spill stores, spill loads)}`` from ``nvcc --resource-usage``."""
    import re

    usage, name = {}, None
    for line in ptxas_log.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            name = m.group(1)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and name is not None:
            usage[name] = tuple(int(v) for v in m.groups())
            name = None
    return usage


def cuda_twin_kernel(mangled: str) -> str | None:
    """The CUDA twin's kernel a mangled name belongs to (None for another function)."""
    return next((k for k in CUDA_TWIN_KERNELS if f"{len(k)}{k}" in mangled), None)


def test_cuda_twin_usage_parser_catches_spills_and_missing_kernels():
    log = ("ptxas info    : Function properties for _ZN15seedfast_sample18split_tiles_kernelIfEEvNS_6ParamsE\n"
           "    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n"
           "ptxas info    : Function properties for _ZN15seedfast_sample19split_select_kernelENS_6ParamsE\n"
           "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n")
    usage = cuda_twin_usage(log)
    assert usage == {"_ZN15seedfast_sample18split_tiles_kernelIfEEvNS_6ParamsE": (8, 4, 4),
                     "_ZN15seedfast_sample19split_select_kernelENS_6ParamsE": (0, 0, 0)}
    assert [cuda_twin_kernel(n) for n in usage] == ["split_tiles_kernel", "split_select_kernel"]
    assert cuda_twin_kernel("_ZN3cub6detail11EmptyKernelIvEEvv") is None


@pytest.mark.skipif(os.environ.get("SEEDFAST_SKIP_AOT") == "1", reason="AOT compile disabled")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_twin_has_no_local_memory_and_16_byte_loads(arch, tmp_path):
    """``nvcc --resource-usage`` on the CUDA C++ twin: every kernel (the split sampler's four and
    the pivot kernel, in each dtype variant) is compiled, with no stack frame and no spills; the
    kernels that stream the logits read them with 128-bit loads in their SASS."""
    import collections
    import shutil

    import triton

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not on PATH")
    source = Path(__file__).resolve().parents[2] / "csrc" / "constrained_sample.cu"
    cubin = tmp_path / "cs.cubin"
    proc = subprocess.run([nvcc, "-O3", "--resource-usage", "-std=c++17", f"-arch={arch}", "-cubin", "-o", str(cubin),
                           str(source)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    usage = cuda_twin_usage(proc.stderr)
    kernels = {name: cuda_twin_kernel(name) for name in usage}
    assert collections.Counter(k for k in kernels.values() if k) == CUDA_TWIN_KERNELS, proc.stderr
    for name, (stack, stores, loads) in usage.items():
        assert (stack, stores, loads) == (0, 0, 0), f"{name}: {stack} bytes stack, {stores}/{loads} bytes spilled"
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if tool.is_file():
        sass = subprocess.run([str(tool), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
        wide = collections.Counter()
        name = None
        for line in sass.splitlines():
            if "Function : " in line:
                name = line.split("Function : ", 1)[1].strip()
            elif name is not None and "LDG.E.128" in line:
                wide[name] += 1
        for name, kernel in kernels.items():
            if kernel in CUDA_TWIN_STREAMING:
                assert wide[name] > 0, f"{name}: no 128-bit global load"


# ---------------------------------------------------------------------------------------------
# The split sampler: many programs per row, two passes over the logits


def _forward(case, vocab, **kw):
    b = case["logits"].shape[0]
    return kcs.constrained_sample_forward(
        case["logits"], case["image_pos"], case["temperature"], case["top_k"], case["top_p"], case["seed"],
        case["offset"], torch.arange(b, device=case["logits"].device), tuple(_layout(vocab)), **kw)


def _filter_case(vocab, v, b, device, dtype, *, scale=2.5, seed=0):
    """``b`` rows alternating text and image states, every filter combination (top-k alone, top-p
    alone, both, neither, greedy) at temperatures 0.3 to 1.5."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, v, generator=g) * scale
    rows = torch.arange(b)
    pos = torch.where(rows % 2 == 0, -1, rows % vocab.codes_per_image).int()
    temperature = torch.tensor([1.0, 0.7, 1.5, 0.3, 0.0, 1.0])[rows % 6]
    top_k = torch.tensor([50, 0, 7, 0, 5, 1000])[rows % 6]
    top_p = torch.tensor([1.0, 0.9, 0.5, 1.0, 0.9, 0.99])[rows % 6]
    to = functools.partial(torch.Tensor.to, device=device)
    return dict(logits=to(x.to(dtype)), image_pos=to(pos), temperature=to(temperature), top_k=to(top_k),
                top_p=to(top_p), seed=to(torch.full((b,), 7)), offset=to(rows * 3))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
def test_split_and_unsplit_rows_draw_identical_tokens(dtype, device):
    """One program per row, three, and one per tile: the same tokens bit for bit (the tile is
    the unit of every float sum, and the histograms are integer), and the reference's tokens."""
    b = 12
    case = _filter_case(SEED, 40194, b, device, dtype, seed=1)
    ref = run({k: v.cpu() for k, v in case.items()}, SEED, "torch")
    outs = []
    for programs in (1, 3, 10_000):
        trace = {}
        out = _forward(case, SEED, programs=programs, block_v=2048, trace=trace)
        assert_grammar(*out, case["logits"], case["image_pos"], SEED)
        assert trace["passes_grid"][1] == min(programs, trace["num_tiles"]), trace["passes_grid"]
        # Every sampled row took the two-pass path (none fell back), and greedy rows none.
        modes = trace["modes"].cpu()
        assert (modes[case["temperature"].cpu() > 0] == 1).all() and (modes[case["temperature"].cpu() == 0] == 0).all()
        outs.append(out)
    for out in outs[1:]:
        assert all(torch.equal(a, c) for a, c in zip(outs[0], out))
    assert torch.equal(outs[0][0].cpu(), ref[0]) and torch.equal(outs[0][2].cpu(), ref[2])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
def test_flat_rows_keep_more_than_the_candidate_capacity_in_two_passes(dtype, device):
    """Top-p 0.5 on flat rows of V = 40194 keeps thousands of tokens (text rows over 10000): far
    more than the 1024 candidates a GPU program holds, yet no row falls back (only the tokens in
    the boundary bucket are candidates), and the tokens are the reference's."""
    v, b = 40194, 4
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(b, v, generator=g) * 0.01).to(dtype).to(device)
    pos = torch.tensor([-1, 0, -1, 17], dtype=torch.int32, device=device)
    kw = dict(vocab=SEED, temperature=1.0, top_p=0.5)
    w = torch.softmax(torch.where(allowed_ids(SEED, v, pos.cpu().long()), x.cpu().float(), -math.inf).double(), 1)
    kept = (w.sort(1, descending=True).values.cumsum(1) < 0.5).sum(1)
    assert (kept > kcs.split_config(b, v, interpret=False)["CAP"]).all() and (kept[::2] > 10_000).all(), kept
    case = dict(logits=x, image_pos=pos, temperature=torch.ones(b, device=device), top_k=torch.zeros(b, dtype=torch.int64,
                device=device), top_p=torch.full((b,), 0.5, device=device), seed=torch.full((b,), 3, device=device))
    for offset in range(3):
        case["offset"] = torch.full((b,), offset, device=device)
        trace = {}
        tokens = _forward(case, SEED, trace=trace, cap=1024)[0]
        ref, _ = constrained_sample(x.cpu(), pos.cpu(), seed=3, offset=offset, backend="torch", **kw)
        assert torch.equal(tokens.cpu(), ref)
        assert (trace["modes"].cpu() == 1).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
def test_split_sampler_at_152064_batch_of_one(dtype, device):
    """B = 1 at V = 152064 split over many programs (as a GPU launch at B = 1 splits it), each
    filter combination, against the reference."""
    x, _ = _big_case(AT_END, 152064, 1, device, dtype=dtype)
    for pos, t, k, p in ((-1, 0.8, 40, 0.9), (5, 1.0, 0, 0.95), (-1, 1.2, 300, 1.0), (3, 0.5, 0, 1.0)):
        image_pos = torch.tensor([pos], dtype=torch.int32, device=device)
        case = dict(logits=x, image_pos=image_pos, temperature=torch.tensor([t], device=device),
                    top_k=torch.tensor([k], device=device), top_p=torch.tensor([p], device=device),
                    seed=torch.tensor([2], device=device), offset=torch.tensor([9], device=device))
        trace = {}
        tokens = _forward(case, AT_END, programs=64, trace=trace)[0]
        assert trace["passes_grid"] == (1, min(64, trace["num_tiles"])) and trace["passes_grid"][1] > 1
        ref, _ = constrained_sample(x.cpu(), image_pos.cpu(), vocab=AT_END, temperature=t, top_k=k, top_p=p, seed=2,
                                    offset=9, backend="torch")
        assert torch.equal(tokens.cpu(), ref), (pos, t, k, p)


def test_split_sampler_batch_of_1000_is_deterministic(device):
    case = random_case(1000, MID, 47, seed=78, device=device, dtype=torch.bfloat16)
    ref = run({k: v.cpu() for k, v in case.items()}, MID, "torch")
    first = _forward(case, MID, programs=2, block_v=16)
    again = _forward(case, MID, programs=2, block_v=16)
    assert all(torch.equal(a, c) for a, c in zip(first, again))
    assert_grammar(*first, case["logits"], case["image_pos"], MID)
    same = first[0].cpu() == ref[0]
    assert same.float().mean() >= 0.998 and torch.equal(first[2].cpu(), ref[2])


# One text id and one code: V = 4, the shortest rows a layout allows (a code row holds 1 token).
TINY = VisualVocab(text_vocab_size=1, first_code_id=1, num_codes=1, boi_id=2, eoi_id=3, eos_id=0, codes_per_image=2)


@pytest.mark.parametrize("vocab, v", [(TINY, 4), (SMALL, 17), (MID, 47), (SEED, 40194)], ids=["4", "17", "47", "40194"])
def test_split_sampler_odd_vocabulary_sizes(vocab, v, device):
    case = random_case(48, vocab, v, seed=v, device=device)
    ref = run({k: c.cpu() for k, c in case.items()}, vocab, "torch")
    out = _forward(case, vocab, programs=3)
    assert_grammar(*out, case["logits"], case["image_pos"], vocab)
    assert torch.equal(out[0].cpu(), ref[0]) and torch.equal(out[2].cpu(), ref[2])


@pytest.mark.parametrize("cap", [1, 4])
def test_split_sampler_hands_crowded_rows_to_the_exact_fallback(cap, device):
    """Rows whose boundary buckets hold more than ``cap`` tokens (all tied logits here) or whose
    buckets are too wide for the temperature (t = 1e-4 on logits near 1000) take the exact
    whole-row fallback: still the reference's tokens."""
    b = 16
    case = random_case(b, MID, 47, seed=5, device=device)
    case["logits"][:8] = ((case["logits"][:8] * 2).round() / 2)  # wide ties
    case["logits"][8:] = case["logits"][8:] + 1000.0
    case["temperature"][8:] = 1e-4
    case["top_k"] = torch.full((b,), 5, device=device)
    case["top_p"] = torch.full((b,), 0.9, device=device)
    case["image_pos"] = torch.tensor([-1, 3] * 8, dtype=torch.int32, device=device)
    ref = run({k: c.cpu() for k, c in case.items()}, MID, "torch")
    trace = {}
    out = _forward(case, MID, cap=cap, trace=trace)
    modes = trace["modes"].cpu()
    finite = torch.isfinite(case["logits"].cpu()).all(1)
    assert (modes[8:][finite[8:]] == 2).all() and (modes[:8] == 2).any()
    assert torch.equal(out[0].cpu(), ref[0]) and torch.equal(out[2].cpu(), ref[2])


def test_split_sampler_sort_and_rank_orders_agree(device):
    """The GPU orders the candidates with ``tl.sort``, the interpreter by rank and scatter: both
    on the same rows (a few rows per program so that the interpreted ``tl.sort`` stays quick)."""
    case = random_case(8, MID, 47, seed=13, device=device)
    by_sort = _forward(case, MID, rows=2, cap=16, sort_by_rank=False)
    by_rank = _forward(case, MID, rows=2, cap=16, sort_by_rank=True)
    assert all(torch.equal(a, c) for a, c in zip(by_sort, by_rank))
    ref = run({k: c.cpu() for k, c in case.items()}, MID, "torch")
    assert torch.equal(by_sort[0].cpu(), ref[0])


def test_programs_per_row_fill_the_gpu_at_small_batch():
    # V = 40194: text rows span 126 tiles of 256; V = 152064: 563.
    assert kcs.programs_per_row(1, 126, interpret=False) == 126
    assert kcs.programs_per_row(1, 563, interpret=False) == 563
    assert kcs.programs_per_row(8, 563, interpret=False) == 132
    assert kcs.programs_per_row(256, 126, interpret=False) == 5
    assert kcs.programs_per_row(1056, 126, interpret=False) == 1
    assert kcs.programs_per_row(1, 126, interpret=True) == 1
    # The tile width depends on V only, so the split never changes a token.
    assert {kcs.split_config(b, 40194, interpret=False)["BLOCK_V"] for b in (1, 8, 256, 4096)} == {256}


_SPLIT_EVIDENCE = textwrap.dedent(
    """
    import json, sys
    import torch, triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature
    from seedfast.benchmarks.compiled_code import read_cubin
    from seedfast.kernels import constrained_sample as kcs
    from seedfast.benchmarks.constrained_sample import vocab_for
    from seedfast.ops.constrained_sample import _layout

    dt, b, v = json.loads(sys.argv[1])
    log = []
    JITFunction.run = lambda self, *a, grid, warmup, **k: log.append((self, a, k, grid))
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dt]
    # A real launch on contiguous [B, V] logits with per-row settings, recorded rather than run.
    f = lambda value, t: torch.full((b,), value, dtype=t)
    kcs.constrained_sample_forward(
        torch.empty(b, v, dtype=dtype), f(-1, torch.int32), f(1.0, torch.float32), f(50, torch.int64),
        f(0.9, torch.float32), f(1, torch.int64), f(0, torch.int64), torch.arange(b), tuple(_layout(vocab_for(v))))
    out = []
    for jit, args, kwargs, grid in log:
        for cc in (80, 90):
            target = GPUTarget("cuda", cc, 32)
            backend = make_backend(target)
            binder = create_function_from_signature(jit.signature, jit.params, backend)
            bound, spec, opts = binder(*args, **kwargs)
            options, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound, spec, opts)
            k = triton.compile(ASTSource(jit, signature, constexprs, attrs), target=target, options=options.__dict__)
            stats = read_cubin(k.asm["cubin"])
            out.append(dict(kernel=jit.fn.__name__, sm=cc, grid=list(grid), regs=stats["registers"],
                            spills=stats["spill_stores"] + stats["spill_loads"],
                            vector=stats["hot_vector_loads"], scalar=stats["hot_scalar_loads"]))
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(os.environ.get("SEEDFAST_SKIP_AOT") == "1", reason="AOT compile disabled")
@pytest.mark.parametrize("dt, b, v", [("bf16", 1, 40194), ("fp32", 1, 40194), ("fp16", 256, 152064)])
def test_split_kernels_compile_for_sm80_and_sm90_without_spills(dt, b, v):
    """Every launch of a real split call (the four split kernels and the fallback), compiled
    for sm_80 and sm_90 with the specialisation of that launch: no spills; the two passes read
    the logits with 128-bit loads in their loops; at B = 1 the passes use more than 64 programs."""
    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").is_file():
        pytest.skip("Triton ships no cuobjdump here")
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run([sys.executable, "-c", _SPLIT_EVIDENCE, json.dumps([dt, b, v])], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    names = {s["kernel"] for s in stats}
    assert names == {"_split_tiles_kernel", "_split_select_kernel", "_split_collect_kernel", "_split_finish_kernel",
                     "_constrained_sample_kernel"}, names
    assert len(stats) == 2 * 5
    for s in stats:
        assert s["spills"] == 0 and s["regs"] <= 255, s
        if s["kernel"] in ("_split_tiles_kernel", "_split_collect_kernel"):
            assert s["vector"] > 0, s
            if b == 1:
                assert s["grid"][1] > 64, s
