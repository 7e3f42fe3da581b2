"""VectorQuantizer against SEED's VectorQuantizer2 written in plain torch (spec §6), its
initialisations, usage statistics, dead-code restart and argument checks."""
from __future__ import annotations

import math

import pytest
import torch

from seedfast.nn import VectorQuantizer, VectorQuantizerOutput

BACKENDS = ["torch", "triton"]


def seed_quantizer2(z, codebook, beta):
    """SEED's VectorQuantizer2 forward (legacy=True) in plain torch, float64 distances."""
    flat = z.reshape(-1, z.shape[-1])
    d = (flat.double().pow(2).sum(1, keepdim=True) + codebook.double().pow(2).sum(1)
         - 2 * flat.double() @ codebook.double().t())
    codes = d.argmin(1)
    e = codebook[codes].reshape(z.shape)
    loss = (e.detach() - z).pow(2).mean() + beta * (e - z.detach()).pow(2).mean()
    z_q = z + (e - z).detach()
    return z_q, codes.reshape(z.shape[:-1]), loss


def clustered_inputs(k, d, shape, *, seed=0, noise=0.01):
    """A codebook and inputs near its codes, so every nearest code is unambiguous."""
    g = torch.Generator().manual_seed(seed)
    codebook = torch.randn(k, d, generator=g)
    n = math.prod(shape)
    target = torch.randint(0, k, (n,), generator=g)
    z = codebook[target] + noise * torch.randn(n, d, generator=g)
    return codebook, z.reshape(*shape, d), target.reshape(shape)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_and_gradients_match_seed_quantizer(backend):
    codebook, z, target = clustered_inputs(50, 16, (3, 32), seed=1)
    vq = VectorQuantizer(50, 16, beta=0.25, backend=backend)
    vq.load_codebook(codebook)
    z_ours = z.clone().requires_grad_()
    out = vq(z_ours)
    assert isinstance(out, VectorQuantizerOutput)
    z_q, codes, loss = out
    assert codes.shape == (3, 32) and codes.dtype == torch.int64 and z_q.shape == z.shape
    assert torch.equal(codes, target)

    e_ref = codebook.clone().requires_grad_()
    z_ref = z.clone().requires_grad_()
    ref_zq, ref_codes, ref_loss = seed_quantizer2(z_ref, e_ref, 0.25)
    assert torch.equal(codes, ref_codes)
    assert torch.allclose(z_q, ref_zq, atol=1e-6)
    assert torch.allclose(loss, ref_loss, rtol=1e-5)

    g = torch.randn(z.shape, generator=torch.Generator().manual_seed(2))
    ours = torch.autograd.grad((z_q * g).sum() + 3.0 * loss, (z_ours, vq.embedding.weight))
    refs = torch.autograd.grad((ref_zq * g).sum() + 3.0 * ref_loss, (z_ref, e_ref))
    for a, b in zip(ours, refs):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_encode_and_codebook_entry(backend):
    codebook, z, target = clustered_inputs(40, 8, (5, 6), seed=3)
    vq = VectorQuantizer(40, 8, backend=backend).eval()
    vq.load_codebook(codebook)
    assert torch.equal(vq.encode(z), target)
    assert torch.equal(vq.get_codebook_entry(target), codebook[target])
    assert torch.equal(vq.get_codebook_entry(target.int()), codebook[target])
    with pytest.raises(TypeError, match="codes must be an int64/int32 tensor, got torch.float32"):
        vq.get_codebook_entry(target.float())


def test_mixed_precision_input_promotes_to_codebook_dtype():
    vq = VectorQuantizer(16, 8, init="normal")
    z = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
    out = vq(z)
    assert out.z_q.dtype == torch.float32
    out.loss.backward()
    assert z.grad.dtype == torch.bfloat16 and vq.embedding.weight.grad.dtype == torch.float32


def test_uniform_init_is_seeds_default():
    k = 64
    w = VectorQuantizer(k, 32).embedding.weight
    assert w.min() >= -1.0 / k and w.max() <= 1.0 / k
    # Spread over the interval, not a constant.
    assert w.min() < -0.9 / k and w.max() > 0.9 / k


def test_normal_init():
    w = VectorQuantizer(512, 32, init="normal").embedding.weight
    assert abs(w.std().item() - 1.0) < 0.05 and abs(w.mean().item()) < 0.05


