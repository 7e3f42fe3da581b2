"""Batched multimodal generation with SEED-LLaMA: prompts (and images) in, text and images out.

Flow per call: images → codes (the SEED tokenizer, one batch) → prompt ids with image blocks
spliced in → prefill (rows of different lengths, no padding of positions) → decode steps
(graph-replayed on CUDA) until every row has stopped → ids split into text segments and images
→ optionally pixels (generation embeddings → the de-tokenizer, one batch).

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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from seedfast._checks import is_int
from seedfast.generation.cuda_graphs import RowSettings, decode_runner
from seedfast.models.llama import Llama
from seedfast.models.seed_llama import (
    IMAGE_PLACEHOLDER,
    PromptTemplate,
    fill_image_slots,
    get_template,
    open_image_codes,
    open_image_position,
    seed_llama_vocab,
    split_generated,
)
from seedfast.models.seed_llama_tokenizer import SeedLlamaTokenizer
from seedfast.ops.constrained_sample import VisualVocab, raise_on_flags


@runtime_checkable
class ImageTokenizer(Protocol):
    """What generation needs of the SEED tokenizer (``seedfast.models.seed_tokenizer.SeedTokenizer``)."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` → codes ``[B, 32]`` int64."""
        ...

    def generation_embedding(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, 32]`` → generation embeddings ``[B, E]``."""
        ...


@runtime_checkable
class ImageDetokenizer(Protocol):
    """What generation needs of the de-tokenizer (``seedfast.models.detokenizer.SeedDetokenizer``)."""

    def decode(self, embeddings: torch.Tensor, *, seed: int) -> torch.Tensor:
        """Generation embeddings ``[B, E]`` → images ``[B, 3, H, W]`` in ``[0, 1]``."""
        ...


TokenCallback = Callable[[int, int], None]
ImageInput = torch.Tensor | Sequence[torch.Tensor] | None


@dataclass
class GenerationOutput:
    """One prompt's result.

    Attributes
    ----------
    prompt_ids : list of int
        The prompt as the model saw it (template, bos and image blocks included).
    token_ids : list of int
        Generated ids, the final eos included when the row stopped on it.
    text_segments : list of str, or list of list of int
        Text before, between and after the generated images (``len(image_codes) + 1`` items;
        strings with a tokenizer, id lists without).
    image_codes : Tensor ``[n_images, codes_per_image]``, int64
        Codes ``0 .. num_codes - 1`` of each generated image (exactly ``codes_per_image`` each).
    images : Tensor ``[n_images, 3, H, W]`` or None
        Decoded pixels in ``[0, 1]`` when a de-tokenizer was given.
    finish_reason : {"eos", "length", "error"}
    """

    prompt_ids: list[int]
    token_ids: list[int]
    text_segments: list[str] | list[list[int]]
    image_codes: torch.Tensor
    images: torch.Tensor | None
    finish_reason: str

    @property
    def text(self) -> str:
        """The text with ``<image>`` where each image is (needs string segments).

        Raises
        ------
        TypeError
            The segments are ids (no tokenizer was given).
        """
        if not all(isinstance(s, str) for s in self.text_segments):
            raise TypeError("GenerationOutput.text needs a tokenizer: text_segments are token ids")
        return IMAGE_PLACEHOLDER.join(self.text_segments)


def _per_row(name: str, value, n: int, ok: Callable[[object], bool], expected: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f"generate: {name} must be one value or {n} values (one per prompt), got {len(values)}")
    for v in values:
        if not ok(v):
            raise ValueError(f"generate: {name} must be {expected}, got {v!r}")
    return values


def _is_int64(v: object) -> bool:
    return is_int(v) and -(2**63) <= v < 2**63


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


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _images_per_row(images: Sequence[ImageInput] | None, n: int) -> list[list[torch.Tensor]]:
    """Each row's images as a list of ``[3, H, W]`` pixel tensors or ``[codes_per_image]`` code tensors."""
    if images is None:
        return [[] for _ in range(n)]
    if isinstance(images, torch.Tensor) or len(images) != n:
        raise ValueError(f"generate: images must be a sequence of {n} entries (one per prompt: None, a tensor or a "
                         f"list of tensors), got {type(images).__name__}"
                         + ("" if isinstance(images, torch.Tensor) else f" of length {len(images)}"))
    rows = []
    for i, entry in enumerate(images):
        if entry is None:
            rows.append([])
        elif isinstance(entry, torch.Tensor):
            batched = entry.dim() == (4 if entry.is_floating_point() else 2)
            rows.append(list(entry) if batched else [entry])
        else:
            rows.append(list(entry))
        for t in rows[-1]:
            if not isinstance(t, torch.Tensor) or t.dim() != (3 if t.is_floating_point() else 1):
                raise ValueError(f"generate: images[{i}] must hold [3, H, W] float images or [32] int64 codes, "
                                 f"got {getattr(t, 'shape', type(t).__name__)}")
    return rows


