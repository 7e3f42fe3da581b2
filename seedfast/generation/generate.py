"""Batched generation with SEED-LLaMA: prompt ids in, generated ids out.

Composition (text tokenizers, templates, the SEED tokenizer and the de-tokenizer) lives in
:class:`seedfast.pipeline.SeedPipeline`; this module only decodes. Flow per call: prefill (rows
of different lengths, no padding of positions) → decode steps (graph-replayed on CUDA) until
every row has stopped → ids split into text segments and images' codes by the image grammar.

Host synchronisation: none per token, except

* a stop check, ``all rows done?``, every ``stop_check_every`` steps (default 8) once a row
  can have stopped (from the first step; from the shortest limit with ``ignore_eos``) and at
  the step where every row has reached its limit. A finished row stops counting and emitting
  at once, on the device, so a late check costs at most ``stop_check_every - 1`` wasted
  steps, never a wrong token;
* with ``on_token``, one read of the step's tokens per step (interactive use);
* one read of all outputs at the end.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from seedfast._checks import is_int
from seedfast.generation.cuda_graphs import RowSettings, decode_runner
from seedfast.generation.sampling import SamplingParams
from seedfast.models.llama import Llama
from seedfast.models.seed_llama import open_image_codes, open_image_position, seed_llama_vocab, split_generated
from seedfast.ops.constrained_sample import VisualVocab, raise_on_flags

TokenCallback = Callable[[int, int], None]


@dataclass
class GenerationOutput:
    """One prompt's result, as ids.

    Attributes
    ----------
    prompt_ids : list of int
        The prompt as given.
    token_ids : list of int
        Generated ids, the final eos included when the row stopped on it.
    text_ids : list of list of int
        The text ids before, between and after the generated images (``len(image_codes) + 1``
        segments; ``<img>``, ``</img>``, codes and eos removed).
    image_codes : Tensor ``[n_images, codes_per_image]``, int64
        Codes ``0 .. num_codes - 1`` of each generated image (exactly ``codes_per_image`` each).
    finish_reason : {"eos", "length", "error"}
    """

    prompt_ids: list[int]
    token_ids: list[int]
    text_ids: list[list[int]]
    image_codes: torch.Tensor
    finish_reason: str


def _is_int64(v: object) -> bool:
    return is_int(v) and -(2**63) <= v < 2**63


def _per_row(name: str, value, n: int, ok: Callable[[object], bool], expected: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f"generate: {name} must be one value or {n} values (one per prompt), got {len(values)}")
    for v in values:
        if not ok(v):
            raise ValueError(f"generate: {name} must be {expected}, got {v!r}")
    return values


def check_context(prompt_ids: Sequence[Sequence[int]], limits: Sequence[int], context: int,
                  codes_per_image: int) -> None:
    """Raise unless every prompt plus its ``max_new_tokens`` (and an image's worth to finish one) fits the context.

    Parameters
    ----------
    prompt_ids : sequence of sequences of int
    limits : sequence of int
        Each row's ``max_new_tokens``.
    context : int
        The model's trained context (``LlamaConfig.max_seq_len``).
    codes_per_image : int
        A limit that falls inside an image lets it finish: up to ``codes_per_image + 1`` more tokens.

    Raises
    ------
    ValueError
        Naming the row, its prompt length, its ``max_new_tokens`` and the context.
    """
    for i, (p, limit) in enumerate(zip(prompt_ids, limits)):
        need = len(p) + limit + codes_per_image + 1
        if need > context:
            raise ValueError(f"generate: prompts[{i}] has {len(p)} tokens and max_new_tokens={limit} (plus up to "
                             f"{codes_per_image + 1} to finish an image): {need} positions, beyond the model's "
                             f"context of {context}; shorten the prompt or lower max_new_tokens to at most "
                             f"{max(context - len(p) - codes_per_image - 1, 0)}")


@torch.no_grad()
def generate(
    model: Llama,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingParams | Sequence[SamplingParams] | None = None,
    *,
    vocab: VisualVocab | None = None,
    seed: int | Sequence[int] = 0,
    stream: int | Sequence[int] | None = None,
    ignore_eos: bool = False,
    use_cuda_graphs: bool | None = None,
    attention: str = "auto",
    stop_check_every: int = 8,
    on_token: TokenCallback | None = None,
    progress: bool = False,
    check: bool = True,
) -> list[GenerationOutput]:
    """Generate for a batch of id prompts; each row stops at eos or its own limit while the others go on.

    Parameters
    ----------
    model : Llama
    prompts : sequence of sequences of int
        Token ids, used as they are (the bos included). A prompt that ends inside an image
        (``<img>`` and fewer than ``codes_per_image`` codes) continues that image.
    sampling : SamplingParams or one per prompt, optional
        Default ``SamplingParams()`` (the official scripts' settings, 120 new tokens).
    vocab : VisualVocab, optional
        Where text, codes, ``<img>``, ``</img>`` and eos sit among the model's ids; default
        SEED-LLaMA's (:func:`seedfast.models.seed_llama.seed_llama_vocab`).
    seed : int or one per prompt
        int64 (``[-2**63, 2**63)``). Row ``b``'s draws depend on ``(seed[b], step, stream[b])``.
    stream : int or one per prompt, optional
        The sampler's random stream ids (:func:`seedfast.ops.constrained_sample`); default the
        row index. Give each request its own seed and ``stream=0``: its tokens then do not
        depend on its batch or row (batch invariance).
    ignore_eos : bool
        Run every row to its limit (benchmarks).
    use_cuda_graphs : bool, optional
        Default: True for CUDA models.
    attention : {"auto", "sdpa", "flash"}
    stop_check_every : int
        Steps between "all rows done?" checks (each one host synchronisation).
    on_token : callable ``(row, token_id)``, optional
        Called for every emitted token, in row order, each step (one host sync per step).
    progress : bool
        A tqdm bar over decode steps.
    check : bool
        Raise when a row stopped on a sampler error (NaN/inf logits): once, after the run, from
        the flags the decode steps collect on the device (the steps themselves never check).

    Returns
    -------
    list of GenerationOutput, one per prompt

    Raises
    ------
    ValueError
        Bad arguments (named), prompts that break the image grammar, a vocabulary the model is
        too small for, a prompt plus ``max_new_tokens`` beyond the model's context
        (``model.config.max_seq_len``), or (with ``check``) sampler errors.
    """
    if isinstance(prompts, (str, torch.Tensor)) or (len(prompts) and isinstance(prompts[0], str)):
        raise ValueError("generate: prompts must be a sequence of token-id lists; for strings and images use "
                         "seedfast.pipeline.SeedPipeline, which tokenizes them")
    n = len(prompts)
    if n == 0:
        raise ValueError("generate: prompts is empty")
    vocab = vocab or seed_llama_vocab()
    if model.config.vocab_size < vocab.min_vocab_size:
        raise ValueError(f"generate: the vocab layout needs {vocab.min_vocab_size} ids but the model has "
                         f"{model.config.vocab_size}; pass vocab= for this model")
    if not is_int(stop_check_every) or stop_check_every < 1:
        raise ValueError(f"generate: stop_check_every must be an int >= 1, got {stop_check_every!r}")
    if use_cuda_graphs is None:
        use_cuda_graphs = model.device.type == "cuda"
    params = _per_row("sampling", sampling if sampling is not None else SamplingParams(), n,
                      lambda v: isinstance(v, SamplingParams), "a SamplingParams")
    seeds = _per_row("seed", seed, n, _is_int64, "an int in [-2**63, 2**63) (int64)")
    streams = None if stream is None else _per_row("stream", stream, n, _is_int64,
                                                  "an int in [-2**63, 2**63) (int64)")
    ids = [_prompt_ids(p, i, model.config.vocab_size) for i, p in enumerate(prompts)]
    try:
        positions = [open_image_position(p, vocab) for p in ids]
    except ValueError as err:
        raise ValueError(f"generate: {err}") from err

    limits = [p.max_new_tokens for p in params]
    check_context(ids, limits, model.config.max_seq_len, vocab.codes_per_image)
    need = max(map(len, ids)) + max(limits) + vocab.codes_per_image
    runner = decode_runner(model, vocab, batch_size=n, max_seq_len=need, use_cuda_graphs=use_cuda_graphs,
                           attention=attention)
    eos = -1 if ignore_eos else vocab.eos_id
    runner.start(ids, RowSettings(image_pos=positions, limits=limits, temperature=[p.temperature for p in params],
                                  top_k=[p.top_k for p in params], top_p=[p.top_p for p in params], seed=seeds,
                                  eos=[eos] * n, stream=streams))
    _decode_loop(runner, limits, ignore_eos, stop_check_every, on_token, progress, vocab.codes_per_image)
    tokens, flags = runner.collect()
    if check:
        raise_on_flags(torch.tensor(flags, dtype=torch.int32))
    return [_output(ids[b], row, flags[b], eos, vocab) for b, row in enumerate(tokens)]


def _prompt_ids(prompt: Sequence[int], i: int, vocab_size: int) -> list[int]:
    try:
        ids = [int(t) for t in prompt]
    except (TypeError, ValueError):
        raise ValueError(f"generate: prompts[{i}] must be a sequence of ints") from None
    if not ids:
        raise ValueError(f"generate: prompts[{i}] is empty")
    if min(ids) < 0 or max(ids) >= vocab_size:
        raise ValueError(f"generate: prompts[{i}] has ids outside [0, {vocab_size})")
    return ids


def _decode_loop(runner, limits: list[int], ignore_eos: bool, every: int, on_token: TokenCallback | None,
                 progress: bool, codes_per_image: int) -> None:
    """Step until every row is done; see the module docstring for when the host looks."""
    from tqdm import tqdm

    bound = max(limits) + codes_per_image + 1  # tokens a row can emit: its limit, then finishing an image
    earliest = min(limits) if ignore_eos else 1
    bar = tqdm(total=bound, initial=1, desc="generate", unit="tok", disable=not progress)
    done_before = torch.zeros(runner.rows, dtype=torch.bool)
    if on_token is not None:
        done_before = _stream(runner, on_token, done_before)
    emitted = 1
    while emitted < bound:
        if on_token is None and emitted >= earliest and (emitted % every == 0 or emitted == max(limits)):
            if runner.all_done():
                break
        elif on_token is not None and bool(done_before.all()):
            break
        runner.step()
        emitted += 1
        bar.update(1)
        if on_token is not None:
            done_before = _stream(runner, on_token, done_before)
    bar.close()


def _stream(runner, on_token: TokenCallback, done_before: torch.Tensor) -> torch.Tensor:
    tokens, done = runner.peek()
    for row in torch.nonzero(~done_before).flatten().tolist():
        on_token(row, int(tokens[row]))
    return done


def _output(prompt: list[int], row: list[int], flag: int, eos: int, vocab: VisualVocab) -> GenerationOutput:
    parts = split_generated(row, vocab, open_image_codes(prompt, vocab))
    reason = "error" if flag else ("eos" if row and row[-1] == eos else "length")
    codes = torch.tensor(parts.image_codes, dtype=torch.int64).reshape(-1, vocab.codes_per_image)
    return GenerationOutput(prompt, row, parts.text_ids, codes, reason)


__all__ = ["GenerationOutput", "SamplingParams", "TokenCallback", "check_context", "generate"]
