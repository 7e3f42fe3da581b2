"""Sampling with SEED-LLaMA's image grammar built in: ``<img>`` + exactly N codes + ``</img>``.

Each row carries ``image_pos``: ``-1`` in text, ``k`` after ``<img>`` and ``k`` codes. The
rules, applied before temperature / top-k / top-p:

* text (``pos < 0``): any text token (ids below ``text_vocab_size``, eos included) or ``<img>``
  (then ``pos → 0``); never a code or ``</img>``;
* image (``0 <= pos < N``): only codes (``pos → pos + 1``);
* end of image (``pos >= N``): ``</img>`` is forced whatever the logits (``pos → -1``).

Filters, per row, on the allowed tokens with a finite logit (``-inf`` ones are never drawn):

* ``temperature <= 0`` (or NaN): greedy, the allowed argmax (ties → lowest id).
* weights ``w = exp((x - max) / t)`` with ``x`` the logit in float32 (float64 for float64 logits).
* top-k (``top_k > 0``): keep token ``i`` iff fewer than ``top_k`` allowed tokens have a
  strictly larger logit. Ties at the boundary are all kept, so more than ``k`` may survive.
* top-p (``top_p < 1``, on the top-k-renormalised distribution): keep token ``i`` iff the
  weight of the top-k tokens with a strictly larger logit (so strictly more probable) is below
  ``top_p`` times their total weight: the smallest most-probable set reaching ``top_p``, with
  ties at the boundary all kept. The most probable token(s) are always kept, so ``top_p <= 0``
  acts as greedy over ties.

Both filters are defined by the order of the logits, so the kept set depends on floating point
only through the mass comparison of top-p. No implementation sorts the vocabulary except the
torch reference; the kernels find the same thresholds by counting (see
``seedfast.kernels.constrained_sample``).

Randomness: one uniform ``u`` per row from a counter-based hash of ``(seed[b], offset[b],
stream[b])`` (:func:`row_uniform`), where ``stream`` is the row index ``b`` unless the caller
gives each row its own stream id (a request id, or 0 for every request: then a request's tokens
depend on its seed alone, not on its row in the batch); inverse-CDF sampling over the kept tokens in id order: the first token
whose cumulative weight exceeds ``u`` times the total (the last token with weight if rounding
leaves nothing above). Seeds and offsets are tensors, so a captured CUDA graph replays with new
randomness when the offset tensor is advanced in place; the same seed and offset draw the same
``u`` on every backend, and the same token unless a float sum lands within rounding of a
boundary.

Errors: an allowed logit that is NaN or +inf, or a row with no allowed finite logit, makes the
row emit ``eos`` with ``pos → -1`` and sets its flag (``FLAG_NON_FINITE``, ``FLAG_NOTHING_ALLOWED``).
Forced ``</img>`` rows never error. The op never synchronises with the host by default (as
FlashInfer's ``check_nan=False``): ``return_flags=True`` hands the flags to the caller, which owns
the decode loop and checks them once with :func:`raise_on_flags` (``generate`` at the end of a
run, :meth:`seedfast.nn.ConstrainedSampler.check`); ``check=True`` raises the same ``ValueError``
naming the rows on every call, at the cost of one host synchronisation each.

Backends: ``"torch"`` (the reference below), ``"triton"`` (the fused kernels; CPU tensors only
under ``TRITON_INTERPRET=1``), ``"cuda"`` (the CUDA C++ twin in ``csrc/``, JIT-built on first
use: the same split two-pass sampler and exact fallback, its float sums added in Triton's order)
and ``"auto"`` (Triton on CUDA tensors, the reference elsewhere).
"""
from __future__ import annotations

import math

import torch

from seedfast._checks import is_int
from seedfast.ops._common import FLOATING, check_same_device, check_tensor, resolve_backend
from seedfast.visual_vocab import VisualVocab

FLAG_NON_FINITE = 1
FLAG_NOTHING_ALLOWED = 2

_FLT_MAX = torch.finfo(torch.float32).max


# ---------------------------------------------------------------------------------------------
# The counter-based uniform shared by every backend (the Triton and CUDA kernels compute the
# same 32-bit integer arithmetic, so tokens agree bit for bit given the same kept set).