def _encode_images(rows: list[list[torch.Tensor]], image_tokenizer: ImageTokenizer | None,
                   vocab: VisualVocab) -> list[list[list[int]]]:
    """Codes of every image, pixels encoded in one batch per image size."""
    pixels = [(r, j, t) for r, row in enumerate(rows) for j, t in enumerate(row) if t.is_floating_point()]
    codes: list[list[list[int] | None]] = [[None if t.is_floating_point() else t.tolist() for t in row] for row in rows]
    if pixels and image_tokenizer is None:
        raise ValueError("generate: images given as pixels need image_tokenizer= (a SEED tokenizer with encode())")
    for r, j, t in pixels:
        low, high = float(t.min()), float(t.max())
        # CLIP-normalised pixels lie in about [-1.8, 2.2]; beyond ±3 they are raw 0-255 values.
        if low < -3.0 or high > 3.0:
            raise ValueError(f"generate: images[{r}][{j}] has values in [{low:.3g}, {high:.3g}]: float images go to "
                             "image_tokenizer.encode as they are and must be its normalised input (CLIP mean/std); "
                             "give raw pixels (PIL, uint8, float in [0, 1]) to seedfast.pipeline.SeedPipeline, "
                             "which normalises them, or give codes")
    by_shape: dict[tuple, list[tuple[int, int, torch.Tensor]]] = {}
    for item in pixels:
        by_shape.setdefault(tuple(item[2].shape), []).append(item)
    for group in by_shape.values():
        got = image_tokenizer.encode(torch.stack([t for _, _, t in group]))
        if tuple(got.shape) != (len(group), vocab.codes_per_image):
            raise ValueError(f"generate: image_tokenizer.encode returned shape {tuple(got.shape)}, expected "
                             f"({len(group)}, {vocab.codes_per_image})")
        for (r, j, _), c in zip(group, got.tolist()):
            codes[r][j] = c
    return codes


def _prompt_ids(prompt: str | Sequence[int], codes: list[list[int]], i: int, tokenizer: SeedLlamaTokenizer | None,
                template: PromptTemplate | None, vocab: VisualVocab, vocab_size: int) -> list[int]:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError(f"generate: prompts[{i}] is a string; pass tokenizer= (or give token ids)")
        if codes and IMAGE_PLACEHOLDER not in prompt:
            prompt = IMAGE_PLACEHOLDER * len(codes) + prompt  # the official "{img}{question}"
        text = template.render(prompt) if template is not None else prompt
        ids = tokenizer.encode(text, codes)
    else:
        ids = [int(t) for t in prompt]
        if codes:
            ids = fill_image_slots(ids, codes, vocab)
    if not ids:
        raise ValueError(f"generate: prompts[{i}] is empty")
    if min(ids) < 0 or max(ids) >= vocab_size:
        raise ValueError(f"generate: prompts[{i}] has ids outside [0, {vocab_size})")
    return ids