@pytest.mark.parametrize("n, k", [(100, 16), (5, 16)])
def test_data_init_copies_first_training_batch(n, k):
    vq = VectorQuantizer(k, 4, init="data")
    z = torch.randn(n, 4)
    vq.eval()
    before = vq.embedding.weight.detach().clone()
    vq(z)
    assert torch.equal(vq.embedding.weight, before), "eval mode must not initialise from data"
    vq.train()
    vq(z)
    w = vq.embedding.weight.detach()
    rows = [(w[i] == z).all(1).nonzero().flatten() for i in range(k)]
    assert all(len(r) > 0 for r in rows), "every code must be a row of the first batch"
    if n >= k:
        assert len({r[0].item() for r in rows}) == k, "codes must be distinct rows when the batch has K rows"
    assert bool(vq.data_initialized)
    after_first = w.clone()
    vq(torch.randn(n, 4))
    assert torch.equal(vq.embedding.weight, after_first), "only the first batch initialises"

    fresh = VectorQuantizer(k, 4, init="data")
    fresh.load_state_dict(vq.state_dict())
    fresh(torch.randn(n, 4))
    assert torch.equal(fresh.embedding.weight, after_first), "a loaded data-initialised codebook is kept"
    fresh.reset_parameters()
    assert fresh._awaiting_data_init and not bool(fresh.data_initialized)
    fresh(z)
    assert not torch.equal(fresh.embedding.weight, after_first), "reset_parameters re-arms the data init"


def test_usage_statistics_are_exact_frequencies():
    codebook, z, _ = clustered_inputs(8, 4, (1,), seed=4)
    vq = VectorQuantizer(8, 4, track_usage=True, usage_decay=0.9, usage_window=2)
    vq.load_codebook(codebook)
    assert vq.perplexity.item() == 0.0 and vq.utilisation.item() == 0.0
    assert torch.equal(vq.code_frequencies, torch.zeros(8))

    first = codebook[torch.tensor([0, 0, 0, 1, 2, 2])]
    vq(first)
    p1 = torch.tensor([3, 1, 2, 0, 0, 0, 0, 0]) / 6.0
    assert torch.allclose(vq.code_frequencies, p1, atol=1e-6)
    entropy = -(p1[p1 > 0] * p1[p1 > 0].log()).sum()
    assert torch.allclose(vq.perplexity, entropy.exp(), rtol=1e-5)
    assert vq.utilisation.item() == pytest.approx(3 / 8)

    second = codebook[torch.tensor([5, 5])]
    vq(second)
    p2 = torch.zeros(8)
    p2[5] = 1.0
    expected = (0.1 * 0.9 * p1 + 0.1 * p2) / (1 - 0.9**2)
    assert torch.allclose(vq.code_frequencies, expected, atol=1e-6)
    assert vq.code_frequencies.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert vq.utilisation.item() == pytest.approx(4 / 8)
    vq(second)
    vq(second)
    # Window of 2 steps: only code 5 was chosen in the last two.
    assert vq.utilisation.item() == pytest.approx(1 / 8)
    assert vq.unused_steps.tolist() == [3, 3, 3, 4, 4, 0, 4, 4]

    vq.eval()
    frozen = vq.code_frequencies.clone()
    vq(first)
    assert torch.equal(vq.code_frequencies, frozen), "eval mode must not update statistics"


def test_statistics_need_track_usage():
    vq = VectorQuantizer(8, 4)
    for attr in ("code_frequencies", "perplexity", "utilisation", "unused_steps"):
        with pytest.raises(RuntimeError, match="needs track_usage=True"):
            getattr(vq, attr)
    assert "usage_average" not in vq.state_dict()


