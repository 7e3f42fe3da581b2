"""A Hugging Face ``LogitsProcessor`` that makes ``model.generate`` obey the span grammar.

The grammar is :func:`seedfast.ops.constrained_sample`'s, described by a
:class:`~seedfast.ops.VisualVocab`: in text, any text id (eos included) or the opening marker;
after the opening marker, exactly N ids of the span sub-vocabulary; then the closing marker,
forced. SEED-LLaMA's ``<img>`` + 32 codes + ``</img>`` is one instance (spec §11.2); the
official scripts sample over the full vocabulary and crash or drop images that break it
(spec §13.8).

The processor sets the disallowed scores to −inf and leaves the rest as they are, so
transformers' own temperature / top-k / top-p / beam scoring runs on the allowed tokens only
(``generate`` applies custom processors before those warpers).
"""
from __future__ import annotations

import torch
from transformers import LogitsProcessor

from seedfast.nn.constrained_sample import image_positions
from seedfast.ops import VisualVocab
from seedfast.ops.constrained_sample import grammar_masks


class ImageGrammarLogitsProcessor(LogitsProcessor):
    """Masks scores so that every generated span is opening marker + N span tokens + closing marker.

    Parameters
    ----------
    vocab : VisualVocab
        The id layout (SEED-LLaMA: ``seedfast.models.seed_llama.seed_llama_vocab()``, after checking its
        ``<img>``/``</img>`` ids against the tokenizer).

    Raises
    ------
    TypeError
        ``vocab`` is not a VisualVocab.

    Notes
    -----
    State: none is kept between calls. Each call reads every row's grammar position from
    ``input_ids`` with :func:`seedfast.nn.image_positions` (the tokens since the last opening
    marker, if it is not closed), a few elementwise ops over ``[rows, length]`` on device and
    no host synchronisation. So rows reordered by beam search, ``num_return_sequences``,
    left padding and prompts that end with (or inside) a span are all handled. A forced
    closing marker gets score 0 (probability 1 after a log-softmax) and every other id −inf,
    which keeps beam scores unchanged through it.

    Ids at or above ``text_vocab_size`` that are neither span ids nor markers (other added
    tokens, padding of the LM head) are never allowed. Processors that run before this one and
    set every span id to −inf leave a row with nothing allowed; transformers' sampling then
    fails on it. A ``max_new_tokens`` that ends generation inside a span leaves it unclosed.

    Examples
    --------
    >>> from transformers import LogitsProcessorList
    >>> grammar = ImageGrammarLogitsProcessor(seed_llama_vocab())  # doctest: +SKIP
    >>> model.generate(ids, do_sample=True, top_p=0.5,
    ...                logits_processor=LogitsProcessorList([grammar]))  # doctest: +SKIP
    """

    def __init__(self, vocab: VisualVocab) -> None:
        if not isinstance(vocab, VisualVocab):
            raise TypeError(f"{type(self).__name__}: vocab must be a VisualVocab, got {type(vocab).__name__}")
        self.vocab = vocab
        self._masks: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _allowed(self, v: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Boolean ``[V]`` masks: allowed in text, inside a span, and the closing marker (cached)."""
        key = (v, device)
        if key not in self._masks:
            # The op's own masks: this processor and the fused sampler allow the same ids.
            text, span = grammar_masks(self.vocab, v, device)
            self._masks[key] = (text, span, torch.arange(v, device=device) == self.vocab.eoi_id)
        return self._masks[key]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        """Return ``scores`` with the ids the grammar forbids set to −inf.

        Parameters
        ----------
        input_ids : Tensor ``[R, L]``, int64
            The sequences so far (prompt included); R = batch × beams × return sequences.
        scores : Tensor ``[R, V]``, floating
            Logits or log-probabilities of the next token; ``V >= vocab.min_vocab_size``.

        Returns
        -------
        Tensor ``[R, V]``, dtype of ``scores`` (a new tensor)

        Raises
        ------
        TypeError
            ``scores`` is not a floating tensor or ``input_ids`` not an integer one.
        ValueError
            Shapes disagree, or ``V`` is below the layout's ``min_vocab_size``.
        """
        name = type(self).__name__
        if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
            got = scores.dtype if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise TypeError(f"{name}: scores must be a floating tensor, got {got}")
        if scores.dim() != 2:
            raise ValueError(f"{name}: scores must have shape [rows, V], got {tuple(scores.shape)}")
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != scores.shape[0]:
            got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"{name}: input_ids must have shape [{scores.shape[0]}, L] like scores' rows, got {got}")
        v = scores.shape[1]
        if v < self.vocab.min_vocab_size:
            raise ValueError(f"{name}: scores have V={v} ids but the vocab layout needs at least "
                             f"{self.vocab.min_vocab_size}")
        pos = image_positions(input_ids, self.vocab)[:, None]
        text, span, close = self._allowed(v, scores.device)
        forced = pos >= self.vocab.codes_per_image
        allowed = torch.where(pos < 0, text, torch.where(forced, close, span))
        masked = scores.masked_fill(~allowed, -float("inf"))
        return torch.where(forced & close, torch.zeros((), dtype=scores.dtype, device=scores.device), masked)
