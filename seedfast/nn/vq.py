"""``VectorQuantizer``: a drop-in VQ layer over :func:`seedfast.ops.vq_quantize`.

By default it is SEED's ``VectorQuantizer2`` (spec §6): an ``embedding`` of ``[K, D]`` codes
initialised Uniform(−1/K, 1/K), nearest code by L2 distance, straight-through output and the
legacy loss ``mean((sg(e) − z)²) + β · mean((e − sg(z))²)``. The codebook is an
``nn.Embedding`` named ``embedding`` so SEED, taming and other VQGAN-style state dicts
(``embedding.weight``) load as they are.

Two opt-in additions go beyond the official quantizer, which has neither:

* usage statistics (``track_usage=True``): per-code assignment frequencies (an exponential
  moving average of the op's ``return_counts``), perplexity and utilisation, kept in buffers
  and updated on device in training-mode forwards, with no host synchronisation;
* dead-code restart (``restart_unused_after=N``): at the start of a training-mode forward,
  every code that no vector has chosen for ``N`` training steps is replaced by a random
  vector of the current batch.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from seedfast._checks import check_positive_ints, is_int
from seedfast.constants import BETA
from seedfast.ops import nearest_code, vq_quantize
from seedfast.ops._common import BACKENDS

CODEBOOK_INITS = ("uniform", "normal", "data")


class VectorQuantizerOutput(NamedTuple):
    """What :class:`VectorQuantizer` returns; unpacks as ``z_q, codes, loss = vq(z)``.

    Attributes
    ----------
    z_q : Tensor ``[..., D]``
        The nearest codes, with the straight-through gradient to ``z``. Dtype: the promotion of
        ``z``'s and the codebook's dtypes.
    codes : Tensor ``[...]``, int64
        Index of the nearest code of each vector (ties go to the lowest index).
    loss : Tensor ``[]``, float32 (float64 for float64 inputs)
        ``mean((sg(e) − z)²) + β · mean((e − sg(z))²)``.
    """

    z_q: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor


class VectorQuantizer(nn.Module):
    """Nearest-code vector quantisation with straight-through gradient and the VQ loss.

    Parameters
    ----------
    num_codes : int
        K, the codebook size (SEED: 8192).
    dim : int
        D, the code dimension (SEED: 32).
    beta : float
        Weight of the codebook term of the loss (spec §6 "legacy": commitment weight 1,
        codebook weight ``beta``). Default 0.25.
    init : {"uniform", "normal", "data"}
        Codebook initialisation: ``"uniform"`` is SEED's Uniform(−1/K, 1/K); ``"normal"`` is
        N(0, 1); ``"data"`` copies random vectors of the first training-mode batch (distinct
        vectors when the batch has at least K of them, with repetition otherwise), without
        k-means.
    track_usage : bool
        Keep per-code usage statistics (see :attr:`code_frequencies`, :attr:`perplexity`,
        :attr:`utilisation`), updated by training-mode forwards. Implied by
        ``restart_unused_after``.
    usage_decay : float
        Decay in (0, 1) of the moving average of code frequencies. Default 0.99.
    usage_window : int
        :attr:`utilisation` counts the codes used in the last ``usage_window`` training steps.
    restart_unused_after : int or None
        Opt-in dead-code restart: a code no vector has chosen for this many training steps is
        replaced by a random vector of the current batch at the start of the next training
        forward. ``None`` (default, as SEED) never restarts.
    deterministic : bool or None
        Passed to :func:`seedfast.ops.vq_quantize` (fixed-order codebook gradient).
    backend : {"auto", "triton", "torch"}
        Passed to the op; may be changed later by assigning ``module.backend``.
    device, dtype
        Of the codebook.

    Attributes
    ----------
    embedding : nn.Embedding
        The codebook, weight ``[K, D]``.

    Raises
    ------
    TypeError
        ``num_codes``, ``dim``, ``usage_window`` or ``restart_unused_after`` is not an int.
    ValueError
        A size below 1, ``beta`` negative or not finite, ``usage_decay`` outside (0, 1), or an
        unknown ``init`` or ``backend``.

    Notes
    -----
    ``forward(z)`` takes ``z [..., D]`` (channels last; SEED: ``[B, 32, 32]``) and returns a
    :class:`VectorQuantizerOutput`. Statistics and restarts run only in training mode, like
    BatchNorm's running statistics. A restart writes the codebook in place (under
    ``no_grad``): run each backward before the next training forward (the usual loop), since
    the Triton op saves the codebook and a backward through a graph built before a restart
    then fails with autograd's in-place error. Optimiser moments of restarted codes are kept.
    Restarts are per process: under data parallelism, replicas restart different vectors, so
    broadcast the codebook from one rank after each step.
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        beta: float = BETA,
        *,
        init: str = "uniform",
        track_usage: bool = False,
        usage_decay: float = 0.99,
        usage_window: int = 100,
        restart_unused_after: int | None = None,
        deterministic: bool | None = None,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive_ints(name, num_codes=num_codes, dim=dim, usage_window=usage_window)
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
            raise ValueError(f"{name}: beta must be a finite number >= 0, got {beta!r}")
        if backend not in BACKENDS:
            raise ValueError(f"{name}: backend must be one of {BACKENDS}, got {backend!r}")
        if init not in CODEBOOK_INITS:
            raise ValueError(f"{name}: init must be one of {CODEBOOK_INITS}, got {init!r}")
        if not (isinstance(usage_decay, (int, float)) and 0.0 < usage_decay < 1.0):
            raise ValueError(f"{name}: usage_decay must be in (0, 1), got {usage_decay!r}")
        if restart_unused_after is not None:
            if not is_int(restart_unused_after):
                raise TypeError(
                    f"{name}: restart_unused_after must be an int or None, got {type(restart_unused_after).__name__}"
                )
            if restart_unused_after < 1:
                raise ValueError(f"{name}: restart_unused_after must be >= 1, got {restart_unused_after}")

        self.num_codes = num_codes
        self.dim = dim
        self.beta = float(beta)
        self.init = init
        self.track_usage = bool(track_usage) or restart_unused_after is not None
        self.usage_decay = float(usage_decay)
        self.usage_window = usage_window
        self.restart_unused_after = restart_unused_after
        self.deterministic = deterministic
        self.backend = backend

        self.embedding = nn.Embedding(num_codes, dim, device=device, dtype=dtype)
        self.reset_parameters()
        dev = self.embedding.weight.device
        if self.track_usage:
            self.register_buffer("usage_average", torch.zeros(num_codes, dtype=torch.float32, device=dev))
            self.register_buffer("last_used_step", torch.zeros(num_codes, dtype=torch.int64, device=dev))
            self.register_buffer("usage_steps", torch.zeros((), dtype=torch.int64, device=dev))
        # A Python mirror of the data_initialized buffer, so forward branches without reading
        # the device; kept in step by reset_parameters and the load hook below.
        self._awaiting_data_init = False
        if init == "data":
            self.register_buffer("data_initialized", torch.zeros((), dtype=torch.bool, device=dev))
            self._awaiting_data_init = True
            self.register_load_state_dict_post_hook(_sync_data_init_flag)

    @property
    def codebook(self) -> torch.Tensor:
        """The codes, ``[K, D]`` (the ``embedding.weight`` parameter)."""
        return self.embedding.weight

    def reset_parameters(self) -> None:
        """Re-initialise the codebook by ``init`` (``"data"`` waits for the next training batch)."""
        with torch.no_grad():
            if self.init == "normal":
                self.embedding.weight.normal_()
            else:
                self.embedding.weight.uniform_(-1.0 / self.num_codes, 1.0 / self.num_codes)
        if self.init == "data" and hasattr(self, "data_initialized"):
            self.data_initialized.fill_(False)
            self._awaiting_data_init = True

    def load_codebook(self, codebook: torch.Tensor) -> None:
        """Copy ``codebook`` into the layer (e.g. from another library) and mark it initialised.

        Parameters
        ----------
        codebook : Tensor ``[K, D]``, floating
            Cast to the layer's dtype and device.

        Raises
        ------
        TypeError
            ``codebook`` is not a floating tensor.
        ValueError
            Its shape is not ``[num_codes, dim]``.
        """
        name = f"{type(self).__name__}.load_codebook"
        if not isinstance(codebook, torch.Tensor) or not codebook.is_floating_point():
            got = codebook.dtype if isinstance(codebook, torch.Tensor) else type(codebook).__name__
            raise TypeError(f"{name}: codebook must be a floating tensor, got {got}")
        if tuple(codebook.shape) != (self.num_codes, self.dim):
            raise ValueError(f"{name}: codebook must have shape [{self.num_codes}, {self.dim}], "
                             f"got {tuple(codebook.shape)}")
        with torch.no_grad():
            self.embedding.weight.copy_(codebook)
            if self.init == "data":
                self.data_initialized.fill_(True)
        self._awaiting_data_init = False

    def forward(self, z: torch.Tensor) -> VectorQuantizerOutput:
        """Quantise ``z``.

        Parameters
        ----------
        z : Tensor ``[..., D]``, float32/float16/bfloat16 (float64 on the torch backend)

        Returns
        -------
        VectorQuantizerOutput
            ``(z_q [..., D], codes [...] int64, loss [] float32)``.

        Raises
        ------
        TypeError
            ``z`` is not a floating tensor.
        ValueError
            ``z``'s last dimension is not ``dim``, ``z`` is on another device than the
            codebook, or the backend cannot run these inputs.
        """
        weight = self.embedding.weight
        # Only inputs the op will accept feed the codebook updates, so a bad input raises the
        # op's error with the codebook untouched.
        usable = (
            self.training and isinstance(z, torch.Tensor) and z.is_floating_point() and z.dim() >= 1
            and z.shape[-1] == self.dim and z.device == weight.device and z.numel() > 0
        )
        if usable:
            rows = z.detach().reshape(-1, self.dim)
            if self._awaiting_data_init:
                self._init_from_data(rows)
            if self.restart_unused_after is not None:
                self._restart_unused_codes(rows)
        counting = usable and self.track_usage
        out = vq_quantize(
            z, weight, self.beta, return_counts=counting, deterministic=self.deterministic, backend=self.backend,
        )
        if counting:
            self._record_usage(out.counts)
        return VectorQuantizerOutput(out.z_q, out.codes, out.loss)

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code of each vector, without gradient: the tokenizer's inference path.

        Parameters
        ----------
        z : Tensor ``[..., D]``, floating

        Returns
        -------
        Tensor ``[...]``, int64

        Raises
        ------
        TypeError, ValueError
            As :meth:`forward`.
        """
        return nearest_code(z, self.embedding.weight, backend=self.backend)

    def get_codebook_entry(self, codes: torch.Tensor) -> torch.Tensor:
        """The codes' vectors (SEED's ``get_codebook_entry``).

        Parameters
        ----------
        codes : Tensor ``[...]``, int64 or int32, values in ``[0, K)``

        Returns
        -------
        Tensor ``[..., D]``, dtype of the codebook

        Raises
        ------
        TypeError
            ``codes`` is not an integer tensor.
        """
        if not isinstance(codes, torch.Tensor) or codes.dtype not in (torch.int64, torch.int32):
            got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise TypeError(f"{type(self).__name__}.get_codebook_entry: codes must be an int64/int32 tensor, got {got}")
        return nn.functional.embedding(codes, self.embedding.weight)

    # -----------------------------------------------------------------------------------------
    # Usage statistics: device tensors only, so reading them never synchronises the host.

    def _require_tracking(self, what: str) -> None:
        if not self.track_usage:
            raise RuntimeError(f"{type(self).__name__}.{what} needs track_usage=True at construction")

    @property
    def code_frequencies(self) -> torch.Tensor:
        """Moving-average share of vectors assigned to each code, ``[K]`` float32 summing to 1.

        Bias-corrected (as Adam's moments), so it is the plain frequency after one step; all
        zeros before the first training step.

        Raises
        ------
        RuntimeError
            Without ``track_usage``.
        """
        self._require_tracking("code_frequencies")
        correction = 1.0 - torch.pow(self.usage_decay, self.usage_steps.to(torch.float32))
        # Before the first step the average is all zeros and the correction 0: keep zeros.
        return self.usage_average / torch.where(self.usage_steps > 0, correction, 1.0)

    @property
    def perplexity(self) -> torch.Tensor:
        """``exp(entropy(code_frequencies))``, ``[]`` float32: the effective number of codes in use.

        1 when one code takes everything, K when all are used equally; 0 before the first step.

        Raises
        ------
        RuntimeError
            Without ``track_usage``.
        """
        p = self.code_frequencies
        entropy = -torch.special.xlogy(p, p).sum()
        return torch.where(self.usage_steps > 0, entropy.exp(), torch.zeros_like(entropy))

    @property
    def utilisation(self) -> torch.Tensor:
        """Share of codes chosen at least once in the last ``usage_window`` training steps, ``[]`` float32.

        Raises
        ------
        RuntimeError
            Without ``track_usage``.
        """
        self._require_tracking("utilisation")
        recent = (self.last_used_step > 0) & (self.usage_steps - self.last_used_step < self.usage_window)
        return recent.float().mean()

    @property
    def unused_steps(self) -> torch.Tensor:
        """Training steps since each code was last chosen (since the start if never), ``[K]`` int64.

        Raises
        ------
        RuntimeError
            Without ``track_usage``.
        """
        self._require_tracking("unused_steps")
        return self.usage_steps - self.last_used_step

    def _record_usage(self, counts: torch.Tensor) -> None:
        with torch.no_grad():
            self.usage_steps.add_(1)
            self.last_used_step.copy_(torch.where(counts > 0, self.usage_steps, self.last_used_step))
            share = counts.to(torch.float32) / counts.sum().to(torch.float32)
            self.usage_average.mul_(self.usage_decay).add_(share, alpha=1.0 - self.usage_decay)

    def _random_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """K random rows of ``rows`` (distinct when there are at least K)."""
        n = rows.shape[0]
        if n >= self.num_codes:
            # The K largest of n uniforms: a uniformly random K-subset, from device ops that
            # CUDA graphs capture (randperm's CUDA path may not be).
            pick = torch.rand(n, device=rows.device).topk(self.num_codes).indices
        else:
            pick = torch.randint(0, n, (self.num_codes,), device=rows.device)
        return rows[pick].to(self.embedding.weight.dtype)

    def _init_from_data(self, rows: torch.Tensor) -> None:
        with torch.no_grad():
            self.embedding.weight.copy_(self._random_rows(rows))
            self.data_initialized.fill_(True)
        self._awaiting_data_init = False

    def _restart_unused_codes(self, rows: torch.Tensor) -> None:
        with torch.no_grad():
            dead = self.usage_steps - self.last_used_step >= self.restart_unused_after
            weight = self.embedding.weight
            weight.copy_(torch.where(dead[:, None], self._random_rows(rows), weight))
            # A restarted code gets a fresh grace period, as if just chosen.
            self.last_used_step.copy_(torch.where(dead, self.usage_steps, self.last_used_step))

    def extra_repr(self) -> str:
        parts = [f"num_codes={self.num_codes}", f"dim={self.dim}", f"beta={self.beta}", f"init={self.init!r}"]
        if self.track_usage:
            parts.append(f"track_usage=True, usage_decay={self.usage_decay}, usage_window={self.usage_window}")
        if self.restart_unused_after is not None:
            parts.append(f"restart_unused_after={self.restart_unused_after}")
        if self.backend != "auto":
            parts.append(f"backend={self.backend!r}")
        return ", ".join(parts)


def _sync_data_init_flag(module: nn.Module, incompatible_keys: object) -> None:
    """After ``load_state_dict``: a loaded codebook marked as data-initialised is not re-initialised."""
    module._awaiting_data_init = not bool(module.data_initialized)
