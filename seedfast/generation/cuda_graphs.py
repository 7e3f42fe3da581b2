"""The decode runner: model step + constrained sampler + cache/state update, graph-captured on CUDA.

One decode step is a fixed sequence of kernels over static tensors:

1. :meth:`Llama.decode` writes each row's last token into the cache at ``cache.lengths[b]`` and
   returns logits;
2. ``cache.lengths`` advances (finished rows run along, their outputs ignored);
3. the runner's :class:`~seedfast.nn.ConstrainedSampler` draws the next token under the image
   grammar (:meth:`~seedfast.nn.ConstrainedSampler.step`, the same code as the module's
   ``forward``) from its per-row buffers (temperature, top-k, top-p, seed, offset, image
   position), finished rows masked, and advances them in place;
4. the token goes into column ``step`` of the output buffer, and the per-row state advances:
   ``generated`` and ``done`` (eos, sampler error, or the row's limit reached outside an image:
   a limit that falls inside an image lets it finish, so every image has exactly
   ``codes_per_image`` codes).

Nothing in a step reads a value back to the host, so on CUDA the whole step is captured once
into a CUDA graph per (batch bucket, attended-length bucket) and replayed per token. Batch
buckets are powers of two (a batch of 3 runs in the graph of 4, the extra row marked done; the
eager path pads the same way, so both run kernels of the same shapes and agree bit for bit);
attended-length buckets are multiples of :data:`SEQ_BLOCK` positions, so SDPA reads
``round_up(longest row, 256)`` cached positions rather than the whole cache (flash-attn reads
each row's own prefix and needs one bucket). Graphs are captured lazily, the first time a
bucket is reached, and kept with the runner, which is cached per model by :func:`decode_runner`:
warm-up and capture happen once per model and bucket, not per call. On CPU (or with
``use_cuda_graphs=False``) the same step runs eagerly.
"""
from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from seedfast.models.kv_cache import KVCache
from seedfast.models.llama import Llama, resolve_attention, rope_table
from seedfast.nn.constrained_sample import ConstrainedSampler
from seedfast.visual_vocab import VisualVocab

SEQ_BLOCK = 256  # attended-length bucket: one graph per 256 cached positions
CAPACITY_BLOCK = 64  # cache positions are allocated in these steps
# One eager step before each capture (kernel selection, Triton compilation, cuBLAS setup). Only
# one: a second would write one position further, past the cache when a bucket is first reached
# on the last step a runner has room for.
WARMUP_STEPS = 1


def batch_bucket(n: int) -> int:
    """The power of two at or above ``n``: the batch a graph is captured for."""
    return 1 << (n - 1).bit_length()


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass
class DecodeState:
    """Per-row tensors a captured step reads and writes in place (all ``[B]`` unless noted).

    The sampling state (grammar position, seeds, offsets, settings, error flags) is the
    runner's :class:`~seedfast.nn.ConstrainedSampler`'s; this is the rest.

    Attributes
    ----------
    tokens : int64
        Last sampled token: the next step's input.
    done : bool
    generated : int32
        Tokens emitted so far.
    limits : int32
        ``max_new_tokens`` per row.
    eos : int64
        The id that stops the row (``-1``: none).
    out : int64 ``[B, T]``
        Emitted tokens; row ``b``'s are ``out[b, :generated[b]]``.
    step : int64 ``[1]``
        The output column the next token goes to.
    """

    tokens: torch.Tensor
    done: torch.Tensor
    generated: torch.Tensor
    limits: torch.Tensor
    eos: torch.Tensor
    out: torch.Tensor
    step: torch.Tensor

    MUTABLE = ("tokens", "done", "generated", "step")

    @classmethod
    def allocate(cls, batch_size: int, max_tokens: int, device: torch.device) -> DecodeState:
        def z(dtype: torch.dtype, *shape: int) -> torch.Tensor:
            return torch.zeros(shape or (batch_size,), dtype=dtype, device=device)

        return cls(tokens=z(torch.int64), done=z(torch.bool), generated=z(torch.int32), limits=z(torch.int32),
                   eos=z(torch.int64), out=z(torch.int64, batch_size, max_tokens), step=z(torch.int64, 1))

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f.name).nbytes for f in fields(self))