_MASK32 = 0xFFFFFFFF
_HASH_MUL1 = 0x7FEB352D
_HASH_MUL2 = 0x846CA68B
_ROW_SALT = 0x9E3779B9


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for ``0 <= x < 2**32`` in int64 without overflow (16-bit halves)."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (xorshift-multiply, "lowbias32" constants) on int64 holding uint32."""
    x = x ^ (x >> 16)
    x = _mul32(x, _HASH_MUL1)
    x = x ^ (x >> 15)
    x = _mul32(x, _HASH_MUL2)
    return x ^ (x >> 16)


def row_uniform(seed: torch.Tensor, offset: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Uniform in ``[0, 1)`` (24 bits, float32) per row from ``(seed, offset, row)``, all int64 ``[B]``.

    ``h = hash32(row + 0x9E3779B9)``, then ``h = hash32(h ^ w)`` for the words ``w`` = low and
    high 32 bits of ``offset``, then of ``seed``; ``u = (h >> 8) / 2**24``.
    """
    h = hash32((rows + _ROW_SALT) & _MASK32)
    for value in (offset, seed):
        h = hash32(h ^ (value & _MASK32))
        h = hash32(h ^ ((value >> 32) & _MASK32))
    return (h >> 8).to(torch.float32) * (1.0 / 2**24)


def grammar_masks(vocab: VisualVocab, v: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Allowed ids ``[V]`` (bool) in text and inside an image."""
    ids = torch.arange(v, device=device)
    text = (ids < vocab.text_vocab_size) | (ids == vocab.boi_id)
    codes = (ids >= vocab.first_code_id) & (ids < vocab.first_code_id + vocab.num_codes)
    return text, codes


def constrained_sample_reference(
    logits: torch.Tensor,
    image_pos: torch.Tensor,
    *,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    vocab: VisualVocab,
    stream: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain-torch sampler (mask → sort by logit → cumsum → inverse CDF): the oracle and the CPU path.

    Parameters
    ----------
    logits : Tensor ``[B, V]``, floating
    image_pos : Tensor ``[B]``, integer
    temperature, top_p : Tensor ``[B]``, float32
    top_k, seed, offset : Tensor ``[B]``, int64
        :func:`constrained_sample` broadcasts scalars to these.
    vocab : VisualVocab
    stream : Tensor ``[B]``, int64, optional
        Each row's random stream id; default the row index.

    Returns
    -------
    tokens : Tensor ``[B]``, int64
    next_image_pos : Tensor ``[B]``, int32
    flags : Tensor ``[B]``, int32
    """
    b, v = logits.shape
    dev = logits.device
    acc = torch.promote_types(logits.dtype, torch.float32)
    x = logits.to(acc)
    pos = image_pos.to(torch.int64)
    in_text = pos < 0
    forced = pos >= vocab.codes_per_image
    text_ok, code_ok = grammar_masks(vocab, v, dev)
    allowed = torch.where(in_text[:, None], text_ok, code_ok)

    live = allowed & torch.isfinite(x)
    non_finite = ((torch.isnan(x) | (x == math.inf)) & allowed).any(1) & ~forced
    nothing = ~live.any(1) & ~non_finite & ~forced
    error = non_finite | nothing
    flags = non_finite.to(torch.int32) * FLAG_NON_FINITE + nothing.to(torch.int32) * FLAG_NOTHING_ALLOWED

    # Error and forced rows (whose token is fixed) get one live token so the arithmetic stays defined.
    dead = (error | forced)[:, None]
    live = torch.where(dead, torch.arange(v, device=dev) == 0, live)
    xs = torch.where(live, torch.where(dead, 0.0, x), -math.inf)
    row_max = xs.amax(1, keepdim=True)

    greedy = ~(temperature > 0)
    greedy_tok = xs.argmax(1)
    inv_t = torch.where(greedy, 1.0, temperature.float()).reciprocal().clamp(max=_FLT_MAX).to(acc)
    w = torch.where(live, torch.exp((xs - row_max) * inv_t[:, None]), 0.0)

    # Top-k and top-p by logit order (probabilities follow it): a descending sort of the logits.
    sorted_x, order = xs.sort(1, descending=True)
    sorted_w = w.gather(1, order)
    k = top_k.clamp(max=v)
    # Clamp before subtracting: k - 1 wraps around for top_k = -2**63 (also "off").
    kth = sorted_x.gather(1, (k.clamp(min=1) - 1)[:, None])
    k_off = (k <= 0)[:, None]
    keep = live & (k_off | (xs >= kth))
    sorted_w = torch.where(k_off | (sorted_x >= kth), sorted_w, 0.0)
    z = sorted_w.sum(1, keepdim=True)
    mass_above = torch.cat([sorted_w.new_zeros(b, 1), sorted_w.cumsum(1)[:, :-1]], 1)
    inside = mass_above < top_p.to(acc)[:, None] * z
    inside[:, 0] = True
    threshold = sorted_x.gather(1, inside.sum(1, keepdim=True) - 1)
    keep = keep & ((top_p >= 1)[:, None] | (xs >= threshold))

    final = torch.where(keep, w, 0.0)
    cdf = final.cumsum(1)
    stream = torch.arange(b, device=dev) if stream is None else stream
    u = row_uniform(seed, offset, stream).to(acc)
    drawn = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    # Rounding can put the target at the very top of the CDF: take the last token with weight then.
    last_weighted = v - 1 - (final > 0).flip(1).to(torch.int8).argmax(1)
    drawn = torch.where(drawn < v, drawn, last_weighted)

    tokens = torch.where(greedy, greedy_tok, drawn)
    tokens = torch.where(error, vocab.eos_id, tokens)
    tokens = torch.where(forced, vocab.eoi_id, tokens)
    next_pos = torch.where(in_text & (tokens == vocab.boi_id), 0, -1)
    next_pos = torch.where(~in_text & ~forced & ~error, pos + 1, next_pos)
    return tokens.to(torch.int64), next_pos.to(torch.int32), flags


# ---------------------------------------------------------------------------------------------
# The Triton and CUDA paths as opaque custom ops, so torch.compile and CUDA graphs see one node.


def _layout(vocab: VisualVocab) -> list[int]:
    return [vocab.text_vocab_size, vocab.first_code_id, vocab.num_codes, vocab.boi_id, vocab.eoi_id,
            vocab.eos_id, vocab.codes_per_image]


@torch.library.custom_op("seedfast::constrained_sample", mutates_args=())
def _constrained_sample_op(
    logits: torch.Tensor, image_pos: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
    top_p: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, stream: torch.Tensor, layout: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from seedfast.kernels import constrained_sample as kcs

    return kcs.constrained_sample_forward(logits, image_pos, temperature, top_k, top_p, seed, offset, stream,
                                          tuple(layout))


@torch.library.custom_op("seedfast::constrained_sample_cuda", mutates_args=())
def _constrained_sample_cuda_op(
    logits: torch.Tensor, image_pos: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
    top_p: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, stream: torch.Tensor, layout: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ext = cuda_extension()
    tokens, next_pos, flags = ext.constrained_sample(logits, image_pos, temperature, top_k, top_p, seed, offset,
                                                     stream, list(layout))
    return tokens, next_pos, flags


def _fake(logits, image_pos, temperature, top_k, top_p, seed, offset, stream, layout):
    b = logits.shape[0]
    return (logits.new_empty((b,), dtype=torch.int64), logits.new_empty((b,), dtype=torch.int32),
            logits.new_empty((b,), dtype=torch.int32))


_constrained_sample_op.register_fake(_fake)
_constrained_sample_cuda_op.register_fake(_fake)


def cuda_extension():
    """The JIT-built CUDA C++ sampler (``csrc/constrained_sample*.{cu,cpp}``), built on first use.

    Raises
    ------
    RuntimeError
        CUDA is not available or the build failed (the message carries the compiler's output).
    """
    from seedfast.ops._cuda_ext import load_extension

    return load_extension("seedfast_constrained_sample", ("constrained_sample.cu", "constrained_sample_binding.cpp"))


def _per_row(op: str, name: str, value, b: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A scalar or ``[B]`` tensor argument as a ``[B]`` tensor of ``dtype`` on ``device``."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            value = value.reshape(1)
        if value.dim() != 1 or value.shape[0] not in (1, b):
            raise ValueError(f"{op}: {name} must be a scalar or a [B] = [{b}] tensor, got shape {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{op}: {name} must be on {device}, got {value.device}")
        if not dtype.is_floating_point and value.dtype.is_floating_point:
            raise TypeError(f"{op}: {name} must be an integer tensor, got {value.dtype}")
        return value.to(dtype).expand(b)
    return torch.full((b,), value, dtype=dtype, device=device)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _fits_int64(value: object) -> bool:
    # Python ints are unbounded; the per-row tensors are int64, and torch.full would raise a
    # bare OverflowError for 2**64.
    return is_int(value) and _INT64_MIN <= int(value) <= _INT64_MAX


def _check_scalar(op: str, name: str, value, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{op}: {name} must be {expected}, got {value!r}")


def constrained_sample(
    logits: torch.Tensor,
    image_pos: torch.Tensor,
    *,
    vocab: VisualVocab,
    temperature: float | torch.Tensor = 1.0,
    top_k: int | torch.Tensor = 0,
    top_p: float | torch.Tensor = 1.0,
    seed: int | torch.Tensor = 0,
    offset: int | torch.Tensor = 0,
    stream: int | torch.Tensor | None = None,
    check: bool = False,
    return_flags: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, ...]:
    """Sample one token per row under the image grammar, with temperature / top-k / top-p.

    Parameters
    ----------
    logits : Tensor ``[B, V]``, float32/float16/bfloat16 (float64 on the torch backend)
    image_pos : Tensor ``[B]``, int32 (or int64)
        ``-1`` in text, ``k`` after ``<img>`` and ``k`` codes.
    vocab : VisualVocab
        The id layout; ``V`` must be at least ``vocab.min_vocab_size``.
    temperature : float or Tensor ``[B]``
        ``<= 0`` is greedy.
    top_k : int or Tensor ``[B]``
        ``<= 0`` switches top-k off.
    top_p : float or Tensor ``[B]``
        ``>= 1`` switches top-p off.
    seed, offset : int or int64 Tensor ``[B]`` (or scalar tensor)
        The random stream; advance ``offset`` each step (in place, to replay a CUDA graph).
    stream : int or int64 Tensor ``[B]`` (or scalar tensor), optional
        Each row's stream id in the hash; default the row index. Pass a per-request id (or 0)
        so that a request's tokens do not depend on the row it occupies in the batch.
    check : bool
        Raise on error rows: one host synchronisation per call, so not while capturing a CUDA
        graph or compiling. Default False: no synchronisation; take the flags
        (``return_flags=True``) and check them where the loop ends (:func:`raise_on_flags`).
    return_flags : bool
        Also return the per-row error flags.
    backend : {"auto", "triton", "cuda", "torch"}

    Returns
    -------
    tokens : Tensor ``[B]``, int64
    next_image_pos : Tensor ``[B]``, int32
    flags : Tensor ``[B]``, int32 (only with ``return_flags``)
        Bitwise ``FLAG_NON_FINITE`` (1) | ``FLAG_NOTHING_ALLOWED`` (2); 0 when the row is fine.

    Raises
    ------
    TypeError
        Non-floating logits, non-integer ``image_pos``/``seed``/``offset``/``stream``, or ``vocab`` not a VisualVocab.
    ValueError
        Shapes, devices, out-of-range scalar arguments, a layout that does not fit ``V``, or
        (with ``check``) rows whose logits are NaN/+inf or allow nothing.
    """
    op = "constrained_sample"
    if not isinstance(vocab, VisualVocab):
        raise TypeError(f"{op}: vocab must be a VisualVocab, got {type(vocab).__name__}")
    logits = check_tensor(op, "logits", logits, ndim=2, dtypes=(*FLOATING, torch.float64))
    image_pos = check_tensor(op, "image_pos", image_pos, ndim=1, dtypes=(torch.int32, torch.int64))
    device = check_same_device(op, logits=logits, image_pos=image_pos)
    b, v = logits.shape
    if image_pos.shape[0] != b:
        raise ValueError(f"{op}: image_pos must have shape [B] = [{b}], got {tuple(image_pos.shape)}")
    if v < vocab.min_vocab_size:
        raise ValueError(f"{op}: logits have V={v} ids but the vocab layout needs at least {vocab.min_vocab_size}")
    if not isinstance(temperature, torch.Tensor):
        _check_scalar(op, "temperature", temperature,
                      isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0,
                      "a finite number >= 0")
    if not isinstance(top_k, torch.Tensor):
        _check_scalar(op, "top_k", top_k, _fits_int64(top_k), f"an int in [{_INT64_MIN}, {_INT64_MAX}] (<= 0 is off)")
    if not isinstance(top_p, torch.Tensor):
        _check_scalar(op, "top_p", top_p, isinstance(top_p, (int, float)) and 0 < top_p <= 1, "in (0, 1]")
    for name, value in (("seed", seed), ("offset", offset), ("stream", stream)):
        if value is None and name == "stream":
            continue
        if not isinstance(value, torch.Tensor):
            _check_scalar(op, name, value, _fits_int64(value), f"an int in [{_INT64_MIN}, {_INT64_MAX}] (int64)")
        elif value.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{op}: {name} must be an int64 tensor, got {value.dtype}")
    temperature_t = _per_row(op, "temperature", temperature, b, device, torch.float32)
    top_k_t = _per_row(op, "top_k", top_k, b, device, torch.int64)
    top_p_t = _per_row(op, "top_p", top_p, b, device, torch.float32)
    seed_t = _per_row(op, "seed", seed, b, device, torch.int64)
    offset_t = _per_row(op, "offset", offset, b, device, torch.int64)
    stream_t = (torch.arange(b, device=device) if stream is None
                else _per_row(op, "stream", stream, b, device, torch.int64))
    kernel_fits = logits.dtype in FLOATING
    if backend == "auto" and not kernel_fits:
        backend = "torch"
    chosen = resolve_backend(op, backend, device, has_cuda=True)
    if chosen != "torch" and not kernel_fits:
        raise ValueError(f"{op}: backend={chosen!r} supports logits of dtype float32/float16/bfloat16, got "
                         f"{str(logits.dtype).removeprefix('torch.')} (use backend='torch')")
    per_row = (image_pos, temperature_t, top_k_t, top_p_t, seed_t, offset_t, stream_t)
    if chosen == "torch":
        tokens, next_pos, flags = constrained_sample_reference(
            logits, image_pos, temperature=temperature_t, top_k=top_k_t, top_p=top_p_t,
            seed=seed_t, offset=offset_t, vocab=vocab, stream=stream_t,
        )
    else:
        # The kernels need unit stride in V (any row stride, even 0) and a unit-stride image_pos.
        rows = logits if logits.stride(1) == 1 else logits.contiguous()
        custom = _constrained_sample_op if chosen == "triton" else _constrained_sample_cuda_op
        tokens, next_pos, flags = custom(rows, image_pos.contiguous(), *per_row[1:], _layout(vocab))
    if check:
        raise_on_flags(flags)
    return (tokens, next_pos, flags) if return_flags else (tokens, next_pos)


def raise_on_flags(flags: torch.Tensor) -> None:
    """Raise a ValueError naming the rows whose flags are set (one host synchronisation).

    Parameters
    ----------
    flags : Tensor ``[B]``, int32
        :func:`constrained_sample`'s flags, or their bitwise OR over a run.

    Raises
    ------
    ValueError
        Some flag is set: the first ten rows and why, and how many more.
    """
    bad = torch.nonzero(flags).flatten().tolist()
    if not bad:
        return
    values = flags[bad].tolist()
    parts = []
    for row, f in zip(bad[:10], values[:10]):
        why = []
        if f & FLAG_NON_FINITE:
            why.append("an allowed logit is NaN or +inf")
        if f & FLAG_NOTHING_ALLOWED:
            why.append("no allowed token has a finite logit")
        parts.append(f"row {row}: {' and '.join(why)}")
    more = f" (and {len(bad) - 10} more rows)" if len(bad) > 10 else ""
    raise ValueError("constrained_sample: " + "; ".join(parts) + more + "; those rows emitted eos")
