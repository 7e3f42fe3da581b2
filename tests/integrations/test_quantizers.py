"""Codebooks of vector-quantize-pytorch and taming-style quantizers in VectorQuantizer: the
same codes as the source (eval mode), and the state-dict mappings."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from seedfast.integrations import (
    from_taming,
    from_vector_quantize_pytorch,
    taming_state_dict,
    vector_quantize_pytorch_state_dict,
)
from seedfast.nn import VectorQuantizer


def _assert_same_codes_up_to_near_ties(codes, ref_codes, z, codebook, tol=1e-5):
    """Codes may differ only where the two codes' float64 distances are within ``tol`` (relative)."""
    assert codes.shape == ref_codes.shape
    flat, ref = codes.reshape(-1), ref_codes.reshape(-1)
    rows = z.reshape(-1, z.shape[-1]).double()
    d = torch.cdist(rows, codebook.double()).pow(2)
    gap = (d.gather(1, flat[:, None]) - d.gather(1, ref[:, None])).abs().squeeze(1)
    differ = flat != ref
    assert (gap[differ] <= tol * d.max()).all(), f"{differ.sum()} codes differ beyond near-ties"
    assert differ.float().mean() < 0.01


@pytest.fixture
def vqp():
    return pytest.importorskip("vector_quantize_pytorch", reason="vector-quantize-pytorch is not installed")


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(learnable_codebook=True, ema_update=False), dict(kmeans_init=True)],
    ids=["ema", "learnable", "kmeans-init"],
)
def test_vector_quantize_pytorch_parity(vqp, kwargs):
    torch.manual_seed(0)
    source = vqp.VectorQuantize(dim=16, codebook_size=64, **kwargs)
    # Train mode for a few steps moves an EMA codebook (and runs a pending k-means init).
    for _ in range(2):
        source(torch.randn(2, 40, 16))
    source.eval()
    x = torch.randn(3, 50, 16)
    with torch.no_grad():
        quantized, ref_codes, _ = source(x)
    ours = from_vector_quantize_pytorch(source).eval()
    assert isinstance(ours, VectorQuantizer) and ours.num_codes == 64 and ours.dim == 16
    assert torch.equal(ours.codebook, source._codebook.embed[0])
    out = ours(x)
    _assert_same_codes_up_to_near_ties(out.codes, ref_codes, x, ours.codebook)
    same = out.codes == ref_codes
    assert torch.allclose(out.z_q[same], quantized[same], atol=1e-6)
    # The state-dict route gives the same layer.
    layer = VectorQuantizer(64, 16)
    layer.load_state_dict(vector_quantize_pytorch_state_dict(source.state_dict()))
    assert torch.equal(layer.encode(x), out.codes)


def test_vector_quantize_pytorch_kwargs_pass_through(vqp):
    ours = from_vector_quantize_pytorch(vqp.VectorQuantize(dim=8, codebook_size=16), beta=0.5, track_usage=True)
    assert ours.beta == 0.5 and ours.track_usage


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(heads=2, separate_codebook_per_head=True), "heads=2"),
        (dict(use_cosine_sim=True), "use_cosine_sim=True"),
        (dict(codebook_dim=8), "codebook_dim != dim"),
        (dict(kmeans_init=True), "uninitialised codebook"),
    ],
)
def test_vector_quantize_pytorch_unsupported_configs(vqp, kwargs, words):
    source = vqp.VectorQuantize(dim=16, codebook_size=32, **kwargs)
    with pytest.raises(ValueError) as info:
        from_vector_quantize_pytorch(source)
    assert words in str(info.value), str(info.value)


def test_vector_quantize_pytorch_wrong_module(vqp):
    with pytest.raises(TypeError, match="must be a vector_quantize_pytorch.VectorQuantize, got Linear"):
        from_vector_quantize_pytorch(nn.Linear(2, 2))


def test_vector_quantize_pytorch_state_dict_mapping():
    embed = torch.randn(3, 10, 4)
    state = {"vq._codebook.embed": embed, "vq._codebook.cluster_size": torch.ones(3, 10)}
    mapped = vector_quantize_pytorch_state_dict(state, prefix="vq.", codebook_index=2)
    assert list(mapped) == ["embedding.weight"] and torch.equal(mapped["embedding.weight"], embed[2])
    with pytest.raises(ValueError, match="holds 3 separate codebooks; pick one with codebook_index"):
        vector_quantize_pytorch_state_dict(state, prefix="vq.")
    with pytest.raises(ValueError, match=r"codebook_index must be in \[0, 3\), got 3"):
        vector_quantize_pytorch_state_dict(state, prefix="vq.", codebook_index=3)
    with pytest.raises(KeyError, match="no '_codebook.embed'"):
        vector_quantize_pytorch_state_dict(state)
    with pytest.raises(ValueError, match=r"must have shape \[H, K, D\], got \(10, 4\)"):
        vector_quantize_pytorch_state_dict({"_codebook.embed": embed[0]})