@dataclass(frozen=True)
class RowSettings:
    """What :meth:`DecodeRunner.start` needs per row (host values, one entry per prompt)."""

    image_pos: Sequence[int]
    limits: Sequence[int]
    temperature: Sequence[float]
    top_k: Sequence[int]
    top_p: Sequence[float]
    seed: Sequence[int]
    eos: Sequence[int]
    stream: Sequence[int] | None = None
    """The sampler's per-row stream ids (default the row index, as the sampler's)."""


def _weights_key(model: Llama) -> tuple:
    """Changes when a parameter is replaced or moved: captured graphs hold raw weight pointers."""
    return tuple((p.data_ptr(), p.dtype, p.device) for p in model.parameters())


class DecodeRunner:
    """A KV cache, per-row decode state, a sampler, a rotary table and the CUDA graphs that step them.

    Parameters
    ----------
    model : Llama
    vocab : VisualVocab
        The grammar the sampler enforces (baked into captured graphs).
    batch_size, max_seq_len : int
        Capacity: rows and cache positions (prompt + generated tokens).
    use_cuda_graphs : bool
        Capture and replay the decode step (CUDA models only).
    attention : {"auto", "sdpa", "flash"}

    Raises
    ------
    ValueError
        ``use_cuda_graphs`` on a model that is not on CUDA, or a bad ``attention``.
    """

    def __init__(self, model: Llama, vocab: VisualVocab, *, batch_size: int, max_seq_len: int,
                 use_cuda_graphs: bool, attention: str = "auto"):
        device = model.device
        if use_cuda_graphs and device.type != "cuda":
            raise ValueError(f"use_cuda_graphs=True needs a CUDA model, got one on {device}")
        if model.config.vocab_size < vocab.min_vocab_size:
            raise ValueError(f"vocab layout needs at least {vocab.min_vocab_size} ids, the model has "
                             f"{model.config.vocab_size}")
        self._model = weakref.ref(model)
        self._weights = _weights_key(model)
        self.vocab = vocab
        self.use_cuda_graphs = use_cuda_graphs
        self.requested_attention = attention
        self.attention = resolve_attention(attention, device, model.dtype)
        self.cache = KVCache.allocate(model.config, batch_size, max_seq_len, dtype=model.dtype, device=device)
        self.rope = rope_table(model.config, max_seq_len, device)
        self.state = DecodeState.allocate(batch_size, max_seq_len, device)
        # No per-call check (the sampler's default): a captured step must not synchronise, and
        # generate checks the collected flags once, at the end.
        self.sampler = ConstrainedSampler(vocab, batch_size, device=device)
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._pool = torch.cuda.graph_pool_handle() if use_cuda_graphs else None
        self.rows = 0
        self.batch = 0
        self.steps = 0
        self._max_prompt = 0

    @property
    def model(self) -> Llama:
        model = self._model()
        if model is None:
            raise RuntimeError("DecodeRunner: its model has been deleted")
        return model

    @property
    def batch_size(self) -> int:
        return self.cache.batch_size

    @property
    def max_seq_len(self) -> int:
        return self.cache.max_seq_len

    def matches(self, model: Llama, vocab: VisualVocab, use_cuda_graphs: bool, attention: str) -> bool:
        """Whether this runner serves ``model`` as it is now, with these settings."""
        return (self._model() is model and self._weights == _weights_key(model) and self.vocab == vocab
                and self.use_cuda_graphs == use_cuda_graphs and self.requested_attention == attention)

    @property
    def nbytes(self) -> int:
        """Device bytes held: cache, state, sampler and rotary table (graph pools not included)."""
        sampler = sum(t.nbytes for t in self.sampler.buffers())
        return self.cache.nbytes + self.state.nbytes + sampler + sum(t.nbytes for t in self.rope)

    # -- a generation -------------------------------------------------------------------------

    @torch.no_grad()
    def start(self, prompts: Sequence[Sequence[int]], rows: RowSettings) -> None:
        """Prefill ``prompts`` (rows ``0 .. n-1``) and sample each row's first token.

        Raises
        ------
        ValueError
            More rows than the runner holds, or prompt + limit + an image's worth of tokens
            beyond its positions.
        """
        n = len(prompts)
        batch = batch_bucket(n)
        lengths = [len(p) for p in prompts]
        longest = max(lengths)
        need = longest + max(rows.limits) + self.vocab.codes_per_image
        if batch > self.batch_size or need > self.max_seq_len:
            raise ValueError(f"DecodeRunner.start: {n} prompts (batch {batch}) needing {need} positions do not fit "
                             f"a runner of {self.batch_size} rows × {self.max_seq_len} positions")
        dev = self.cache.k.device
        st, sampler = self.state, self.sampler
        st.done.fill_(True)
        st.generated.zero_()
        st.step.zero_()
        st.tokens.fill_(self.vocab.eos_id)
        self.cache.reset()
        sampler.reset()  # offsets and error flags 0
        # Rows past the prompts (the batch bucket's padding) stay done, greedy and in text.
        for buffer, values, idle in ((st.limits, rows.limits, 0), (st.eos, rows.eos, -1),
                                     (sampler.image_pos, rows.image_pos, -1), (sampler.seed, rows.seed, 0),
                                     (sampler.temperature, rows.temperature, 0.0), (sampler.top_k, rows.top_k, 0),
                                     (sampler.top_p, rows.top_p, 1.0),
                                     (sampler.stream, range(n) if rows.stream is None else rows.stream, 0)):
            buffer.fill_(idle)
            buffer[:n].copy_(torch.tensor(list(values), dtype=buffer.dtype))
        st.done[:n] = False
        padded = torch.full((n, longest), self.vocab.eos_id, dtype=torch.int64)
        for b, p in enumerate(prompts):
            padded[b, : len(p)] = torch.as_tensor(list(p), dtype=torch.int64)
        logits = self.model.prefill(padded.to(dev), lengths, self.cache, self.rope, attention=self.attention)
        self._sample_and_advance(logits, n)
        self.rows, self.batch, self.steps, self._max_prompt = n, batch, 1, longest

    @torch.no_grad()
    def step(self) -> None:
        """One decode step for every row (finished rows run along; their tokens are not kept). No host sync.

        Raises
        ------
        RuntimeError
            Stepping past the runner's positions (the caller's step bound is wrong).
        """
        need = self._max_prompt + self.steps
        if need > self.max_seq_len:
            raise RuntimeError(f"DecodeRunner.step: step {self.steps} needs {need} positions, "
                               f"the runner has {self.max_seq_len}")
        s = self.max_seq_len if self.attention == "flash" else min(self.max_seq_len, round_up(need, SEQ_BLOCK))
        if self.use_cuda_graphs:
            self._graph(self.batch, s).replay()
        else:
            self._decode_step(self.batch, s)
        self.steps += 1

    def all_done(self) -> bool:
        """Whether every row has stopped (one host synchronisation)."""
        return bool(self.state.done[: self.rows].all())

    def peek(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The last sampled token and ``done`` of each row, on the CPU (one host synchronisation)."""
        # copy=True: on a CPU model .cpu() would return views of the live state.
        return (self.state.tokens[: self.rows].to("cpu", copy=True),
                self.state.done[: self.rows].to("cpu", copy=True))

    def collect(self) -> tuple[list[list[int]], list[int]]:
        """Each row's emitted tokens and sampler error flags (one host synchronisation)."""
        n = self.rows
        out = self.state.out[:n, : self.steps].cpu()
        generated = self.state.generated[:n].tolist()
        return [out[b, : generated[b]].tolist() for b in range(n)], self.sampler.error_flags[:n].tolist()

    # -- the step -----------------------------------------------------------------------------

    def _sample_and_advance(self, logits: torch.Tensor, b: int) -> None:
        st = self.state
        active = ~st.done[:b]
        tok, flags = self.sampler.step(logits, active)
        st.out[:b].scatter_(1, st.step.view(1, 1).expand(b, 1), tok[:, None])
        st.generated[:b] += active.to(torch.int32)
        in_text = self.sampler.image_pos[:b] < 0
        stop = (tok == st.eos[:b]) | (flags != 0) | ((st.generated[:b] >= st.limits[:b]) & in_text)
        st.done[:b] |= stop
        st.tokens[:b] = tok
        st.step += 1

    def _decode_step(self, b: int, s: int) -> None:
        st = self.state
        logits = self.model.decode(st.tokens[:b], self.cache, self.rope, seq_len=s, attention=self.attention)
        # Every row advances, finished ones too (their tokens are never read back): lengths stay
        # below longest prompt + steps, the bound the attended-length bucket is chosen by.
        self.cache.lengths[:b] += 1
        self._sample_and_advance(logits, b)

    def _mutable(self) -> list[torch.Tensor]:
        """Every tensor a step advances (the output column it writes is rewritten, not advanced)."""
        st, sampler = self.state, self.sampler
        return [*(getattr(st, name) for name in DecodeState.MUTABLE), sampler.image_pos, sampler.offset,
                sampler.error_flags, self.cache.lengths]

    def _graph(self, b: int, s: int) -> torch.cuda.CUDAGraph:
        graph = self.graphs.get((b, s))
        if graph is not None:
            return graph
        # Warm-up runs the real step and so advances the state; it is restored before capture.
        # The cache slot the warm-up wrote is the one the captured step rewrites with the same values.
        live = self._mutable()
        saved = [t.clone() for t in live]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._decode_step(b, s)
        torch.cuda.current_stream().wait_stream(side)
        for tensor, value in zip(live, saved):
            tensor.copy_(value)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._decode_step(b, s)
        self.graphs[(b, s)] = graph
        return graph


_RUNNERS: weakref.WeakKeyDictionary[Llama, DecodeRunner] = weakref.WeakKeyDictionary()


def decode_runner(model: Llama, vocab: VisualVocab, *, batch_size: int, max_seq_len: int,
                  use_cuda_graphs: bool, attention: str = "auto") -> DecodeRunner:
    """The model's cached runner if it fits, else a new one (which replaces it in the cache).

    A runner fits when it serves the same weights, vocab and settings with at least
    ``batch_bucket(batch_size)`` rows and ``max_seq_len`` positions. A new runner gets the
    union of the old and the requested capacity when that costs no more than both together,
    else exactly the request (so a long batch-1 call after a wide short one does not allocate
    the wide × long product). Rows are rounded up to a power of two, positions to
    :data:`CAPACITY_BLOCK`.
    """
    rows = batch_bucket(batch_size)
    positions = round_up(max_seq_len, CAPACITY_BLOCK)
    old = _RUNNERS.get(model)
    if old is not None and old.matches(model, vocab, use_cuda_graphs, attention):
        if old.batch_size >= rows and old.max_seq_len >= positions:
            return old
        union = (max(rows, old.batch_size), max(positions, old.max_seq_len))
        if union[0] * union[1] <= rows * positions + old.batch_size * old.max_seq_len:
            rows, positions = union
    _RUNNERS.pop(model, None)
    del old  # free the old cache before allocating the new one
    runner = DecodeRunner(model, vocab, batch_size=rows, max_seq_len=positions, use_cuda_graphs=use_cuda_graphs,
                          attention=attention)
    _RUNNERS[model] = runner
    return runner


def drop_runner(model: Llama) -> None:
    """Forget the model's cached runner (frees its cache and graphs)."""
    _RUNNERS.pop(model, None)


__all__ = ["CAPACITY_BLOCK", "DecodeRunner", "DecodeState", "RowSettings", "SEQ_BLOCK", "batch_bucket",
           "decode_runner", "drop_runner"]
