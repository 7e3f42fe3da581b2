"""Benchmark of the fused VQ op against its peers.

Peers, all run in the same process on the same inputs:

* ``official``: SEED's formula (spec §6) in torch, in the input dtype: the full N×K distance
  matrix ``‖z‖² + ‖e‖² − 2 z·eᵀ``, ``argmin``, gather, legacy loss, straight-through.
* ``cdist``: ``torch.cdist`` + ``argmin``, then the same gather and loss.
* ``vector-quantize-pytorch``: ``VectorQuantize`` with a learnable codebook and no EMA
  (optional: skipped when the package is not installed).

Modes: ``codes`` (inference: nearest code only), ``fwd`` (codes, z_q and loss) and ``fwd+bwd``
(plus the backward of ``sum(z_q · g) + loss``). FLOPs count the distance product, 2·N·K·D.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from seedfast.benchmarks.harness import Case, Impl, PeerUnavailable
from seedfast.constants import BETA, CODE_DIM, CODEBOOK_SIZE
from seedfast.ops import nearest_code, vq_quantize

NAME = "vq"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# Codebooks past SEED's: the 16k-262k codes of newer image tokenizers (Open-MAGVIT2, IBQ).
SCALE_K = (8192, 65536, 262144)
SCALE_D = (8, 32, 256)
SCALE_N = (8192, 262144)
# The quick GPU run's subset of the scale cases: (N, K, D).
QUICK_SCALE = ((8192, 65536, 32), (262144, 262144, 8), (8192, 262144, 256))


def _case(mode: str, n: int, k: int, d: int, dt: str) -> Case:
    elt = torch.finfo(_DTYPES[dt]).bits // 8
    moved = (n * d + k * d) * elt + n * 8 + (0 if mode == "codes" else n * d * elt)
    if mode == "fwd+bwd":
        moved += 3 * n * d * elt + k * d * elt
    return Case(NAME, mode, {"N": n, "K": k, "D": d, "dtype": dt}, flops=2.0 * n * k * d, bytes=float(moved), size=n)


def cases(*, quick: bool, device: torch.device) -> list[Case]:
    """SEED's sizes: K = 8192 codes of D = 32; N = 32 vectors per image × batch. On a GPU also
    larger codebooks, K ∈ SCALE_K × D ∈ SCALE_D × N ∈ SCALE_N in bf16 (quick: QUICK_SCALE,
    nearest codes only), where the fused kernel's memory stays O(N + K) and the peers' N×K
    distance matrix may not fit (recorded as out of memory)."""
    k, d = CODEBOOK_SIZE, CODE_DIM
    if device.type == "cuda":
        sizes = [8192, 262144] if quick else [8192, 262144, 1048576]
        dtypes = ["bf16"] if quick else ["bf16", "fp32"]
    else:
        sizes = [1024, 8192] if quick else [8192, 65536]
        dtypes = ["fp32"]
    out = [_case(mode, n, k, d, dt) for dt in dtypes for mode in ("codes", "fwd", "fwd+bwd") for n in sizes]
    if device.type == "cuda":
        if quick:
            scale = [("codes", n, kk, dd) for n, kk, dd in QUICK_SCALE]
        else:
            scale = [(mode, n, kk, dd) for mode in ("codes", "fwd", "fwd+bwd")
                     for kk in SCALE_K for dd in SCALE_D for n in SCALE_N]
        seen = {(c.mode, c.params["N"], c.params["K"], c.params["D"], c.params["dtype"]) for c in out}
        out += [_case(mode, n, kk, dd, "bf16") for mode, n, kk, dd in scale
                if (mode, n, kk, dd, "bf16") not in seen]
    return out


def _inputs(case: Case, device: torch.device, *, grad: bool):
    p = case.params
    g = torch.Generator(device="cpu").manual_seed(0)
    dtype = _DTYPES[p["dtype"]]
    z = torch.randn(p["N"] // 32, 32, p["D"], generator=g).to(device=device, dtype=dtype)
    codebook = torch.randn(p["K"], p["D"], generator=g).to(device=device, dtype=dtype)
    up = torch.randn(z.shape, generator=g).to(device=device, dtype=dtype)
    if grad:
        z.requires_grad_()
        codebook.requires_grad_()
    return z, codebook, up


def _runner(case: Case, z, codebook, up, forward: Callable):
    """The closure to time for a mode, given ``forward(z, codebook) -> (z_q, codes, loss)``."""
    if case.mode == "codes":
        def run():
            with torch.no_grad():
                return forward(z, codebook)[1]
    elif case.mode == "fwd":
        def run():
            with torch.no_grad():
                return forward(z, codebook)
    else:
        def run():
            z.grad = codebook.grad = None
            z_q, _, loss = forward(z, codebook)
            ((z_q * up).sum() + loss).backward()
    return run


def official_forward(z: torch.Tensor, codebook: torch.Tensor, beta: float = BETA):
    """SEED's quantiser as the spec gives it, in the input dtype (the peer, not our reference)."""
    flat = z.reshape(-1, z.shape[-1])
    dist = (flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)
            - 2 * torch.einsum("nd,dk->nk", flat, codebook.t()))
    codes = dist.argmin(1)
    e = codebook[codes].view(z.shape)
    loss = (e.detach() - z).pow(2).mean() + beta * (e - z.detach()).pow(2).mean()
    return z + (e - z).detach(), codes.view(z.shape[:-1]), loss


def cdist_forward(z: torch.Tensor, codebook: torch.Tensor, beta: float = BETA):
    flat = z.reshape(-1, z.shape[-1])
    codes = torch.cdist(flat, codebook).argmin(1)
    e = codebook[codes].view(z.shape)
    loss = (e.detach() - z).pow(2).mean() + beta * (e - z.detach()).pow(2).mean()
    return z + (e - z).detach(), codes.view(z.shape[:-1]), loss


def _build_seedfast(case: Case, device: torch.device):
    z, codebook, up = _inputs(case, device, grad=case.mode == "fwd+bwd")
    if case.mode == "codes":
        return lambda: nearest_code(z, codebook)

    def forward(z, codebook):
        out = vq_quantize(z, codebook, BETA)
        return out.z_q, out.codes, out.loss

    return _runner(case, z, codebook, up, forward)


def _build_torch_peer(fn):
    def build(case: Case, device: torch.device):
        z, codebook, up = _inputs(case, device, grad=case.mode == "fwd+bwd")
        return _runner(case, z, codebook, up, fn)
    return build


def _build_vqp(case: Case, device: torch.device):
    try:
        from vector_quantize_pytorch import VectorQuantize
    except ImportError as err:
        raise PeerUnavailable("vector-quantize-pytorch is not installed") from err
    p = case.params
    z, codebook, up = _inputs(case, device, grad=case.mode == "fwd+bwd")
    vq = VectorQuantize(dim=p["D"], codebook_size=p["K"], commitment_weight=1.0, learnable_codebook=True,
                        ema_update=False, rotation_trick=False).to(device)
    with torch.no_grad():
        vq._codebook.embed.copy_(codebook.detach().float()[None])
    vq.to(z.dtype)

    def forward(z, _codebook):
        z_q, codes, loss = vq(z)
        return z_q, codes, loss

    return _runner(case, z, codebook, up, forward)


impls = [
    Impl("seedfast", _build_seedfast, ours=True),
    Impl("official", _build_torch_peer(official_forward)),
    Impl("cdist", _build_torch_peer(cdist_forward)),
    Impl("vector-quantize-pytorch", _build_vqp),
]
