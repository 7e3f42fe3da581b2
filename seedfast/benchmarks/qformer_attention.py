"""Benchmark of the masked flash attention behind the Causal Q-Former and EVA ViT.

Shapes (``[B, H, L, D]``; spec §4 and the EVA ViT the tokenizer runs first):

* ``self``: the Q-Former's causal self-attention over its 32 queries (Lq = Lk = 32, H = 12,
  D = 64);
* ``joint``: 32 queries followed by 32 text tokens, causal, padded text masked by ``kv_lens``
  (Lq = Lk = 64; text lengths drawn once with a fixed seed);
* ``cross``: the queries attending to the 257 image tokens (Lq = 32, Lk = 257, no mask);
* ``eva``: EVA ViT self-attention over 257 patches (H = 16, D = 88, no mask).

Peers, in the same process on the same values, each in its own native layout and at its
best for the case:

* ``sdpa``: ``scaled_dot_product_attention`` with ``is_causal=True`` where the mask is plain
  causal self-attention (its flash backend then runs, with no mask tensor at all), a
  precomputed additive float mask otherwise (built once per case: a boolean mask is
  converted on every call), and no mask where nothing is masked;
* ``flex``: FlexAttention with its block mask built once per case and, where Lq <= 64, block
  mask and kernel tiles of 32 queries × 64 keys instead of the default 128 rows (falling back
  to the default tiles where this torch rejects them); compiled on CUDA, as its documentation
  requires (eager on CPU, unavailable if it cannot run there);
* ``xformers``: ``memory_efficient_attention`` with ``LowerTriangularMask`` (CUDA only;
  unavailable with ``kv_lens``, which that mask cannot express);
* ``flash-attn``: ``flash_attn_func`` where nothing is padded (causal only where Lq = Lk, since
  its causal mask is bottom-right aligned) and ``flash_attn_varlen_func`` on the padded joint
  case, with queries and keys packed to each sequence's length once per case as a varlen user
  keeps them (its padded query rows are then not computed at all). CUDA fp16/bf16 only.

Modes ``fwd`` (no autograd) and ``fwd+bwd`` (forward, then backward of ``sum(out · g)``).

FLOPs count only the (query, key) pairs the mask keeps, summed over batch and heads:
``4·D`` per kept pair forward (QKᵀ and PV) and ``10·D`` more backward (five matmuls, the
recompute of QKᵀ included), so every implementation is credited with the same useful work,
whatever it computes for masked pairs. Bytes: q, k, v read and the output written once
forward; backward adds reading q, k, v, out, dout and writing dq, dk, dv.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from seedfast.benchmarks.harness import Case, Impl, PeerUnavailable
from seedfast.constants import NUM_QUERY_TOKENS
from seedfast.ops import qformer_attention
from seedfast.ops.qformer_attention import attention_mask

NAME = "qformer_attention"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (name, H, Lq, Lk, D, causal, with kv_lens)
_SHAPES = [
    ("self", 12, 32, 32, 64, True, False),
    ("joint", 12, 64, 64, 64, True, True),
    ("cross", 12, 32, 257, 64, False, False),
    ("eva", 16, 257, 257, 88, False, False),
]


def _kv_lens(p: dict, device: torch.device) -> torch.Tensor | None:
    """Joint sequences: the 32 queries plus 1 to 32 text tokens, fixed by the seed."""
    if not p["kv_lens"]:
        return None
    g = torch.Generator().manual_seed(1)
    text = torch.randint(1, p["Lk"] - NUM_QUERY_TOKENS + 1, (p["B"],), generator=g)
    return (NUM_QUERY_TOKENS + text).to(device)


def _kept_pairs(b: int, h: int, lq: int, lk: int, causal: bool, kv_lens: torch.Tensor | None) -> int:
    keep = attention_mask(lq, lk, causal=causal, kv_lens=kv_lens, device=torch.device("cpu"))
    if keep is None:
        return b * h * lq * lk
    return int(keep.expand(b, 1, lq, lk).sum()) * h


def cases(*, quick: bool, device: torch.device) -> list[Case]:
    """SEED's attention shapes at B ∈ {1, 32, 256} in fp16 and bf16 on CUDA (quick: B = 32,
    bf16); on CPU a small fp32 subset that tracks regressions only."""
    if device.type == "cuda":
        batches = [32] if quick else [1, 32, 256]
        dtypes = ["bf16"] if quick else ["fp16", "bf16"]
    else:
        batches = [1] if quick else [2]
        dtypes = ["fp32"]
    out = []
    for dt in dtypes:
        elt = torch.finfo(_DTYPES[dt]).bits // 8
        for name, h, lq, lk, d, causal, with_lens in _SHAPES:
            for b in batches:
                params = {"B": b, "H": h, "Lq": lq, "Lk": lk, "D": d, "shape": name, "causal": causal,
                          "kv_lens": with_lens, "dtype": dt}
                pairs = _kept_pairs(b, h, lq, lk, causal, _kv_lens(params, torch.device("cpu")))
                rows = b * h * d * elt
                for mode in ("fwd", "fwd+bwd"):
                    flops = (4.0 if mode == "fwd" else 14.0) * d * pairs
                    moved = 2 * (lq + lk) * rows if mode == "fwd" else 6 * (lq + lk) * rows
                    out.append(Case(NAME, mode, params, flops=flops, bytes=float(moved), size=b))
    return out


def _inputs(case: Case, device: torch.device, *, layout: str):
    """q, k, v and the output gradient in ``"bhld"`` (``[B, H, L, D]``) or ``"blhd"`` layout,
    with the same values whichever layout is asked for."""
    p = case.params
    g = torch.Generator().manual_seed(0)
    dtype = _DTYPES[p["dtype"]]
    grad = case.mode == "fwd+bwd"
    shapes = [(p["B"], p["H"], n, p["D"]) for n in (p["Lq"], p["Lk"], p["Lk"], p["Lq"])]
    tensors = [torch.randn(s, generator=g).to(device=device, dtype=dtype) for s in shapes]
    if layout == "blhd":
        tensors = [t.transpose(1, 2).contiguous() for t in tensors]
    q, k, v, up = tensors
    for t in (q, k, v):
        t.requires_grad_(grad)
    return q, k, v, up


def _runner(case: Case, q, k, v, up, forward: Callable) -> Callable[[], object]:
    if case.mode == "fwd":
        def run():
            with torch.no_grad():
                return forward(q, k, v)
    else:
        def run():
            q.grad = k.grad = v.grad = None
            forward(q, k, v).backward(up)
    return run


def _build_seedfast(case: Case, device: torch.device):
    q, k, v, up = _inputs(case, device, layout="bhld")
    lens = _kv_lens(case.params, device)
    causal = case.params["causal"]
    return _runner(case, q, k, v, up, lambda q, k, v: qformer_attention(q, k, v, causal=causal, kv_lens=lens))


def _build_sdpa(case: Case, device: torch.device):
    p = case.params
    q, k, v, up = _inputs(case, device, layout="bhld")
    lens = _kv_lens(case.params, device)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if p["causal"] and lens is None and p["Lq"] == p["Lk"]:
        return _runner(case, q, k, v, up, lambda q, k, v: sdpa(q, k, v, is_causal=True))
    keep = attention_mask(p["Lq"], p["Lk"], causal=p["causal"], kv_lens=lens, device=device)
    if keep is None:
        return _runner(case, q, k, v, up, lambda q, k, v: sdpa(q, k, v))
    # Every row of these cases sees at least one key, so -inf never fills a whole row.
    bias = torch.zeros(keep.shape, dtype=q.dtype, device=device).masked_fill_(~keep, float("-inf"))
    return _runner(case, q, k, v, up, lambda q, k, v: sdpa(q, k, v, attn_mask=bias))


# FlexAttention's tiles for 32-64 queries: its default 128-row tiles would leave most rows of
# every program empty. The backward's options are named with the ``bwd_`` prefix of torch
# >= 2.9; an older torch that rejects them runs its default tiles instead.
_FLEX_SHORT_Q_BLOCK = (32, 64)
_FLEX_SHORT_Q_OPTIONS = {"fwd_BLOCK_M": 32, "fwd_BLOCK_N": 64, "bwd_BLOCK_M1": 32, "bwd_BLOCK_N1": 64,
                         "bwd_BLOCK_M2": 32, "bwd_BLOCK_N2": 64}


def _build_flex(case: Case, device: torch.device):
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as err:
        raise PeerUnavailable(f"FlexAttention is not in torch {torch.__version__}") from err
    p = case.params
    q, k, v, up = _inputs(case, device, layout="bhld")
    lens = _kv_lens(case.params, device)
    causal = p["causal"]

    def keep(b, h, q_idx, kv_idx):
        ok = kv_idx <= q_idx if causal else kv_idx >= 0
        return ok & (kv_idx < lens[b]) if lens is not None else ok

    masked = causal or lens is not None
    if device.type == "cuda":
        # A fresh compile cache per case: the cases' distinct shapes and grad modes would
        # otherwise exhaust Dynamo's recompile limit and fall back to eager.
        torch._dynamo.reset()
        attend = torch.compile(flex_attention)
    else:
        attend = flex_attention
    short_q = p["Lq"] <= 64 and device.type == "cuda"
    attempts = [(_FLEX_SHORT_Q_BLOCK, _FLEX_SHORT_Q_OPTIONS)] if short_q else []
    attempts.append((128, None))
    errors = []
    for block, options in attempts:
        try:
            block_mask = (create_block_mask(keep, p["B"], None, p["Lq"], p["Lk"], device=device, BLOCK_SIZE=block)
                          if masked else None)

            def forward(q, k, v, block_mask=block_mask, options=options):
                return attend(q, k, v, block_mask=block_mask, kernel_options=options)

            run = _runner(case, q, k, v, up, forward)
            with warnings.catch_warnings():
                # Eager FlexAttention (the CPU path here) warns once that it is unfused.
                warnings.simplefilter("ignore", UserWarning)
                run()
            return run
        except Exception as err:  # Inductor and Triton raise many types; the next tiles are tried
            errors.append(f"tiles {block}: {type(err).__name__}: {err}")
    raise PeerUnavailable(f"FlexAttention cannot run on {device.type}: " + "; ".join(errors))


def _build_xformers(case: Case, device: torch.device):
    if device.type != "cuda":
        raise PeerUnavailable("xformers memory_efficient_attention runs on CUDA only")
    try:
        from xformers.ops import LowerTriangularMask, memory_efficient_attention
    except ImportError as err:
        raise PeerUnavailable("xformers is not installed") from err
    p = case.params
    if p["kv_lens"]:
        raise PeerUnavailable("LowerTriangularMask cannot express kv_lens")
    q, k, v, up = _inputs(case, device, layout="blhd")
    bias = LowerTriangularMask() if p["causal"] else None

    def forward(q, k, v):
        return memory_efficient_attention(q, k, v, attn_bias=bias)

    try:
        with torch.no_grad():
            forward(q, k, v)
    except (RuntimeError, NotImplementedError, ValueError) as err:
        raise PeerUnavailable(f"xformers cannot run this case: {err}") from err
    return _runner(case, q, k, v, up, forward)


def _build_flash_attn(case: Case, device: torch.device):
    p = case.params
    if device.type != "cuda" or p["dtype"] not in ("bf16", "fp16"):
        raise PeerUnavailable("flash-attn needs CUDA fp16/bf16 tensors")
    if p["causal"] and p["Lq"] != p["Lk"]:
        raise PeerUnavailable("flash-attn aligns causal masks bottom-right")
    try:
        from flash_attn import flash_attn_func, flash_attn_varlen_func
    except ImportError as err:
        raise PeerUnavailable("flash-attn is not installed") from err
    q, k, v, up = _inputs(case, device, layout="blhd")
    if not p["kv_lens"]:
        return _runner(case, q, k, v, up, lambda q, k, v: flash_attn_func(q, k, v, causal=p["causal"]))
    if p["Lq"] != p["Lk"]:
        raise PeerUnavailable("the varlen peer packs queries and keys to the same lengths")
    # Packed once, as a varlen caller keeps its tokens: sequence b's first kv_lens[b] rows.
    lens = _kv_lens(case.params, device)
    keep = torch.arange(p["Lq"], device=device)[None, :] < lens[:, None]
    cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
    longest = int(lens.max())
    packed = [t.detach()[keep].requires_grad_(t.requires_grad) for t in (q, k, v)]

    def forward(q, k, v):
        return flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, causal=True)

    return _runner(case, *packed, up[keep], forward)


impls = [
    Impl("seedfast", _build_seedfast, ours=True),
    Impl("sdpa", _build_sdpa),
    Impl("flex", _build_flex),
    Impl("xformers", _build_xformers),
    Impl("flash-attn", _build_flash_attn),
]
