"""Vector quantisation as SEED does it: nearest of K codes by L2 distance, straight-through
output and the legacy VQ loss (spec §6), fused so that no N×K distance matrix is built.

Choices where the spec is silent (each also holds for the reference):

* ``z_q`` equals ``codebook[codes]`` exactly. The official ``z + sg(e − z)`` rounds in low
  precision; its gradient, the identity to ``z``, is the same.
* ``loss`` is float32 whatever the input dtype, accumulated in fp32 (fp64 for fp64 inputs).
  For an empty ``z`` it is NaN, as ``torch.mean`` of nothing.
* If ``z`` and ``codebook`` dtypes differ, both are cast to ``torch.promote_types`` of the
  two (differentiably), so fp32 codebooks work with bf16 activations under autocast.
* Non-finite values: a row of ``z`` holding NaN or ±inf gets code 0 (and makes ``loss``
  non-finite, so training notices); a code whose distance is NaN or +inf is never chosen
  over one with a finite distance. Ties go to the lowest index, as ``torch.argmin``.
* The codebook gradient is a scatter-add. By default it uses atomics (fast, run-to-run
  float-order differences); ``deterministic=True`` (or ``torch.use_deterministic_algorithms``)
  sums each code's rows in a fixed order instead.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from seedfast.constants import BETA
from seedfast.ops._common import FLOATING, as_rows, check_same_device, check_tensor, resolve_backend

_TRITON_MAX_DIM = 256
_FLT_MAX = torch.finfo(torch.float32).max
_CHUNK = 1024


class VQOutput(NamedTuple):
    """What :func:`vq_quantize` returns.

    Attributes
    ----------
    z_q : Tensor ``[..., D]``, dtype of ``z``
        ``codebook[codes]`` with the straight-through gradient to ``z``.
    codes : Tensor ``[...]``, int64
        Index of the nearest code per vector.
    loss : Tensor ``[]``, float32
        ``mean((sg(e) − z)²) + β · mean((e − sg(z))²)``.
    counts : Tensor ``[K]``, int64, or None
        How many vectors chose each code (only with ``return_counts=True``).
    """

    z_q: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor
    counts: torch.Tensor | None = None


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def nearest_code_reference(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Plain-torch nearest code: ``argmin_k ‖e_k‖² − 2 z·e_k`` in fp32 (or fp64).

    ``‖z‖²`` is the same for every code of a row, so it is left out of the argmin, as the
    kernel does: kept in fp32 it swamps the differences between codes once ``|z|`` is large
    (2% of codes wrong at ``|z| ≈ 1e5`` with codes of norm ≈ 1, every row code 0 from 1e17).

    Parameters
    ----------
    z : Tensor ``[..., D]``, floating, ``D >= 1``
    codebook : Tensor ``[K, D]``, floating

    Returns
    -------
    Tensor ``[...]``, int64
        Ties go to the lowest index; rows with a non-finite value get code 0.
    """
    acc = _accumulation_dtype(torch.promote_types(z.dtype, codebook.dtype))
    rows = z.detach().reshape(-1, z.shape[-1]).to(acc)
    e = codebook.detach().to(acc)
    e_sq = e.pow(2).sum(1)
    codes = torch.empty(rows.shape[0], dtype=torch.int64, device=z.device)
    # Row chunks bound the distance matrix to _CHUNK × K: same result, cache-sized buffers.
    for start in range(0, rows.shape[0], _CHUNK):
        chunk = rows[start:start + _CHUNK]
        dist = torch.addmm(e_sq, chunk, e.t(), alpha=-2.0)
        # NaN/+inf distances lose to every finite one; -inf (an overflowing dot) stays lowest.
        codes[start:start + _CHUNK] = dist.nan_to_num_(nan=_FLT_MAX, posinf=_FLT_MAX, neginf=-float("inf")).argmin(1)
    codes = torch.where(torch.isfinite(rows).all(1), codes, 0)
    return codes.reshape(z.shape[:-1])