@torch.no_grad()
def generate(
    model: Llama,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    *,
    images: Sequence[ImageInput] | None = None,
    tokenizer: SeedLlamaTokenizer | None = None,
    template: PromptTemplate | str | None = None,
    image_tokenizer: ImageTokenizer | None = None,
    detokenizer: ImageDetokenizer | None = None,
    vocab: VisualVocab | None = None,
    max_new_tokens: int | Sequence[int] = 512,
    temperature: float | Sequence[float] = 1.0,
    top_k: int | Sequence[int] = 50,
    top_p: float | Sequence[float] = 0.5,
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
    """Generate for a batch of prompts; each row stops at eos or its own limit while the others go on.

    Parameters
    ----------
    model : Llama
    prompts : sequence of str, or sequence of sequences of int
        Strings need ``tokenizer`` and go through ``template`` (bos first, as the official
        scripts). Id lists are used as they are (give the bos yourself).
    images : sequence, optional
        Per prompt: None, a tensor or a list of tensors; each image is pixels ``[3, H, W]``
        (float, the image tokenizer's normalised input, encoded with ``image_tokenizer``; values
        beyond ±3, i.e. raw 0–255 pixels, are refused: :class:`seedfast.pipeline.SeedPipeline`
        takes raw pixels and normalises them) or codes ``[codes_per_image]`` (int64); a
        float ``[n, 3, H, W]`` or int ``[n, codes_per_image]`` tensor holds n images. Each image
        becomes ``<img>`` + codes + ``</img>`` at the next ``<image>`` placeholder of a string
        prompt (at its start when it has none), or in the next empty ``<img></img>`` pair of an
        id prompt.
    tokenizer : SeedLlamaTokenizer, optional
    template : PromptTemplate or {"vicuna", "llama2"}, optional
        Applied to string prompts (``"vicuna"`` for SEED-LLaMA 8B, ``"llama2"`` for 14B).
    image_tokenizer : ImageTokenizer, optional
        Needed for pixel images and for ``detokenizer``.
    detokenizer : ImageDetokenizer, optional
        Decode generated images to pixels.
    vocab : VisualVocab, optional
        Default: the tokenizer's, else :meth:`VisualVocab.seed_llama`.
    max_new_tokens : int or one per prompt
        Per-row limit (>= 1). A limit that falls inside an image lets the image finish
        (at most ``codes_per_image + 1`` more tokens).
    temperature, top_k, top_p, seed : scalar or one per prompt
        As :func:`seedfast.ops.constrained_sample` (``temperature=0``: greedy). The defaults
        are the official scripts' (temperature 1, top-p 0.5, transformers' implicit top-k 50).
        Seeds are int64 (``[-2**63, 2**63)``). Row ``b``'s draws depend on
        ``(seed[b], step, stream[b])``.
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
        Bad arguments (named), prompts that break the image grammar, vocab mismatches, a prompt
        plus ``max_new_tokens`` beyond the model's context (``model.config.max_seq_len``), or
        (with ``check``) sampler errors.
    """
    if isinstance(prompts, str):
        raise ValueError("generate: prompts must be a sequence of prompts, got one string; wrap it in a list")
    n = len(prompts)
    if n == 0:
        raise ValueError("generate: prompts is empty")
    if tokenizer is not None and vocab is not None and tokenizer.vocab != vocab:
        raise ValueError(f"generate: vocab {vocab} differs from the tokenizer's {tokenizer.vocab}")
    vocab = vocab or (tokenizer.vocab if tokenizer is not None else seed_llama_vocab())
    if model.config.vocab_size < vocab.min_vocab_size:
        raise ValueError(f"generate: the vocab layout needs {vocab.min_vocab_size} ids but the model has "
                         f"{model.config.vocab_size}; pass vocab= for this model")
    if detokenizer is not None and image_tokenizer is None:
        raise ValueError("generate: detokenizer needs image_tokenizer= (for generation_embedding)")
    if not is_int(stop_check_every) or stop_check_every < 1:
        raise ValueError(f"generate: stop_check_every must be an int >= 1, got {stop_check_every!r}")
    if use_cuda_graphs is None:
        use_cuda_graphs = model.device.type == "cuda"
    template = get_template(template)

    limits = _per_row("max_new_tokens", max_new_tokens, n, lambda v: is_int(v) and v >= 1, "an int >= 1")
    temps = _per_row("temperature", temperature, n, lambda v: _is_number(v) and v >= 0, "a finite number >= 0")
    top_ks = _per_row("top_k", top_k, n, is_int, "an int")
    top_ps = _per_row("top_p", top_p, n, lambda v: _is_number(v) and 0 < v <= 1, "in (0, 1]")
    seeds = _per_row("seed", seed, n, _is_int64, "an int in [-2**63, 2**63) (int64)")
    streams = None if stream is None else _per_row("stream", stream, n, _is_int64,
                                                  "an int in [-2**63, 2**63) (int64)")

    codes = _encode_images(_images_per_row(images, n), image_tokenizer, vocab)
    ids = [_prompt_ids(p, codes[i], i, tokenizer, template, vocab, model.config.vocab_size)
           for i, p in enumerate(prompts)]
    try:
        positions = [open_image_position(p, vocab) for p in ids]
    except ValueError as err:
        raise ValueError(f"generate: {err}") from err

    check_context(ids, limits, model.config.max_seq_len, vocab.codes_per_image)
    need = max(map(len, ids)) + max(limits) + vocab.codes_per_image
    runner = decode_runner(model, vocab, batch_size=n, max_seq_len=need, use_cuda_graphs=use_cuda_graphs,
                           attention=attention)
    eos = -1 if ignore_eos else vocab.eos_id
    runner.start(ids, RowSettings(image_pos=positions, limits=limits, temperature=temps, top_k=top_ks, top_p=top_ps,
                                  seed=seeds, eos=[eos] * n, stream=streams))
    _decode_loop(runner, limits, ignore_eos, stop_check_every, on_token, progress, vocab.codes_per_image)
    tokens, flags = runner.collect()
    if check:
        raise_on_flags(torch.tensor(flags, dtype=torch.int32))
    return _outputs(ids, tokens, flags, eos, vocab, tokenizer, image_tokenizer, detokenizer, seeds[0],
                    model.device)


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


def _outputs(ids, tokens, flags, eos, vocab, tokenizer, image_tokenizer, detokenizer, seed,
             device) -> list[GenerationOutput]:
    results = []
    for b, row in enumerate(tokens):
        parts = split_generated(row, vocab, open_image_codes(ids[b], vocab))
        reason = "error" if flags[b] else ("eos" if row and row[-1] == eos else "length")
        texts = [tokenizer.decode(s) for s in parts.text_ids] if tokenizer is not None else parts.text_ids
        image_codes = torch.tensor(parts.image_codes, dtype=torch.int64).reshape(-1, vocab.codes_per_image)
        results.append(GenerationOutput(ids[b], row, texts, image_codes, None, reason))
    if detokenizer is not None:
        all_codes = torch.cat([r.image_codes for r in results])
        if len(all_codes):
            # Codes go where the LLM is; the SEED tokenizer sits beside it in every pipeline here.
            pixels = detokenizer.decode(image_tokenizer.generation_embedding(all_codes.to(device)), seed=seed)
            for r, chunk in zip(results, pixels.split([len(r.image_codes) for r in results])):
                r.images = chunk
    return results


__all__ = ["check_context", "GenerationOutput", "ImageDetokenizer", "ImageTokenizer", "TokenCallback", "generate"]
