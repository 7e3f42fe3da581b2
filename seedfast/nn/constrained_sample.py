"""``ConstrainedSampler``: stateful, graph-friendly sampling under a span grammar.

The grammar is the one of :func:`seedfast.ops.constrained_sample`: a span of exactly N tokens
from a contiguous sub-vocabulary, opened and closed by two marker tokens, anywhere in free
text. A :class:`~seedfast.ops.VisualVocab` describes the layout. SEED-LLaMA's images are one
instance (``<img>`` + 32 of 8192 codes + ``</img>``, :meth:`VisualVocab.seed_llama`); discrete
audio or video tokens are others, e.g.
``VisualVocab(text_vocab_size=32000, first_code_id=32000, num_codes=4096, boi_id=36096,
eoi_id=36097, eos_id=2, codes_per_image=75)`` for 75 audio codes between ``<audio>`` and
``</audio>``.

The sampler keeps each row's position in the grammar, the random seeds and a step offset in
buffers and updates them in place, so a decode step that calls it can be captured in a CUDA
graph (or compiled with ``fullgraph=True``) and replayed with fresh randomness. It never reads a
value back to the host unless asked: error flags accumulate on the device and :meth:`check`
raises on them once, where the caller's loop ends. SEED-LLaMA's decode runner
(:mod:`seedfast.generation.cuda_graphs`) samples through :meth:`ConstrainedSampler.step` too.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from seedfast._checks import check_positive_ints, is_int
from seedfast.ops import VisualVocab, constrained_sample
from seedfast.ops._common import BACKENDS
from seedfast.ops.constrained_sample import raise_on_flags


def image_positions(input_ids: torch.Tensor, vocab: VisualVocab) -> torch.Tensor:
    """Each row's position in the span grammar after reading ``input_ids``.

    ``-1`` when the row is in text (no opening marker, or the last one is closed), else the
    number of tokens after the last opening marker (``>= N`` means the closing marker is due).
    Computed on device from the whole row, with no host synchronisation, so it is right for
    any prompt and for rows that beam search reorders.

    Parameters
    ----------
    input_ids : Tensor ``[B, L]``, integer
        Token ids (left padding is fine: pad tokens are text).
    vocab : VisualVocab
        Gives ``boi_id`` and ``eoi_id``.

    Returns
    -------
    Tensor ``[B]``, int32

    Raises
    ------
    TypeError
        ``input_ids`` is not an integer tensor, or ``vocab`` not a VisualVocab.
    ValueError
        ``input_ids`` is not 2-D.
    """
    return _positions("image_positions", input_ids, vocab, every_token=False)


def image_positions_by_token(input_ids: torch.Tensor, vocab: VisualVocab) -> torch.Tensor:
    """Each row's position in the span grammar after each of its tokens (:func:`image_positions`
    of every prefix, in one pass).

    Parameters
    ----------
    input_ids : Tensor ``[B, L]``, integer
    vocab : VisualVocab

    Returns
    -------
    Tensor ``[B, L]``, int32
        Column ``i`` is :func:`image_positions` of ``input_ids[:, : i + 1]``.

    Raises
    ------
    TypeError, ValueError
        As :func:`image_positions`.
    """
    return _positions("image_positions_by_token", input_ids, vocab, every_token=True)


def _positions(op: str, input_ids: torch.Tensor, vocab: VisualVocab, *, every_token: bool) -> torch.Tensor:
    if not isinstance(vocab, VisualVocab):
        raise TypeError(f"{op}: vocab must be a VisualVocab, got {type(vocab).__name__}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point() or input_ids.is_complex():
        got = input_ids.dtype if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise TypeError(f"{op}: input_ids must be an integer tensor, got {got}")
    if input_ids.dim() != 2:
        raise ValueError(f"{op}: input_ids must have shape [B, L], got {tuple(input_ids.shape)}")
    b, length = input_ids.shape
    if length == 0:
        return torch.full((b,) if not every_token else (b, 0), -1, dtype=torch.int32, device=input_ids.device)
    # 1-based positions, so 0 stands for "no such marker".
    index = torch.arange(1, length + 1, device=input_ids.device)
    opens = torch.where(input_ids == vocab.boi_id, index, 0)
    closes = torch.where(input_ids == vocab.eoi_id, index, 0)
    if every_token:
        last_open, last_close, end = opens.cummax(1).values, closes.cummax(1).values, index
    else:
        # The hot path (every step of transformers' generate): reductions, no [B, L] indices.
        last_open, last_close, end = opens.amax(1), closes.amax(1), length
    return torch.where(last_open > last_close, end - last_open, -1).to(torch.int32)


def _per_row_buffer(name: str, value: object, b: int, dtype: torch.dtype, device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] not in (1, b)):
            raise ValueError(f"ConstrainedSampler: {name} must be a scalar or a [batch_size] = [{b}] tensor, "
                             f"got shape {tuple(value.shape)}")
        if not dtype.is_floating_point and value.is_floating_point():
            raise TypeError(f"ConstrainedSampler: {name} must be an integer tensor, got {value.dtype}")
        return value.detach().to(device=device, dtype=dtype).reshape(-1).expand(b).clone()
    return torch.full((b,), value, dtype=dtype, device=device)


class ConstrainedSampler(nn.Module):
    """Samples one token per row under the span grammar, tracking state across calls.

    Parameters
    ----------
    vocab : VisualVocab
        The id layout: text ids, the contiguous span sub-vocabulary, the markers, eos and N.
    batch_size : int
        B, fixed (the buffers are static, as a CUDA graph needs).
    temperature : float or Tensor ``[B]``
        ``0`` is greedy. Default 1.
    top_k : int or Tensor ``[B]``
        ``<= 0`` switches top-k off (default).
    top_p : float or Tensor ``[B]``
        In (0, 1]; ``1`` switches top-p off (default).
    seed : int or Tensor ``[B]``
        Random seed per row (one int serves all rows: the op mixes in the row's stream id).
    stream : int or Tensor ``[B]``, optional
        Each row's random stream id (:func:`seedfast.ops.constrained_sample`); default the row
        index. Give every request its own seed and the same stream (e.g. 0) and a request's
        tokens no longer depend on the row it occupies.
    check : bool
        Raise after every call on rows whose allowed logits are NaN/+inf or all −inf (one host
        synchronisation per call: not while capturing a CUDA graph or compiling). Default
        False: the loop stays sync-free, :attr:`error_flags` collects the errors and
        :meth:`check` raises on them once.
    backend : {"auto", "triton", "cuda", "torch"}
        Passed to :func:`seedfast.ops.constrained_sample`.
    device
        Of the state buffers (and so of the logits).

    Attributes
    ----------
    image_pos : Tensor ``[B]``, int32 buffer
        ``-1`` in text, ``k`` after the opening marker and ``k`` span tokens.
    seed, offset, stream : Tensor ``[B]``, int64 buffers
        The random stream; ``offset`` grows by one per call.
    temperature, top_p : Tensor ``[B]``, float32 buffers; top_k : Tensor ``[B]``, int64 buffer
        May be changed in place (``sampler.temperature.fill_(0.7)``) between graph replays.
    error_flags : Tensor ``[B]``, int32 buffer
        Bitwise OR of the op's flags since :meth:`reset` (``FLAG_NON_FINITE``,
        ``FLAG_NOTHING_ALLOWED``); a flagged row emitted eos. :meth:`check` raises on them.
    check_every_call : bool
        The ``check`` argument.

    Raises
    ------
    TypeError
        ``vocab`` is not a VisualVocab, ``batch_size``/``top_k``/``seed`` not an int (or tensor).
    ValueError
        ``batch_size`` below 1, ``temperature`` negative or not finite, ``top_p`` outside
        (0, 1], a per-row tensor of the wrong shape, or an unknown ``backend``.
    """

    def __init__(
        self,
        vocab: VisualVocab,
        batch_size: int,
        *,
        temperature: float | torch.Tensor = 1.0,
        top_k: int | torch.Tensor = 0,
        top_p: float | torch.Tensor = 1.0,
        seed: int | torch.Tensor = 0,
        stream: int | torch.Tensor | None = None,
        check: bool = False,
        backend: str = "auto",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(vocab, VisualVocab):
            raise TypeError(f"{name}: vocab must be a VisualVocab, got {type(vocab).__name__}")
        check_positive_ints(name, batch_size=batch_size)
        if not isinstance(temperature, torch.Tensor) and not (
            isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0
        ):
            raise ValueError(f"{name}: temperature must be a finite number >= 0, got {temperature!r}")
        if not isinstance(top_p, torch.Tensor) and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise ValueError(f"{name}: top_p must be in (0, 1], got {top_p!r}")
        if backend not in BACKENDS:
            raise ValueError(f"{name}: backend must be one of {BACKENDS}, got {backend!r}")
        for arg, value in (("top_k", top_k), ("seed", seed), ("stream", 0 if stream is None else stream)):
            if not isinstance(value, torch.Tensor) and not is_int(value):
                raise TypeError(f"{name}: {arg} must be an int or an integer tensor, got {type(value).__name__}")
        self.vocab = vocab
        self.batch_size = batch_size
        self.check_every_call = check
        self.backend = backend
        b = batch_size
        self.register_buffer("image_pos", torch.full((b,), -1, dtype=torch.int32, device=device))
        self.register_buffer("offset", torch.zeros(b, dtype=torch.int64, device=device))
        self.register_buffer("error_flags", torch.zeros(b, dtype=torch.int32, device=device))
        self.register_buffer("seed", _per_row_buffer("seed", seed, b, torch.int64, device))
        rows = torch.arange(b, dtype=torch.int64, device=device)
        self.register_buffer("stream", rows if stream is None else _per_row_buffer("stream", stream, b, torch.int64,
                                                                                   device))
        self.register_buffer("temperature", _per_row_buffer("temperature", temperature, b, torch.float32, device))
        self.register_buffer("top_k", _per_row_buffer("top_k", top_k, b, torch.int64, device))
        self.register_buffer("top_p", _per_row_buffer("top_p", top_p, b, torch.float32, device))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Sample the next token of every row and advance the state in place.

        Parameters
        ----------
        logits : Tensor ``[B, V]``, float32/float16/bfloat16 (float64 on the torch backend)
            ``V >= vocab.min_vocab_size``; on the buffers' device.

        Returns
        -------
        Tensor ``[B]``, int64
            The tokens. ``image_pos`` and ``error_flags`` are updated and ``offset`` grows by 1.

        Raises
        ------
        TypeError
            ``logits`` is not a floating tensor.
        ValueError
            ``logits`` is not ``[batch_size, V]`` with a large enough ``V``, is on another
            device, or (with ``check``) rows whose allowed logits are NaN/+inf or all −inf.
        """
        name = type(self).__name__
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"{name}: logits must be a torch.Tensor, got {type(logits).__name__}")
        if logits.dim() != 2 or logits.shape[0] != self.batch_size:
            raise ValueError(f"{name}: logits must have shape [batch_size, V] = [{self.batch_size}, V], "
                             f"got {tuple(logits.shape)}")
        tokens, flags = self.step(logits)
        if self.check_every_call:
            raise_on_flags(flags)
        return tokens

    def step(self, logits: torch.Tensor, active: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample rows ``0 .. b-1`` (``b = logits.shape[0]``) and advance their state in place.

        The one sampling step, shared by :meth:`forward` and by a decode loop that runs a smaller
        batch in a larger sampler (a batch of 3 in one sized for 4) and stops rows one by one.
        No host synchronisation and no check: capturable in a CUDA graph.

        Parameters
        ----------
        logits : Tensor ``[b, V]``, ``b <= batch_size``
        active : Tensor ``[b]``, bool, optional
            Rows still generating. The others emit eos and keep their grammar position and
            flags; their ``offset`` advances all the same, so a row's draws depend only on
            ``(seed, step, stream)``, whichever rows have stopped.

        Returns
        -------
        tokens : Tensor ``[b]``, int64
        flags : Tensor ``[b]``, int32
            This call's error flags (0 on inactive rows), also OR-ed into :attr:`error_flags`.

        Raises
        ------
        ValueError
            ``b > batch_size``, or what :func:`seedfast.ops.constrained_sample` rejects.
        """
        b = logits.shape[0]
        if b > self.batch_size:
            raise ValueError(f"{type(self).__name__}.step: {b} rows of logits for a sampler of "
                             f"batch_size={self.batch_size}")
        pos = self.image_pos[:b]
        tokens, next_pos, flags = constrained_sample(
            logits, pos, vocab=self.vocab, temperature=self.temperature[:b], top_k=self.top_k[:b],
            top_p=self.top_p[:b], seed=self.seed[:b], offset=self.offset[:b], stream=self.stream[:b], return_flags=True,
            backend=self.backend,
        )
        if active is not None:
            tokens = torch.where(active, tokens, self.vocab.eos_id)
            next_pos = torch.where(active, next_pos, pos)
            flags = torch.where(active, flags, 0)
        pos.copy_(next_pos)
        self.error_flags[:b].bitwise_or_(flags)
        self.offset[:b].add_(1)
        return tokens, flags

    def check(self) -> None:
        """Raise if a row has hit a sampler error since :meth:`reset` (one host synchronisation).

        Call it once where the decode loop ends, rather than paying a synchronisation per step.

        Raises
        ------
        ValueError
            Naming the rows whose allowed logits were NaN/+inf or all −inf (they emitted eos).
        """
        raise_on_flags(self.error_flags)

    @torch.no_grad()
    def reset(self, prompt_ids: torch.Tensor | None = None, *, seed: int | torch.Tensor | None = None,
              stream: int | torch.Tensor | None = None) -> None:
        """Start new sequences: state from ``prompt_ids`` (or text), offset and flags zeroed.

        Parameters
        ----------
        prompt_ids : Tensor ``[B, L]``, integer, optional
            The prompts about to be continued; a prompt ending in the opening marker (or inside
            a span) starts the rows inside a span. ``None``: every row starts in text.
        seed : int or Tensor ``[B]``, optional
            New seeds; unchanged when ``None``.
        stream : int or Tensor ``[B]``, optional
            New stream ids; unchanged when ``None``.

        Raises
        ------
        TypeError, ValueError
            ``prompt_ids`` is not an integer ``[batch_size, L]`` tensor, or ``seed`` is not an
            int or a ``[batch_size]`` integer tensor.
        """
        if prompt_ids is None:
            self.image_pos.fill_(-1)
        else:
            pos = image_positions(prompt_ids, self.vocab)
            if pos.shape[0] != self.batch_size:
                raise ValueError(f"{type(self).__name__}.reset: prompt_ids must have batch_size = "
                                 f"{self.batch_size} rows, got {tuple(prompt_ids.shape)}")
            self.image_pos.copy_(pos)
        if seed is not None:
            if not isinstance(seed, torch.Tensor) and not is_int(seed):
                raise TypeError(f"{type(self).__name__}.reset: seed must be an int or an integer tensor, "
                                f"got {type(seed).__name__}")
            self.seed.copy_(_per_row_buffer("seed", seed, self.batch_size, torch.int64, self.seed.device))
        if stream is not None:
            if not isinstance(stream, torch.Tensor) and not is_int(stream):
                raise TypeError(f"{type(self).__name__}.reset: stream must be an int or an integer tensor, "
                                f"got {type(stream).__name__}")
            self.stream.copy_(_per_row_buffer("stream", stream, self.batch_size, torch.int64, self.stream.device))
        self.offset.zero_()
        self.error_flags.zero_()

    def extra_repr(self) -> str:
        v = self.vocab
        return (f"batch_size={self.batch_size}, span=[{v.boi_id}] + {v.codes_per_image} × "
                f"[{v.first_code_id}, {v.first_code_id + v.num_codes}) + [{v.eoi_id}]")
