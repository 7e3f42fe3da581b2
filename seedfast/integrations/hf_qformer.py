"""Run a Hugging Face Q-Former's attention through :func:`seedfast.ops.qformer_attention`.

``patch_qformer_attention(model)`` finds every Q-Former attention module in ``model``
(``Blip2QFormerMultiHeadAttention``, ``InstructBlipQFormerMultiHeadAttention``,
``InstructBlipVideoQFormerMultiHeadAttention``: self- and cross-attention of
``Blip2QFormerModel``, ``Blip2ForConditionalGeneration``, InstructBLIP, ...) and replaces its
``forward`` on that instance, keeping its own ``query``/``key``/``value`` projections and
weights. Nothing global is changed: not the class, not the config, not transformers'
attention registry.

Masks. transformers hands each layer a 4-D mask ``[B, 1, Lq, Lk]`` (or none): additive floats
(0 = keep, a large negative = masked) under ``attn_implementation="eager"``, booleans (True =
keep) under ``"sdpa"``, a ``BlockMask`` under ``"flex_attention"``. The patch reads a mask
whose keep-pattern is "all keys" (then no mask), "keys ``< kv_lens[b]``", "keys ``j <= i``"
or both — padding at the end and SEED's causal query mask — as the op's ``kv_lens`` /
``causal``, with one host synchronisation per distinct mask tensor (layers share the mask
object, so once per forward, not per layer). An additive mask counts as that pattern when its
masked entries are ``<= -1e4`` (SEED adds −10000, transformers the dtype's minimum): their
softmax weight, ``exp(-1e4)``, is 0 in every dtype.

Everything else calls the module's original forward, with a warning naming the reason once
per patch and reason (or a ``ValueError`` with ``on_unsupported="error"``): other mask
patterns (left padding, arbitrary biases, a ``BlockMask``), a query row that sees no key (the
original averages all values there; the op returns zeros), attention dropout in training
mode (the op has none), ``output_attentions=True`` (the op returns no weights), query and
key batches that differ. Under ``torch.compile`` a call with a mask runs the original forward
without a warning, since reading the mask's pattern would break the graph; calls without a
mask (sdpa without padding) run the op.
"""
from __future__ import annotations

import importlib
import types
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from seedfast.ops import qformer_attention
from seedfast.ops._common import BACKENDS

# Additive mask entries at or below this are "masked": exp(-1e4) underflows to 0 in fp16,
# bf16, fp32 and fp64 alike.
MASKED_AT_OR_BELOW = -1e4
_ON_UNSUPPORTED = ("warn", "error")
# What the patched forward reads from each module (transformers 5.x names).
_REQUIRED_ATTRIBUTES = ("query", "key", "value", "num_attention_heads", "attention_head_size", "scaling",
                        "attention_dropout")
_TARGET_CLASSES = (
    ("transformers.models.blip_2.modeling_blip_2", "Blip2QFormerMultiHeadAttention"),
    ("transformers.models.instructblip.modeling_instructblip", "InstructBlipQFormerMultiHeadAttention"),
    ("transformers.models.instructblipvideo.modeling_instructblipvideo", "InstructBlipVideoQFormerMultiHeadAttention"),
)


class QFormerPatchWarning(UserWarning):
    """A patched Q-Former attention fell back to transformers' own attention."""


def _qformer_attention_classes() -> tuple[type, ...]:
    found = []
    for module_name, class_name in _TARGET_CLASSES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        cls = getattr(module, class_name, None)
        if cls is not None:
            found.append(cls)
    return tuple(found)


@dataclass(frozen=True)
class MaskPattern:
    """A mask read as the op's arguments.

    Attributes
    ----------
    causal : bool
    kv_lens : Tensor ``[B]`` int64 or None
        None when every key is visible.
    """

    causal: bool
    kv_lens: torch.Tensor | None


