"""A straightforward SEED tokenizer written from the spec (§3, §4, §6, §7) for the tests.

Plain matmuls, explicit ``-10000`` additive masks, explicit LayerNorm/GELU formulas, the patch
embedding as unfold + matmul, the full distance matrix for the codes. It reads weights from a
state dict by the official key names and depends on nothing in seedfast, so it checks both the
model's arithmetic and its names. Run it in float64 as the oracle.
"""
from __future__ import annotations

import math

import torch

MASKED = -10000.0


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def layer_norm(x, sd, name, eps):
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * sd[name + ".weight"] + sd[name + ".bias"]


def linear(x, sd, name, bias=True):
    y = x @ sd[name + ".weight"].t()
    return y + sd[name + ".bias"] if bias else y


def heads(x, n):
    b, l, c = x.shape
    return x.reshape(b, l, n, c // n).permute(0, 2, 1, 3)


def merge(x):
    b, n, l, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, l, n * d)


def attention(q, k, v, additive_mask=None):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if additive_mask is not None:
        scores = scores + additive_mask
    return torch.softmax(scores, dim=-1) @ v


def eva_block(x, sd, pre, cfg):
    h = layer_norm(x, sd, pre + "norm1", cfg.vit_eps)
    zeros = torch.zeros_like(sd[pre + "attn.q_bias"])
    qkv = h @ sd[pre + "attn.qkv.weight"].t() + torch.cat([sd[pre + "attn.q_bias"], zeros, sd[pre + "attn.v_bias"]])
    q, k, v = qkv.chunk(3, dim=-1)
    a = merge(attention(heads(q, cfg.vit_heads), heads(k, cfg.vit_heads), heads(v, cfg.vit_heads)))
    x = x + linear(a, sd, pre + "attn.proj")
    h = layer_norm(x, sd, pre + "norm2", cfg.vit_eps)
    return x + linear(gelu(linear(h, sd, pre + "mlp.fc1")), sd, pre + "mlp.fc2")


def eva_vit(images, sd, cfg):
    p, c = cfg.patch_size, cfg.vit_width
    b = images.shape[0]
    g = cfg.image_size // p
    patches = images.unfold(2, p, p).unfold(3, p, p)  # [B, 3, g, g, p, p]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, g * g, 3 * p * p)
    w = sd["visual_encoder.patch_embed.proj.weight"].reshape(c, -1)
    x = patches @ w.t() + sd["visual_encoder.patch_embed.proj.bias"]
    x = torch.cat([sd["visual_encoder.cls_token"].expand(b, 1, c), x], dim=1) + sd["visual_encoder.pos_embed"]
    for i in range(cfg.vit_depth):
        x = eva_block(x, sd, f"visual_encoder.blocks.{i}.", cfg)
    return x


def bert_attention(h, context, sd, pre, n_heads, eps, additive_mask=None):
    q = heads(linear(h, sd, pre + "self.query"), n_heads)
    k = heads(linear(context, sd, pre + "self.key"), n_heads)
    v = heads(linear(context, sd, pre + "self.value"), n_heads)
    a = merge(attention(q, k, v, additive_mask))
    return layer_norm(linear(a, sd, pre + "output.dense") + h, sd, pre + "output.LayerNorm", eps)


def causal_mask(n, dtype):
    keep = torch.tril(torch.ones(n, n, dtype=dtype))
    return (1.0 - keep) * MASKED


def qformer_layer(h, image, sd, i, cfg):
    pre = f"Qformer.bert.encoder.layer.{i}."
    h = bert_attention(h, h, sd, pre + "attention.", cfg.qformer_heads, cfg.qformer_eps,
                       causal_mask(h.shape[1], h.dtype))
    if i % cfg.cross_attention_freq == 0:
        h = bert_attention(h, image, sd, pre + "crossattention.", cfg.qformer_heads, cfg.qformer_eps)
    inter = gelu(linear(h, sd, pre + "intermediate_query.dense"))
    return layer_norm(linear(inter, sd, pre + "output_query.dense") + h, sd, pre + "output_query.LayerNorm",
                      cfg.qformer_eps)


def qformer(queries, image, sd, cfg):
    h = layer_norm(queries, sd, "Qformer.bert.embeddings.LayerNorm", cfg.qformer_eps)
    h = h.expand(image.shape[0], -1, -1)
    for i in range(cfg.qformer_layers):
        h = qformer_layer(h, image, sd, i, cfg)
    return h


def causal_embeddings(images, sd, cfg):
    feats = layer_norm(eva_vit(images, sd, cfg), sd, "ln_vision", cfg.ln_vision_eps)
    return qformer(sd["query_tokens"], feats, sd, cfg)