@pytest.mark.parametrize("backend", BACKENDS)
def test_dead_codes_restart_from_recent_inputs(backend):
    torch.manual_seed(0)
    live = torch.randn(4, 8)
    dead_init = 100.0 + torch.randn(4, 8)  # far from every input: never chosen
    vq = VectorQuantizer(8, 8, restart_unused_after=2, backend=backend)
    assert vq.track_usage
    vq.load_codebook(torch.cat([live, dead_init]))
    batch = live[torch.tensor([0, 1, 2, 3, 0, 1])] + 0.01 * torch.randn(6, 8)
    vq(batch)
    vq(batch)
    assert torch.equal(vq.embedding.weight[4:], dead_init), "restarted before N unused steps"
    new_batch = torch.randn(6, 8)
    vq(new_batch)
    w = vq.embedding.weight.detach()
    assert torch.equal(w[:4], live), "live codes must not be touched"
    for i in range(4, 8):
        assert (w[i] == new_batch).all(1).any(), f"code {i} is not a vector of the current batch"
    assert (vq.unused_steps[4:] <= 1).all()

    plain = VectorQuantizer(8, 8, track_usage=True, backend=backend)
    plain.load_codebook(torch.cat([live, dead_init]))
    for _ in range(4):
        plain(batch)
    assert torch.equal(plain.embedding.weight[4:], dead_init), "no restart unless asked"


def test_restart_happens_before_quantising_the_batch():
    vq = VectorQuantizer(4, 2, restart_unused_after=1)
    vq.load_codebook(torch.tensor([[0.0, 0.0], [50.0, 50.0], [60.0, 60.0], [70.0, 70.0]]))
    vq(torch.zeros(3, 2))
    z = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    out = vq(z)
    w = vq.embedding.weight.detach()
    assert torch.equal(w[0], torch.zeros(2))
    copied = torch.stack([(z == w[i]).all(1) for i in range(1, 4)]).any(0)
    assert copied.sum() >= 1 and all((z == w[i]).all(1).any() for i in range(1, 4))
    # Rows that became codes are quantised to themselves in this same step.
    assert torch.equal(out.z_q[copied], z[copied])


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(num_codes=0, dim=4), ValueError, "num_codes must be >= 1, got 0"),
        (dict(num_codes=8.0, dim=4), TypeError, "num_codes must be an int, got float"),
        (dict(num_codes=True, dim=4), TypeError, "num_codes must be an int, got bool"),
        (dict(num_codes=8, dim=-1), ValueError, "dim must be >= 1, got -1"),
        (dict(num_codes=8, dim=4, beta=-0.1), ValueError, "beta must be a finite number >= 0"),
        (dict(num_codes=8, dim=4, beta=float("nan")), ValueError, "beta must be a finite number >= 0"),
        (dict(num_codes=8, dim=4, init="kmeans"), ValueError, "init must be one of ('uniform', 'normal', 'data')"),
        (dict(num_codes=8, dim=4, usage_decay=1.0), ValueError, "usage_decay must be in (0, 1), got 1.0"),
        (dict(num_codes=8, dim=4, usage_window=0), ValueError, "usage_window must be >= 1"),
        (dict(num_codes=8, dim=4, restart_unused_after=0), ValueError, "restart_unused_after must be >= 1, got 0"),
        (dict(num_codes=8, dim=4, restart_unused_after=2.5), TypeError, "restart_unused_after must be an int or None"),
        (dict(num_codes=8, dim=4, backend="fast"), ValueError, "backend must be one of"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, words):
    with pytest.raises(exc) as info:
        VectorQuantizer(**kwargs)
    assert words in str(info.value) and "VectorQuantizer" in str(info.value), str(info.value)


def test_bad_inputs_leave_the_codebook_untouched():
    vq = VectorQuantizer(8, 4, init="data", restart_unused_after=1)
    before = vq.embedding.weight.detach().clone()
    with pytest.raises(ValueError, match="last dimension"):
        vq(torch.randn(3, 5))
    with pytest.raises(TypeError, match="z must have dtype"):
        vq(torch.ones(3, 4, dtype=torch.int64))
    assert torch.equal(vq.embedding.weight, before) and vq._awaiting_data_init
    with pytest.raises(ValueError, match=r"codebook must have shape \[8, 4\], got \(8, 5\)"):
        vq.load_codebook(torch.randn(8, 5))
    with pytest.raises(TypeError, match="codebook must be a floating tensor"):
        vq.load_codebook(torch.ones(8, 4, dtype=torch.int64))


def test_loads_seed_and_taming_state_dicts_unchanged():
    weight = torch.randn(16, 4)
    vq = VectorQuantizer(16, 4)
    vq.load_state_dict({"embedding.weight": weight})
    assert torch.equal(vq.codebook, weight)