def read_mask(mask: torch.Tensor | None, batch: int, lq: int, lk: int) -> MaskPattern | str:
    """Read a transformers attention mask as ``causal`` / ``kv_lens``, or say why it cannot be.

    Parameters
    ----------
    mask : Tensor ``[B or 1, H or 1, Lq or 1, Lk]``, bool (True = keep) or floating (additive), or None
    batch, lq, lk : int
        The attention's batch size and query / key lengths.

    Returns
    -------
    MaskPattern
        When the mask keeps exactly "keys ``j < kv_lens[b]``", optionally also ``j <= i``, and
        every query row keeps at least one key.
    str
        The reason it cannot be read that way.

    Raises
    ------
    Nothing for a mask it cannot read: it returns the reason instead.

    Notes
    -----
    One host synchronisation (``.tolist()`` of a few flags) per tensor mask.
    """
    if mask is None:
        return MaskPattern(causal=False, kv_lens=None)
    if not isinstance(mask, torch.Tensor):
        return f"a {type(mask).__name__} mask (only tensor masks can be read)"
    if mask.dim() != 4 or mask.shape[-1] != lk or mask.shape[-2] not in (1, lq) or mask.shape[0] not in (1, batch):
        return f"a mask of shape {tuple(mask.shape)} (expected [{batch} or 1, H or 1, {lq} or 1, {lk}])"
    if mask.dtype == torch.bool:
        keep = mask
        values_ok = torch.ones((), dtype=torch.bool, device=mask.device)
    elif mask.is_floating_point():
        keep = mask == 0
        values_ok = (keep | (mask <= MASKED_AT_OR_BELOW)).all()
    else:
        return f"a mask of dtype {mask.dtype}"
    keep = keep.expand(batch, keep.shape[1], lq, lk)
    heads_agree = (keep == keep[:, :1]).all()
    keep = keep[:, 0]
    lens = keep.any(1).sum(-1)
    j = torch.arange(lk, device=mask.device)
    prefix = j[None, None, :] < lens[:, None, None]
    lower = (j[None, :] <= torch.arange(lq, device=mask.device)[:, None])[None]
    is_prefix = (keep == prefix).all()
    is_causal = (keep == (prefix & lower)).all()
    sees_a_key = keep.any(-1).all()
    all_keys = (lens == lk).all()
    values_ok, heads_agree, is_prefix, is_causal, sees_a_key, all_keys = torch.stack(
        [values_ok, heads_agree, is_prefix, is_causal, sees_a_key, all_keys]
    ).tolist()
    if not values_ok:
        return "an additive mask with entries that are neither 0 nor <= -1e4"
    if not heads_agree:
        return "a mask that differs between heads"
    if not (is_prefix or is_causal):
        return "a mask that is not 'keys < kv_lens[b]' optionally with 'j <= i' (left padding?)"
    if not sees_a_key:
        return "a query row that sees no key (the original averages all values there, the op returns zeros)"
    return MaskPattern(causal=not is_prefix, kv_lens=None if all_keys else lens)


@dataclass
class QFormerAttentionPatch:
    """The handle :func:`patch_qformer_attention` returns.

    Attributes
    ----------
    modules : tuple of nn.Module
        The patched attention modules, in ``model.modules()`` order.
    backend : str
        Passed to :func:`seedfast.ops.qformer_attention`.
    on_unsupported : {"warn", "error"}
    """

    modules: tuple[nn.Module, ...]
    backend: str
    on_unsupported: str
    _warned: set[str] = field(default_factory=set, repr=False)
    # Masks seen lately: id → (weak reference, version, reading). Layers share one mask
    # object per forward, so a handful of entries serve every layer.
    _mask_cache: dict[int, tuple[weakref.ref, int, MaskPattern | str]] = field(default_factory=dict, repr=False)

    def remove(self) -> None:
        """Restore every patched module's original forward."""
        for module in self.modules:
            if "forward" in vars(module):
                del module.forward
            vars(module).pop("_seedfast_qformer_patch", None)
        self._mask_cache.clear()

    def _read(self, mask: torch.Tensor | None, batch: int, lq: int, lk: int) -> MaskPattern | str:
        if mask is None or not isinstance(mask, torch.Tensor):
            return read_mask(mask, batch, lq, lk)
        key = id(mask)
        cached = self._mask_cache.get(key)
        if cached is not None and cached[0]() is mask and cached[1] == mask._version:
            return cached[2]
        reading = read_mask(mask, batch, lq, lk)
        if len(self._mask_cache) >= 8:
            self._mask_cache.clear()
        self._mask_cache[key] = (weakref.ref(mask), mask._version, reading)
        return reading

    def _unsupported(self, reason: str) -> None:
        message = (f"patch_qformer_attention: {reason}; this call runs transformers' own attention "
                   "instead of seedfast.ops.qformer_attention")
        if self.on_unsupported == "error":
            raise ValueError(message)
        if reason not in self._warned:
            self._warned.add(reason)
            warnings.warn(message, QFormerPatchWarning, stacklevel=3)