def quantise(causal, sd):
    """``(codes [B, 32], z [B, 32, code_dim])`` from the causal embeddings."""
    z = linear(torch.tanh(linear(causal, sd, "encode_task_layer.0")), sd, "encode_task_layer.2")
    e = sd["quantize.embedding.weight"]
    dist = (z[:, :, None, :] - e[None, None]).pow(2).sum(-1)
    return dist.argmin(-1), z


def encode(images, sd, cfg):
    """``(codes [B, 32], z [B, 32, code_dim])``."""
    return quantise(causal_embeddings(images, sd, cfg), sd)


def timm_block(x, sd, pre, cfg):
    h = layer_norm(x, sd, pre + "norm1", cfg.head_eps)
    q, k, v = linear(h, sd, pre + "attn.qkv").chunk(3, dim=-1)
    a = merge(attention(heads(q, cfg.head_heads), heads(k, cfg.head_heads), heads(v, cfg.head_heads)))
    x = x + linear(a, sd, pre + "attn.proj")
    h = layer_norm(x, sd, pre + "norm2", cfg.head_eps)
    return x + linear(gelu(linear(h, sd, pre + "mlp.fc1")), sd, pre + "mlp.fc2")


def embed_codes(codes, sd):
    e = sd["quantize.embedding.weight"][codes]
    return linear(torch.tanh(linear(e, sd, "decode_task_layer.0")), sd, "decode_task_layer.2")


def head_blocks(x, sd, prefix, cfg):
    for i in range(cfg.head_depth):
        x = timm_block(x, sd, f"{prefix}.{i}.", cfg)
    return x


def generation_head(h, sd, cfg):
    x = head_blocks(h + sd["pos_embed_image"], sd, "blocks_image", cfg)
    x = torch.relu(linear(x, sd, "image_down.0", bias=False))
    x = torch.relu(linear(x, sd, "image_down.2", bias=False))
    x = linear(x, sd, "image_down.4", bias=False)
    return linear(x.flatten(1), sd, "distill_image_proj")


def generation_embedding(codes, sd, cfg):
    return generation_head(embed_codes(codes, sd), sd, cfg)


def text_cls(ids, lengths, sd, cfg):
    """Stage-1 text path: the ``[CLS]`` output ``[B, hidden]``."""
    t = ids.shape[1]
    emb = "Qformer.bert.embeddings."
    x = sd[emb + "word_embeddings.weight"][ids] + sd[emb + "position_embeddings.weight"][:t]
    h = layer_norm(x, sd, emb + "LayerNorm", cfg.qformer_eps)
    keep = (torch.arange(t)[None, :] < lengths[:, None]).to(h.dtype)
    mask = (1.0 - keep)[:, None, None, :] * MASKED
    for i in range(cfg.qformer_layers):
        pre = f"Qformer.bert.encoder.layer.{i}."
        h = bert_attention(h, h, sd, pre + "attention.", cfg.qformer_heads, cfg.qformer_eps, mask)
        inter = gelu(linear(h, sd, pre + "intermediate.dense"))
        h = layer_norm(linear(inter, sd, pre + "output.dense") + h, sd, pre + "output.LayerNorm", cfg.qformer_eps)
    return h[:, 0]


def normalize(x):
    return x / x.norm(dim=-1, keepdim=True)


def smoothed_cross_entropy(logits, smoothing):
    """Targets ``arange(B)``: ``(1 − s)·(−log p_target) + s·mean_k(−log p_k)``, averaged over rows."""
    logp = torch.log_softmax(logits, dim=-1)
    n = logits.shape[0]
    nll = -logp[torch.arange(n), torch.arange(n)]
    return ((1.0 - smoothing) * nll - smoothing * logp.mean(-1)).mean()


def stage1_losses(images, ids, lengths, sd, cfg, smoothing=0.1):
    img = normalize(linear(causal_embeddings(images, sd, cfg)[:, -1], sd, "vision_proj"))
    txt = normalize(linear(text_cls(ids, lengths, sd, cfg), sd, "text_proj"))
    sim = img @ txt.t() / sd["temp"]
    itc = 0.5 * (smoothed_cross_entropy(sim, smoothing) + smoothed_cross_entropy(sim.t(), smoothing))
    return {"itc": itc, "loss": itc}


def stage2_losses(images, target, sd, cfg):
    causal = causal_embeddings(images, sd, cfg)
    codes, z = quantise(causal, sd)
    e = sd["quantize.embedding.weight"][codes]
    vq = (e - z).pow(2).mean() + 0.25 * (e - z).pow(2).mean()
    h = linear(torch.tanh(linear(e, sd, "decode_task_layer.0")), sd, "decode_task_layer.2")
    recon = head_blocks(h + sd["pos_embed"], sd, "blocks", cfg)
    cos = (1.0 - (normalize(recon) * normalize(causal)).sum(-1)).mean()
    mse = (generation_head(h, sd, cfg) - target).pow(2).mean()
    return {"vq": vq, "mse": mse, "cos": cos, "loss": 5.0 * vq + 0.5 * mse + 2.0 * cos}
