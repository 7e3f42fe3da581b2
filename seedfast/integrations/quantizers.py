"""Load other libraries' VQ codebooks into :class:`seedfast.nn.VectorQuantizer`.

* vector-quantize-pytorch's ``VectorQuantize``: the codebook is the ``_codebook.embed``
  tensor ``[num_codebooks, K, D]`` (a buffer under EMA updates, a parameter when learnable).
  Single-head Euclidean codebooks convert exactly: the same input gives the same codes as the
  source in eval mode (up to near-ties, which the two distance formulas may round apart).
  Only the codebook carries over: the source's EMA updates, k-means init, commitment weight
  and rotation trick do not; the converted layer trains its codebook by gradient with SEED's
  loss (``beta`` below).
* taming-transformers' ``VectorQuantizer`` / ``VectorQuantizer2`` (and SEED's copy of
  ``VectorQuantizer2``): ``embedding.weight`` ``[K, D]``, which is also
  :class:`~seedfast.nn.VectorQuantizer`'s own key, so the state dict loads unchanged. taming
  takes ``[B, C, H, W]`` maps; seedfast takes channels last: pass ``z.permute(0, 2, 3, 1)``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from seedfast.nn.vq import VectorQuantizer

_VQ_PYTORCH_KEY = "_codebook.embed"
_TAMING_KEY = "embedding.weight"


def vector_quantize_pytorch_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, prefix: str = "", codebook_index: int | None = None
) -> dict[str, torch.Tensor]:
    """Map a vector-quantize-pytorch ``VectorQuantize`` state dict to a ``VectorQuantizer`` one.

    Parameters
    ----------
    state_dict : mapping of str to Tensor
        Holds ``f"{prefix}_codebook.embed"`` of shape ``[H, K, D]``.
    prefix : str
        Where the quantizer sits in a larger model's state dict (e.g. ``"quantizer."``).
    codebook_index : int or None
        Which of H separate per-head codebooks to take; ``None`` requires ``H == 1``.

    Returns
    -------
    dict
        ``{"embedding.weight": Tensor [K, D]}`` (a copy), for ``VectorQuantizer(K, D).load_state_dict``.

    Raises
    ------
    KeyError
        The codebook key is missing.
    ValueError
        The tensor is not ``[H, K, D]``, ``H > 1`` without ``codebook_index``, or the index is
        out of range.
    """
    key = prefix + _VQ_PYTORCH_KEY
    if key not in state_dict:
        raise KeyError(f"vector_quantize_pytorch_state_dict: no {key!r} in the state dict "
                       f"(keys: {sorted(state_dict)[:8]}...)")
    embed = state_dict[key]
    if embed.dim() != 3:
        raise ValueError(f"vector_quantize_pytorch_state_dict: {key} must have shape [H, K, D], "
                         f"got {tuple(embed.shape)}")
    heads = embed.shape[0]
    if codebook_index is None:
        if heads != 1:
            raise ValueError(f"vector_quantize_pytorch_state_dict: {key} holds {heads} separate codebooks; "
                             "pick one with codebook_index (seedfast quantizes with one codebook)")
        codebook_index = 0
    if not 0 <= codebook_index < heads:
        raise ValueError(f"vector_quantize_pytorch_state_dict: codebook_index must be in [0, {heads}), "
                         f"got {codebook_index}")
    return {"embedding.weight": embed[codebook_index].detach().clone()}


def taming_state_dict(state_dict: Mapping[str, torch.Tensor], *, prefix: str = "") -> dict[str, torch.Tensor]:
    """Map a taming / SEED quantizer state dict to a ``VectorQuantizer`` one.

    Parameters
    ----------
    state_dict : mapping of str to Tensor
        Holds ``f"{prefix}embedding.weight"`` ``[K, D]`` (SEED's tokenizer: prefix ``"quantize."``).
    prefix : str

    Returns
    -------
    dict
        ``{"embedding.weight": Tensor [K, D]}`` (a copy).

    Raises
    ------
    KeyError
        The key is missing.
    ValueError
        The tensor is not 2-D.
    """
    key = prefix + _TAMING_KEY
    if key not in state_dict:
        raise KeyError(f"taming_state_dict: no {key!r} in the state dict (keys: {sorted(state_dict)[:8]}...)")
    weight = state_dict[key]
    if weight.dim() != 2:
        raise ValueError(f"taming_state_dict: {key} must have shape [K, D], got {tuple(weight.shape)}")
    return {"embedding.weight": weight.detach().clone()}


def _from_codebook(weight: torch.Tensor, kwargs: dict[str, Any]) -> VectorQuantizer:
    k, d = weight.shape
    kwargs = {"device": weight.device, "dtype": weight.dtype, **kwargs}
    quantizer = VectorQuantizer(k, d, **kwargs)
    quantizer.load_codebook(weight)
    return quantizer


def from_vector_quantize_pytorch(module: nn.Module, **kwargs: Any) -> VectorQuantizer:
    """A ``VectorQuantizer`` holding the codebook of a vector-quantize-pytorch ``VectorQuantize``.

    Parameters
    ----------
    module : vector_quantize_pytorch.VectorQuantize
        Single-head (``heads=1``), Euclidean (``use_cosine_sim=False``), without input/output
        projections (``codebook_dim`` equal to ``dim``), affine parameters or a vq bridge, and
        initialised (no pending k-means init).
    **kwargs
        Passed to :class:`~seedfast.nn.VectorQuantizer` (``beta``, ``track_usage``, ``backend``, ...).

    Returns
    -------
    VectorQuantizer
        On the source's device and dtype, in training mode like any new module.

    Raises
    ------
    ImportError
        vector-quantize-pytorch is not installed.
    TypeError
        ``module`` is not a ``VectorQuantize``.
    ValueError
        A configuration whose codes seedfast would not reproduce (named in the message).
    """
    from vector_quantize_pytorch import VectorQuantize

    if not isinstance(module, VectorQuantize):
        raise TypeError(f"from_vector_quantize_pytorch: module must be a vector_quantize_pytorch.VectorQuantize, "
                        f"got {type(module).__name__}")
    codebook = module._codebook
    problems = []
    if module.heads != 1:
        problems.append(f"heads={module.heads} (seedfast quantizes whole vectors with one codebook)")
    if module.use_cosine_sim:
        problems.append("use_cosine_sim=True (seedfast uses L2 distance)")
    if module.has_projections:
        problems.append("codebook_dim != dim (apply module.project_in / project_out around seedfast yourself)")
    if getattr(codebook, "affine_param", False):
        problems.append("affine_param=True")
    if getattr(codebook, "vq_bridge", None) is not None:
        problems.append("a vq_bridge")
    if not bool(codebook.initted):
        problems.append("an uninitialised codebook (kmeans_init=True and no forward yet)")
    if problems:
        raise ValueError("from_vector_quantize_pytorch: cannot convert a VectorQuantize with " + "; ".join(problems))
    state = vector_quantize_pytorch_state_dict({_VQ_PYTORCH_KEY: codebook.embed})
    return _from_codebook(state["embedding.weight"], kwargs)


def from_taming(module: nn.Module, *, beta: float | None = None, **kwargs: Any) -> VectorQuantizer:
    """A ``VectorQuantizer`` equal to a taming-style quantizer (``VectorQuantizer``, ``VectorQuantizer2``, SEED's).

    Parameters
    ----------
    module : nn.Module
        Has ``embedding`` (an ``nn.Embedding`` ``[K, D]``) and ``beta``; optionally ``legacy``
        (taming's ``VectorQuantizer2``, default True) and ``remap`` (must be None).
    beta : float or None
        ``None`` takes the source's ``beta``. A source with ``legacy=False`` weighs the
        commitment term by beta and the codebook term by 1, the reverse of seedfast (spec §6);
        passing ``beta`` explicitly accepts seedfast's weighting for it.
    **kwargs
        Passed to :class:`~seedfast.nn.VectorQuantizer`.

    Returns
    -------
    VectorQuantizer
        Same codes and, for a legacy source, the same loss and gradients.

    Raises
    ------
    TypeError
        ``module`` has no ``nn.Embedding`` named ``embedding``.
    ValueError
        ``remap`` is set (codes would be re-indexed), or ``legacy=False`` without an explicit
        ``beta``.
    """
    embedding = getattr(module, "embedding", None)
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(f"from_taming: module must have an nn.Embedding named 'embedding', got {type(module).__name__}")
    if getattr(module, "remap", None) is not None:
        raise ValueError("from_taming: the source remaps indices (remap is set); seedfast returns raw codebook indices")
    if beta is None:
        if not getattr(module, "legacy", True):
            raise ValueError(
                "from_taming: the source has legacy=False (commitment weight beta, codebook weight 1), the reverse "
                "of seedfast's legacy loss; pass beta= explicitly to accept seedfast's weighting"
            )
        beta = float(module.beta)
    return _from_codebook(embedding.weight.detach(), {"beta": beta, **kwargs})