class _StraightThrough(torch.autograd.Function):
    """Value ``e``, gradient to ``z`` the identity: ``e + (z − sg(z))`` without the NaN that
    ``inf − inf`` and ``nan − nan`` put into ``z_q`` for a non-finite row."""

    @staticmethod
    def forward(z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return e.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def vq_loss_reference(z: torch.Tensor, e: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """The legacy VQ loss of spec §6: commitment weight 1, codebook weight ``beta``, in fp32 (or fp64)."""
    acc = _accumulation_dtype(z.dtype)
    z32, e32 = z.to(acc), e.to(acc)
    loss = (e32.detach() - z32).pow(2).mean() + beta * (e32 - z32.detach()).pow(2).mean()
    return loss.to(torch.promote_types(torch.float32, loss.dtype))


def vq_quantize_reference(
    z: torch.Tensor, codebook: torch.Tensor, beta: float = BETA, *, return_counts: bool = False
) -> VQOutput:
    """Plain-torch :func:`vq_quantize`: the oracle of the tests and the CPU path.

    Same arguments and result as :func:`vq_quantize` (without ``backend``/``deterministic``).
    """
    if z.dtype != codebook.dtype:
        common = torch.promote_types(z.dtype, codebook.dtype)
        z, codebook = z.to(common), codebook.to(common)
    codes = nearest_code_reference(z, codebook)
    e = torch.nn.functional.embedding(codes, codebook)
    z_q = _StraightThrough.apply(z, e.detach())
    counts = torch.bincount(codes.reshape(-1), minlength=codebook.shape[0]) if return_counts else None
    return VQOutput(z_q, codes, vq_loss_reference(z, e, beta), counts)


# ---------------------------------------------------------------------------------------------
# The Triton path as opaque custom ops, so torch.compile and CUDA graphs see single nodes.


@torch.library.custom_op("seedfast::vq_quantize", mutates_args=())
def _vq_quantize_op(
    z: torch.Tensor, codebook: torch.Tensor, beta: float, with_counts: bool, deterministic: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from seedfast.kernels import vq as kvq

    codes, z_q, loss_sum, counts = kvq.vq_forward(z, codebook, write_zq=True, write_loss=True, write_counts=with_counts)
    n = z.numel()
    loss = loss_sum * ((1.0 + beta) / n) if n else torch.full((), float("nan"), device=z.device)
    return z_q, codes, loss, counts.to(torch.int64)


@_vq_quantize_op.register_fake
def _(z, codebook, beta, with_counts, deterministic):
    n, d = z.shape
    k = codebook.shape[0]
    return (
        z.new_empty((n, d)),
        z.new_empty((n,), dtype=torch.int64),
        z.new_empty((), dtype=torch.float32),
        z.new_empty((k if with_counts else 0,), dtype=torch.int64),
    )


@torch.library.custom_op("seedfast::vq_quantize_backward", mutates_args=())
def _vq_quantize_backward_op(
    z: torch.Tensor,
    codebook: torch.Tensor,
    codes: torch.Tensor,
    grad_zq: torch.Tensor | None,
    grad_loss: torch.Tensor | None,
    beta: float,
    need_grad_z: bool,
    need_grad_codebook: bool,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    from seedfast.kernels import vq as kvq

    m = max(z.numel(), 1)
    grad_z, grad_e = kvq.vq_backward(
        z, codebook, codes, grad_zq, grad_loss, 2.0 / m, 2.0 * beta / m,
        need_grad_z=need_grad_z, need_grad_codebook=need_grad_codebook, deterministic=deterministic,
    )
    # Custom ops cannot return None: an empty tensor stands for "not needed".
    return (
        grad_z if grad_z is not None else z.new_empty(0),
        grad_e if grad_e is not None else codebook.new_empty(0),
    )


@_vq_quantize_backward_op.register_fake
def _(z, codebook, codes, grad_zq, grad_loss, beta, need_grad_z, need_grad_codebook, deterministic):
    return (
        z.new_empty(z.shape if need_grad_z else (0,)),
        codebook.new_empty(codebook.shape if need_grad_codebook else (0,)),
    )


def _vq_setup_context(ctx, inputs, output):
    z, codebook, beta, _, deterministic = inputs
    ctx.save_for_backward(z, codebook, output[1])
    ctx.beta = beta
    ctx.deterministic = deterministic


def _vq_backward(ctx, grad_zq, _grad_codes, grad_loss, _grad_counts):
    z, codebook, codes = ctx.saved_tensors
    need_z, need_e = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_z, grad_e = _vq_quantize_backward_op(
        z, codebook, codes, grad_zq, grad_loss, ctx.beta, need_z, need_e, ctx.deterministic
    )
    return (grad_z if need_z else None), (grad_e if need_e else None), None, None, None


_vq_quantize_op.register_autograd(_vq_backward, setup_context=_vq_setup_context)


@torch.library.custom_op("seedfast::nearest_code", mutates_args=())
def _nearest_code_op(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    from seedfast.kernels import vq as kvq

    codes, _, _, _ = kvq.vq_forward(z, codebook, write_zq=False, write_loss=False, write_counts=False)
    return codes


@_nearest_code_op.register_fake
def _(z, codebook):
    return z.new_empty((z.shape[0],), dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# Public API


def _validate(op: str, z: object, codebook: object, backend: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    allowed = (*FLOATING, torch.float64)
    z = check_tensor(op, "z", z, min_ndim=1, dtypes=allowed)
    codebook = check_tensor(op, "codebook", codebook, ndim=2, dtypes=allowed)
    device = check_same_device(op, z=z, codebook=codebook)
    if codebook.shape[0] == 0:
        raise ValueError(f"{op}: codebook must have at least one code, got shape {tuple(codebook.shape)}")
    if codebook.shape[1] == 0:
        raise ValueError(f"{op}: codebook must have a code dimension D >= 1, got shape {tuple(codebook.shape)}")
    if z.shape[-1] != codebook.shape[1]:
        raise ValueError(
            f"{op}: z's last dimension ({z.shape[-1]}) must equal the codebook's code dimension "
            f"({codebook.shape[1]}); z has shape {tuple(z.shape)}, codebook {tuple(codebook.shape)}"
        )
    if z.dtype != codebook.dtype:
        common = torch.promote_types(z.dtype, codebook.dtype)
        z, codebook = z.to(common), codebook.to(common)
    kernel_fits = z.dtype in FLOATING and z.shape[-1] <= _TRITON_MAX_DIM
    if backend == "auto" and not kernel_fits:
        backend = "torch"
    chosen = resolve_backend(op, backend, device)
    if chosen == "triton" and not kernel_fits:
        raise ValueError(
            f"{op}: backend='triton' supports dtypes float32/float16/bfloat16 and D <= {_TRITON_MAX_DIM}; "
            f"got {str(z.dtype).removeprefix('torch.')} with D={z.shape[-1]} (use backend='torch')"
        )
    return z, codebook, chosen


def vq_quantize(
    z: torch.Tensor,
    codebook: torch.Tensor,
    beta: float = BETA,
    *,
    return_counts: bool = False,
    deterministic: bool | None = None,
    backend: str = "auto",
) -> VQOutput:
    """Quantise each vector of ``z`` to its nearest code, with straight-through output and VQ loss.

    Parameters
    ----------
    z : Tensor ``[..., D]``, float32/float16/bfloat16 (float64 on the torch backend)
        Vectors to quantise (SEED: ``[B, 32, 32]`` after ``encode_task_layer``). Any strides.
    codebook : Tensor ``[K, D]``, floating, same device
        The codes (SEED: ``[8192, 32]``).
    beta : float
        Weight of the codebook term (spec §6 "legacy": commitment 1, codebook ``beta``).
    return_counts : bool
        Also return per-code usage counts ``[K]`` (for utilisation and perplexity logs),
        computed in the same kernel.
    deterministic : bool or None
        Codebook gradient by a fixed-order segment sum instead of atomics. ``None`` follows
        ``torch.are_deterministic_algorithms_enabled()`` (so atomics by default).
    backend : {"auto", "triton", "torch"}
        ``"auto"`` runs Triton on CUDA tensors and the torch reference elsewhere.

    Returns
    -------
    VQOutput
        ``(z_q [..., D], codes [...] int64, loss [] float32, counts [K] int64 or None)``.

    Raises
    ------
    TypeError
        ``z`` or ``codebook`` is not a floating tensor.
    ValueError
        Mismatched D, D = 0, empty codebook, tensors on different devices, ``beta`` not finite and
        non-negative, or a backend that cannot run these inputs.
    """
    op = "vq_quantize"
    if not (isinstance(beta, (int, float)) and 0.0 <= float(beta) < float("inf")):
        raise ValueError(f"{op}: beta must be a finite number >= 0, got {beta!r}")
    z, codebook, chosen = _validate(op, z, codebook, backend)
    if chosen == "torch":
        return vq_quantize_reference(z, codebook, float(beta), return_counts=return_counts)
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    z_q, codes, loss, counts = _vq_quantize_op(as_rows(z), codebook.contiguous(), float(beta), return_counts, deterministic)
    return VQOutput(z_q.reshape(z.shape), codes.reshape(z.shape[:-1]), loss, counts if return_counts else None)


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Index of the nearest code (L2) for each vector: the tokenizer's inference hot path.

    Parameters
    ----------
    z : Tensor ``[..., D]``, float32/float16/bfloat16 (float64 on the torch backend)
    codebook : Tensor ``[K, D]``, floating, same device
    backend : {"auto", "triton", "torch"}

    Returns
    -------
    Tensor ``[...]``, int64
        Ties go to the lowest index; rows with a non-finite value get code 0.

    Raises
    ------
    TypeError, ValueError
        As :func:`vq_quantize`.
    """
    z, codebook, chosen = _validate("nearest_code", z, codebook, backend)
    if chosen == "torch":
        return nearest_code_reference(z, codebook)
    with torch.no_grad():
        codes = _nearest_code_op(as_rows(z.detach()), codebook.detach().contiguous())
    return codes.reshape(z.shape[:-1])