def _patched_forward(patch: QFormerAttentionPatch, original: Callable) -> Callable:
    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, **kwargs):
        def fall_back(reason: str | None):
            if reason is not None:
                patch._unsupported(reason)
            return original(hidden_states, attention_mask=attention_mask, encoder_hidden_states=encoder_hidden_states,
                            encoder_attention_mask=encoder_attention_mask, **kwargs)

        cross = encoder_hidden_states is not None
        source = encoder_hidden_states if cross else hidden_states
        mask = encoder_attention_mask if cross else attention_mask
        if kwargs.get("output_attentions"):
            return fall_back("output_attentions=True (the op returns no attention weights)")
        if self.training and self.attention_dropout > 0:
            return fall_back("attention dropout in training mode (the op has no dropout)")
        if source.shape[0] != hidden_states.shape[0]:
            return fall_back("query and key batches differ")
        if mask is not None and torch.compiler.is_compiling():
            return fall_back(None)
        b, lq, _ = hidden_states.shape
        lk = source.shape[1]
        reading = patch._read(mask, b, lq, lk)
        if isinstance(reading, str):
            return fall_back(reading)
        heads, head_dim = self.num_attention_heads, self.attention_head_size
        q = self.query(hidden_states).view(b, lq, heads, head_dim).transpose(1, 2)
        k = self.key(source).view(b, lk, heads, head_dim).transpose(1, 2)
        v = self.value(source).view(b, lk, heads, head_dim).transpose(1, 2)
        out = qformer_attention(q, k, v, causal=reading.causal, kv_lens=reading.kv_lens, scale=self.scaling,
                                backend=patch.backend)
        return out.transpose(1, 2).reshape(b, lq, heads * head_dim), None

    return forward


def patch_qformer_attention(
    model: nn.Module, *, backend: str = "auto", on_unsupported: str = "warn"
) -> QFormerAttentionPatch:
    """Make every Q-Former self- and cross-attention in ``model`` run :func:`seedfast.ops.qformer_attention`.

    Parameters
    ----------
    model : nn.Module
        A transformers model holding Q-Former attention modules (``Blip2QFormerModel``,
        ``Blip2Model``, ``Blip2ForConditionalGeneration``, the InstructBLIP models, ...).
    backend : {"auto", "triton", "torch"}
        Passed to the op.
    on_unsupported : {"warn", "error"}
        What a call the op cannot serve does: ``"warn"`` runs the module's original forward
        and warns once per reason (:class:`QFormerPatchWarning`); ``"error"`` raises
        ``ValueError``. See the module docstring for the cases.

    Returns
    -------
    QFormerAttentionPatch
        Lists the patched modules; ``.remove()`` undoes the patch.

    Raises
    ------
    TypeError
        ``model`` is not an ``nn.Module``.
    ValueError
        ``on_unsupported`` or ``backend`` is unknown, ``model`` holds no Q-Former attention,
        a module in it is already patched, or the installed transformers structures the
        attention differently from 5.x.
    ImportError
        transformers is not installed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch_qformer_attention: model must be a torch.nn.Module, got {type(model).__name__}")
    if on_unsupported not in _ON_UNSUPPORTED:
        raise ValueError(f"patch_qformer_attention: on_unsupported must be one of {_ON_UNSUPPORTED}, "
                         f"got {on_unsupported!r}")
    if backend not in BACKENDS:
        raise ValueError(f"patch_qformer_attention: backend must be one of {BACKENDS}, got {backend!r}")
    classes = _qformer_attention_classes()
    if not classes:
        raise ImportError("patch_qformer_attention: transformers with BLIP-2 is not installed")
    targets = tuple(m for m in model.modules() if isinstance(m, classes))
    if not targets:
        names = ", ".join(c.__name__ for c in classes)
        raise ValueError(f"patch_qformer_attention: {type(model).__name__} holds no Q-Former attention "
                         f"module ({names})")
    missing = sorted({attr for m in targets for attr in _REQUIRED_ATTRIBUTES if not hasattr(m, attr)})
    if missing:
        import transformers

        raise ValueError(
            f"patch_qformer_attention: the Q-Former attention of transformers {transformers.__version__} lacks "
            f"{missing}; the patch follows the structure of transformers 5.x (tested with 5.24)"
        )
    patched = [m for m in targets if "_seedfast_qformer_patch" in vars(m)]
    if patched:
        raise ValueError(f"patch_qformer_attention: {len(patched)} module(s) of {type(model).__name__} are already "
                         "patched; call .remove() on the earlier patch first")
    patch = QFormerAttentionPatch(modules=targets, backend=backend, on_unsupported=on_unsupported)
    for module in targets:
        original = module.forward
        module.forward = types.MethodType(_patched_forward(patch, original), module)
        module._seedfast_qformer_patch = patch
    return patch
