"""The Causal Q-Former (spec §4): a 12-layer post-LN BERT whose 32 learned queries attend to
each other causally and, every second layer, to the image tokens.

Module names reproduce the official ``Qformer.bert.*`` state-dict keys (``embeddings.LayerNorm``,
``encoder.layer.{i}.attention.self.query``, ``...crossattention...``, ``intermediate_query``,
``output_query``, and for the stage-1 text path ``embeddings.word_embeddings``,
``embeddings.position_embeddings``, ``intermediate``, ``output``).

Every attention is a :class:`seedfast.nn.QFormerAttention` (the module users get) in its
``"bert"`` layout, registered as ``attention.self`` / ``crossattention.self`` so that its
``query``/``key``/``value`` keep the official names; its output projection is BERT's
``output.dense``, applied with the residual and LayerNorm. Each calls one function with the
signature of :func:`seedfast.ops.qformer_attention` (``q, k, v`` as ``[B, H, L, D]``, keyword
``causal`` and ``kv_lens``); :attr:`CausalQFormer.attend` sets it on all of them, so the fused
op, an explicit-mask SDPA or a benchmark's eager peer run the same model.

Deviations from the official code (``qformer_causual.py``):

* Masks are exact (``-inf``), not ``-10000`` additive; identical results since
  ``exp(-10000)`` is 0 in every dtype (see :mod:`seedfast.ops.qformer_attention`). The mask is
  never materialised, and the causal mode is the explicit ``causal=True`` of the query path,
  not the official "exactly 32 query embeddings" switch.
* **No attention-probability dropout.** The official model drops attention probabilities
  with p = 0.1 in train mode; a fused attention kernel never forms the probability matrix, so
  this dropout cannot run inside it. Hidden-state dropout (p = 0.1 after the embedding
  LayerNorm and before every residual LayerNorm) is kept. Inference is unaffected.
* The queries are identical for every image, so while the batch is still 1 (the embedding
  LayerNorm and layer 0's self-attention, in eval mode) they are computed once and broadcast
  to the image batch at the first cross-attention. In train mode the queries are expanded to
  the batch before the embedding dropout, so every image draws its own dropout mask.
* Image keys/values are projected straight from the ``[B, Lv, Cv]`` features into a
  ``[B, H, Lv, D]`` view (no copies, no per-layer mask tensors); ``apply_chunking_to_forward``
  is not used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seedfast.nn.qformer_attention import AttentionFn, QFormerAttention
from seedfast.ops import qformer_attention, qformer_attention_reference

ATTENTION_IMPLS: dict[str, AttentionFn] = {
    # The fused op: Triton on CUDA tensors, the explicit-mask reference elsewhere.
    "fused": qformer_attention,
    # SDPA with an explicit boolean mask everywhere (the "SDPA everywhere" baseline).
    "sdpa": qformer_attention_reference,
}


class BertResidualOutput(nn.Module):
    """``LayerNorm(dropout(dense(x)) + residual)`` (BERT's ``*Output`` modules)."""

    def __init__(self, in_features: int, hidden: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertIntermediate(nn.Module):
    """``GELU(dense(x))`` with the exact (erf) GELU."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertAttention(nn.Module):
    """Multi-head attention (``self``) followed by the residual output (``output``).

    Parameters
    ----------
    hidden, num_heads : int
    kv_width : int
        Width of the key/value source: ``hidden`` for self-attention, the ViT width for
        cross-attention.
    eps, dropout : float
    attention : callable
        The attention function (see :data:`AttentionFn`).
    """

    def __init__(self, hidden: int, kv_width: int, num_heads: int, eps: float, dropout: float,
                 attention: AttentionFn) -> None:
        super().__init__()
        self.self = QFormerAttention(hidden, num_heads, kv_dim=kv_width, layout="bert", attention=attention)
        self.output = BertResidualOutput(hidden, hidden, eps, dropout)

    def forward(
        self,
        hidden: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        causal: bool = False,
        kv_lens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``hidden [b, Lq, hidden]`` attends to ``context [B, Lk, kv_width]`` (None: to itself).

        ``b`` may be 1 with ``B > 1`` (shared queries): the queries are then broadcast, and the
        result has batch ``B``.
        """
        return self.output(self.self(hidden, context, causal=causal, kv_lens=kv_lens), hidden)


class QFormerLayer(nn.Module):
    """One Q-Former layer: causal self-attention, optional cross-attention, query FFN
    (and, for the stage-1 text path, bidirectional self-attention and the text FFN).

    Parameters
    ----------
    hidden, num_heads, intermediate : int
    eps, dropout : float
    encoder_width : int or None
        ViT width for a layer with cross-attention; None for a layer without.
    text_ffn : bool
        Build the text FFN (``intermediate``/``output``), used only by the text path.
    attention : callable
        The attention function of both attentions (see :data:`AttentionFn`).
    """

    def __init__(
        self,
        *,
        hidden: int,
        num_heads: int,
        intermediate: int,
        eps: float,
        dropout: float,
        encoder_width: int | None,
        text_ffn: bool,
        attention: AttentionFn,
    ) -> None:
        super().__init__()
        self.attention = BertAttention(hidden, hidden, num_heads, eps, dropout, attention)
        self.crossattention = (
            BertAttention(hidden, encoder_width, num_heads, eps, dropout, attention)
            if encoder_width is not None else None
        )
        self.intermediate_query = BertIntermediate(hidden, intermediate)
        self.output_query = BertResidualOutput(intermediate, hidden, eps, dropout)
        if text_ffn:
            self.intermediate = BertIntermediate(hidden, intermediate)
            self.output = BertResidualOutput(intermediate, hidden, eps, dropout)

    def forward_queries(self, h: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """``h [b, Lq, hidden]`` (b = 1 or B) → ``[b or B, Lq, hidden]``."""
        h = self.attention(h, causal=True)
        if self.crossattention is not None:
            h = self.crossattention(h, image_embeds)
        return self.output_query(self.intermediate_query(h), h)

    def forward_text(self, h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``h [B, T, hidden]`` with keys ``>= lengths[b]`` masked → ``[B, T, hidden]``."""
        h = self.attention(h, kv_lens=lengths)
        return self.output(self.intermediate(h), h)


class QFormerEmbeddings(nn.Module):
    """``LayerNorm`` + dropout for the queries; word + absolute position embeddings for text.

    Parameters
    ----------
    hidden : int
    eps, dropout : float
    vocab_size, max_positions : int or None
        Both given: build the text embeddings (stage-1 training only).
    """

    def __init__(
        self, hidden: int, eps: float, dropout: float, vocab_size: int | None, max_positions: int | None
    ) -> None:
        super().__init__()
        if vocab_size is not None and max_positions is not None:
            self.word_embeddings = nn.Embedding(vocab_size, hidden)
            self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)


class CausalQFormer(nn.Module):
    """The Q-Former body, named as the official ``Qformer`` (``bert.embeddings``, ``bert.encoder.layer``).

    Parameters
    ----------
    hidden, num_layers, num_heads, intermediate : int
        768 / 12 / 12 / 3072 in SEED.
    encoder_width : int
        Width of the image features (1408).
    cross_attention_freq : int
        Layers ``i`` with ``i % cross_attention_freq == 0`` cross-attend to the image.
    eps, dropout : float
        LayerNorm epsilon (1e-12) and hidden dropout (0.1, train mode only).
    vocab_size, max_positions : int or None
        Given: build the stage-1 text path (embeddings and a text FFN per layer).
    attention : callable, optional
        The attention function (see :data:`AttentionFn`); default the fused
        :func:`seedfast.ops.qformer_attention`. Also settable later through :attr:`attend`.
    """

    def __init__(
        self,
        *,
        hidden: int,
        num_layers: int,
        num_heads: int,
        intermediate: int,
        encoder_width: int,
        cross_attention_freq: int,
        eps: float,
        dropout: float,
        vocab_size: int | None = None,
        max_positions: int | None = None,
        attention: AttentionFn = qformer_attention,
    ) -> None:
        super().__init__()
        text = vocab_size is not None and max_positions is not None
        layers = nn.ModuleList(
            QFormerLayer(
                hidden=hidden,
                num_heads=num_heads,
                intermediate=intermediate,
                eps=eps,
                dropout=dropout,
                encoder_width=encoder_width if i % cross_attention_freq == 0 else None,
                text_ffn=text,
                attention=attention,
            )
            for i in range(num_layers)
        )
        # Nested containers only to reproduce the official key prefix ``bert.encoder.layer``.
        self.bert = nn.ModuleDict({
            "embeddings": QFormerEmbeddings(hidden, eps, dropout, vocab_size, max_positions),
            "encoder": nn.ModuleDict({"layer": layers}),
        })
        self.has_text = text
        self._attend = attention

    @property
    def attend(self) -> AttentionFn:
        """The attention function of every layer; assigning it sets it on all of them."""
        return self._attend

    @attend.setter
    def attend(self, fn: AttentionFn) -> None:
        self._attend = fn
        for module in self.modules():
            if isinstance(module, QFormerAttention):
                module.attend = fn

    @property
    def embeddings(self) -> QFormerEmbeddings:
        """``bert.embeddings``."""
        return self.bert["embeddings"]

    @property
    def layers(self) -> nn.ModuleList:
        """``bert.encoder.layer``."""
        return self.bert["encoder"]["layer"]

    def forward(self, query_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """Run the queries through every layer (the tokenizer's path).

        Parameters
        ----------
        query_embeds : Tensor ``[1 or B, Lq, hidden]``
            The learned query tokens (SEED: ``query_tokens [1, 32, 768]``, shared by all images).
        image_embeds : Tensor ``[B, Lv, encoder_width]``
            ``ln_vision`` output, same dtype as the weights.

        Returns
        -------
        Tensor ``[B, Lq, hidden]``: the causal embeddings (``last_hidden_state``).
        """
        batch = image_embeds.shape[0]
        emb = self.embeddings
        h = emb.LayerNorm(query_embeds)
        if self.training and emb.dropout.p > 0:
            # Each image gets its own dropout mask, as in the official batched forward.
            h = h.expand(batch, -1, -1)
        h = emb.dropout(h)
        for layer in self.layers:
            h = layer.forward_queries(h, image_embeds)
        return h.expand(batch, -1, -1)

    def forward_text(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The stage-1 text path: bidirectional BERT over right-padded token ids.

        Parameters
        ----------
        input_ids : Tensor ``[B, T]``, int64, ``T <= max_positions``
            BERT ids, ``[CLS]`` first, padded on the right.
        lengths : Tensor ``[B]``, integer
            Number of real tokens per row (``attention_mask.sum(1)``); keys at or after it are masked.

        Returns
        -------
        Tensor ``[B, T, hidden]``; the text feature is ``[:, 0]``.

        Raises
        ------
        RuntimeError
            The text path was not built (``vocab_size``/``max_positions`` not given).
        ValueError
            ``T`` exceeds the number of position embeddings.
        """
        if not self.has_text:
            raise RuntimeError("CausalQFormer.forward_text: this Q-Former was built without the text path "
                               "(build it with vocab_size and max_positions, i.e. training_heads=True)")
        emb = self.embeddings
        t = input_ids.shape[1]
        if t > emb.position_embeddings.num_embeddings:
            raise ValueError(f"CausalQFormer.forward_text: input_ids has {t} positions, at most "
                             f"{emb.position_embeddings.num_embeddings} are supported")
        x = emb.word_embeddings(input_ids) + emb.position_embeddings.weight[:t]
        h = emb.dropout(emb.LayerNorm(x))
        for layer in self.layers:
            h = layer.forward_text(h, lengths)
        return h