# ---------------------------------------------------------------------------------------------
# taming-style quantizers


class SeedQuantizer2(nn.Module):
    """A taming-style VectorQuantizer2 with SEED's settings (spec §6), in plain torch, channels last."""

    def __init__(self, n_e, e_dim, beta, legacy=True, remap=None):
        super().__init__()
        self.n_e, self.e_dim, self.beta, self.legacy, self.remap = n_e, e_dim, beta, legacy, remap
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

    def forward(self, z):
        flat = z.reshape(-1, self.e_dim)
        e = self.embedding.weight
        d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()
        codes = d.argmin(1)
        z_q = self.embedding(codes).view(z.shape)
        if self.legacy:
            loss = (z_q.detach() - z).pow(2).mean() + self.beta * (z_q - z.detach()).pow(2).mean()
        else:
            loss = self.beta * (z_q.detach() - z).pow(2).mean() + (z_q - z.detach()).pow(2).mean()
        return z + (z_q - z).detach(), loss, codes.view(z.shape[:-1])


def test_taming_style_parity_codes_loss_and_gradients():
    torch.manual_seed(0)
    source = SeedQuantizer2(50, 8, beta=0.25)
    source.embedding.weight.data.normal_()
    ours = from_taming(source)
    assert ours.beta == 0.25
    z = (source.embedding.weight[torch.randint(0, 50, (4, 9))] + 0.05 * torch.randn(4, 9, 8)).detach()
    z_src, z_ours = z.clone().requires_grad_(), z.clone().requires_grad_()
    ref_zq, ref_loss, ref_codes = source(z_src)
    out = ours(z_ours)
    assert torch.equal(out.codes, ref_codes)
    assert torch.allclose(out.z_q, ref_zq) and torch.allclose(out.loss, ref_loss, rtol=1e-6)
    ref_grads = torch.autograd.grad(ref_zq.sum() + ref_loss, (z_src, source.embedding.weight))
    grads = torch.autograd.grad(out.z_q.sum() + out.loss, (z_ours, ours.codebook))
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    # The state dict loads as it is, with or without the model prefix.
    layer = VectorQuantizer(50, 8)
    layer.load_state_dict(source.state_dict())
    assert torch.equal(layer.codebook, source.embedding.weight)
    mapped = taming_state_dict({f"quantize.{k}": v for k, v in source.state_dict().items()}, prefix="quantize.")
    assert torch.equal(mapped["embedding.weight"], source.embedding.weight)


def test_taming_non_legacy_needs_explicit_beta():
    source = SeedQuantizer2(10, 4, beta=0.25, legacy=False)
    with pytest.raises(ValueError, match="legacy=False.*pass beta= explicitly"):
        from_taming(source)
    assert from_taming(source, beta=1.0).beta == 1.0


def test_taming_refusals():
    with pytest.raises(ValueError, match="remaps indices"):
        from_taming(SeedQuantizer2(10, 4, beta=0.25, remap="used_codes.npy"))
    with pytest.raises(TypeError, match="must have an nn.Embedding named 'embedding', got Linear"):
        from_taming(nn.Linear(2, 2))
    with pytest.raises(KeyError, match="no 'q.embedding.weight'"):
        taming_state_dict({"embedding.weight": torch.randn(4, 2)}, prefix="q.")
    with pytest.raises(ValueError, match=r"must have shape \[K, D\]"):
        taming_state_dict({"embedding.weight": torch.randn(4)})


def test_real_taming_parity():
    quantize = pytest.importorskip("taming.modules.vqvae.quantize", reason="taming-transformers is not installed")
    torch.manual_seed(0)
    source = quantize.VectorQuantizer2(40, 8, beta=0.25, legacy=True).eval()
    source.embedding.weight.data.normal_()
    z = torch.randn(2, 8, 5, 5)
    z_q, loss, (_, _, codes) = source(z)
    out = from_taming(source)(z.permute(0, 2, 3, 1))
    assert torch.equal(out.codes.reshape(-1), codes.reshape(-1))
    assert torch.allclose(out.z_q.permute(0, 3, 1, 2), z_q) and torch.allclose(out.loss, loss)
