"""qformer_attention: the Triton flash-attention kernels (interpreted on CPU) against the torch
reference in the same precision and a float64 oracle, on SEED's shapes scaled down in batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from seedfast.kernels import qformer_attention as kqa
from seedfast.ops import qformer_attention, qformer_attention_reference
from seedfast.ops.qformer_attention import attention_mask
from tests.accuracy import assert_within_baseline
from tests.aot import aot_compile

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# The floor absorbs baselines that happen to be near exact (fp32: rounding of the exp/log).
FLOOR = {torch.float32: 2e-6, torch.float16: 1e-5, torch.bfloat16: 1e-4}


def _ids(dtype):
    return str(dtype).removeprefix("torch.")


def _inputs(b, h, lq, lk, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v, grad_out = (torch.randn(b, h, n, d, generator=g) for n in (lq, lk, lk, lq))
    # Scores of a few units, as in trained attention, so the softmax is neither flat nor one-hot.
    q = q * 1.5
    return [x.to(device=device, dtype=dtype) for x in (q, k, v, grad_out)]


def _lens(values, device, dtype=torch.int64):
    return None if values is None else torch.tensor(values, dtype=dtype, device=device)


def _forward_backward(q, k, v, grad_out, **kw):
    """Output and (dq, dk, dv) of qformer_attention on leaf copies of q, k, v."""
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = qformer_attention(q, k, v, **kw)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    return out.detach(), grads


def _check_against_oracle(q, k, v, grad_out, *, causal, kv_lens, scale=None):
    """Kernel error ≤ 2 × (same-precision reference error) + floor, for the output and each gradient."""
    out, grads = _forward_backward(q, k, v, grad_out, causal=causal, kv_lens=kv_lens, scale=scale, backend="triton")
    b_out, b_grads = _forward_backward(q, k, v, grad_out, causal=causal, kv_lens=kv_lens, scale=scale, backend="torch")
    cpu64 = [x.detach().cpu().double() for x in (q, k, v, grad_out)]
    lens_cpu = kv_lens.cpu() if kv_lens is not None else None
    o_out, o_grads = _forward_backward(*cpu64, causal=causal, kv_lens=lens_cpu, scale=scale, backend="torch")
    floor = FLOOR[q.dtype]
    assert out.dtype == q.dtype and out.shape == q.shape
    assert_within_baseline(out, b_out, o_out, floor=floor, what="out")
    for name, g, bg, og, x in zip(("dq", "dk", "dv"), grads, b_grads, o_grads, (q, k, v)):
        assert g.dtype == x.dtype and g.shape == x.shape
        assert_within_baseline(g, bg, og, floor=floor, what=name)
    return out, grads


# (B, H, Lq, Lk, D, causal, kv_lens): SEED's attention shapes with a small batch, then odd ones.
SHAPES = {
    "qformer-self-32": (2, 12, 32, 32, 64, True, None),
    "qformer-joint-64-lens": (3, 2, 64, 64, 64, True, [64, 40, 33]),
    "qformer-cross-257-lens": (2, 2, 32, 257, 64, False, [257, 100]),
    "eva-257x257-d88": (1, 2, 257, 257, 88, False, None),
    "L1-causal": (2, 1, 1, 1, 32, True, None),
    "Lq33<Lk70-causal-lens0": (2, 2, 33, 70, 16, True, [0, 50]),
    "Lq70>Lk33-causal-lens-clamped": (2, 1, 70, 33, 32, True, [500, -4]),
    "d128-lens-between": (2, 1, 48, 96, 128, False, [1, 95]),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_forward_and_grads_match_oracle(shape, dtype, device):
    b, h, lq, lk, d, causal, lens = shape
    q, k, v, grad_out = _inputs(b, h, lq, lk, d, dtype, device, seed=lq * 31 + lk + d)
    _check_against_oracle(q, k, v, grad_out, causal=causal, kv_lens=_lens(lens, device))


@pytest.mark.parametrize("scale", [0.3, -0.05, 0.0])
def test_explicit_scale(scale, device):
    q, k, v, grad_out = _inputs(2, 2, 40, 72, 64, torch.float32, device, seed=2)
    _check_against_oracle(q, k, v, grad_out, causal=True, kv_lens=_lens([72, 9], device), scale=scale)


@pytest.mark.parametrize("causal", [False, True])
def test_lse_is_the_masked_logsumexp(causal, device):
    b, h, lq, lk, d = 3, 2, 40, 70, 32
    q, k, v, _ = _inputs(b, h, lq, lk, d, torch.float32, device, seed=3)
    lens = _lens([70, 0, 21], device)
    scale = 0.2
    out, lse = torch.ops.seedfast.qformer_attention_fwd(q, k, v, lens, causal, scale)
    keep = attention_mask(lq, lk, causal=causal, kv_lens=lens.cpu(), device="cpu").expand(b, h, lq, lk)
    scores = (q.cpu().double() @ k.cpu().double().transpose(-1, -2)) * scale
    expected = scores.masked_fill(~keep, float("-inf")).logsumexp(-1)
    seen = keep.any(-1)
    assert lse.dtype == torch.float32 and lse.shape == (b, h, lq) and lse.is_contiguous()
    assert torch.allclose(lse.cpu().double()[seen], expected[seen], rtol=1e-6, atol=1e-6)
    # Rows that see nothing: lse = +inf, so exp(s - lse) = 0 in the backward.
    assert not seen.all() and torch.all(lse.cpu()[~seen] == float("inf"))
    assert torch.all(out.cpu()[~seen] == 0)


@pytest.mark.parametrize("lens_dtype", [torch.int64, torch.int32, torch.int16, torch.uint8], ids=_ids)
def test_kv_lens_zero_full_between_and_out_of_range(lens_dtype, device):
    # Zero, full, in between, and out of range on both sides (an int64 past 2**31 must not wrap).
    too_long = {torch.int64: 2**40, torch.int32: 2**31 - 1, torch.int16: 300, torch.uint8: 200}[lens_dtype]
    values = [0, 45, 17, 1 if lens_dtype == torch.uint8 else -3, too_long]
    lens = _lens(values, device, lens_dtype)
    q, k, v, grad_out = _inputs(5, 2, 36, 45, 32, torch.float32, device, seed=4)
    out, (dq, dk, dv) = _check_against_oracle(q, k, v, grad_out, causal=False, kv_lens=lens)
    clamped = torch.tensor(values).clamp(0, 45)
    for i, n in enumerate(clamped.tolist()):
        # Keys past kv_lens get exactly zero gradient, and a batch that sees nothing is all zero.
        assert torch.all(dk[i, :, n:] == 0) and torch.all(dv[i, :, n:] == 0)
        if n == 0:
            assert torch.all(out[i] == 0) and torch.all(dq[i] == 0)
        else:
            assert out[i].abs().sum() > 0


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_rows_that_see_nothing_are_zero_without_nan(dtype, device):
    q, k, v, grad_out = _inputs(2, 2, 33, 40, 64, dtype, device, seed=5)
    lens = _lens([0, 0], device)
    for causal in (False, True):
        out, grads = _forward_backward(q, k, v, grad_out, causal=causal, kv_lens=lens, backend="triton")
        for x in (out, *grads):
            assert torch.all(x == 0)
    # No keys at all (Lk = 0): zeros, like the reference.
    q0, k0, v0, g0 = _inputs(2, 2, 5, 0, 64, dtype, device, seed=5)
    out, grads = _forward_backward(q0, k0, v0, g0, causal=True, backend="triton")
    assert out.shape == q0.shape and torch.all(out == 0)
    assert torch.equal(out.cpu(), qformer_attention_reference(q0.cpu(), k0.cpu(), v0.cpu(), causal=True))
    assert all(torch.all(g == 0) for g in grads)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_empty_batch_and_empty_queries(backend, device):
    device = device if backend == "triton" else "cpu"
    for b, lq in ((0, 32), (2, 0)):
        q, k, v, grad_out = _inputs(b, 3, lq, 32, 64, torch.float32, device)
        out, (dq, dk, dv) = _forward_backward(q, k, v, grad_out, causal=True, kv_lens=_lens([5] * b, device),
                                              backend=backend)
        assert out.shape == (b, 3, lq, 64) and dq.shape == q.shape and dk.shape == k.shape
        assert torch.all(dk == 0) and torch.all(dv == 0)


def test_non_contiguous_inputs(device):
    b, h, lq, lk, d = 2, 3, 32, 40, 64
    g = torch.Generator().manual_seed(6)
    # As the Q-Former builds them: q from a [B, L, H, D] projection (padded here, so that the
    # output, dense, has other strides than q), k from a fused [B, L, 2, H, D] key/value
    # projection, all viewed as [B, H, L, D]; v and the output gradient with yet other
    # strides, so that no two tensors share a layout.
    q = torch.randn(b, lq, h, d + 8, generator=g).to(device)[..., :d].transpose(1, 2)
    k = torch.randn(b, lk, 2, h, d, generator=g).to(device)[:, :, 0].transpose(1, 2)
    v = torch.randn(b, h, lk, d + 8, generator=g).to(device)[..., 4:4 + d]
    grad_out = torch.randn(h, b, lq, d, generator=g).to(device).transpose(0, 1)
    lens = _lens([40, 23], device)
    layouts = {x.stride() for x in (q, k, v, grad_out)}
    assert len(layouts) == 4 and not any(x.is_contiguous() for x in (q, k, v, grad_out))
    out, grads = _check_against_oracle(q, k, v, grad_out, causal=True, kv_lens=lens)
    # The output takes q's dimension order, so the Q-Former's transpose back to [B, L, H·D] is a view.
    assert out.stride() != q.stride() and out.transpose(1, 2).is_contiguous()
    assert grads[0].stride() == out.stride()
    # A head dim with non-unit stride (copied), and a stride-0 gradient from .sum().
    q_t = q.contiguous().transpose(-1, -2).contiguous().transpose(-1, -2)
    assert q_t.stride(-1) != 1
    ref = qformer_attention_reference(q, k, v, causal=True, kv_lens=lens)
    assert torch.allclose(qformer_attention(q_t, k, v, causal=True, kv_lens=lens, backend="triton"), ref,
                          rtol=1e-5, atol=1e-6)
    q_leaf = q.detach().requires_grad_()
    out = qformer_attention(q_leaf, k, v, causal=True, kv_lens=lens, backend="triton")
    dq_sum, = torch.autograd.grad(out.sum(), (q_leaf,))
    q_ref = q.detach().requires_grad_()
    dq_ref, = torch.autograd.grad(qformer_attention_reference(q_ref, k, v, causal=True, kv_lens=lens).sum(), (q_ref,))
    assert torch.allclose(dq_sum, dq_ref, rtol=1e-4, atol=1e-6)


def test_grads_only_where_needed(device):
    q, k, v, grad_out = _inputs(2, 2, 32, 32, 64, torch.float32, device, seed=7)
    k.requires_grad_()
    out = qformer_attention(q, k, v, causal=True, backend="triton")
    out.backward(grad_out)
    assert k.grad is not None and q.grad is None and v.grad is None


def test_bitwise_deterministic(device):
    q, k, v, grad_out = _inputs(3, 2, 70, 100, 64, torch.float32, device, seed=8)
    lens = _lens([100, 51, 0], device)
    runs = []
    for _ in range(2):
        runs.append(_forward_backward(q, k, v, grad_out, causal=True, kv_lens=lens, backend="triton"))
        # Poison freed memory between runs: a kernel that read an unwritten buffer would differ.
        torch.full((1 << 22,), float("nan"), device=device).add_(1)
    (out_a, grads_a), (out_b, grads_b) = runs
    assert torch.equal(out_a, out_b)
    for a, b in zip(grads_a, grads_b):
        assert torch.equal(a, b)


_SHORT_Q_CONFIGS = {"_attn_fwd_kernel": kqa.SHORT_Q_GPU_CONFIGS, "_attn_bwd_dq_kernel": kqa.SHORT_Q_GPU_CONFIGS,
                    "_attn_bwd_dkdv_kernel": kqa.SHORT_Q_DKDV_GPU_CONFIGS}
_TUNED = [
    (kernel + suffix, configs, dtype)
    for suffix, configs, dtype in (("", kqa.GPU_CONFIGS, torch.float16), ("_fp32", kqa.FP32_GPU_CONFIGS, torch.float32))
    for kernel in ("_attn_fwd_kernel", "_attn_bwd_dq_kernel", "_attn_bwd_dkdv_kernel")
] + [(kernel + "_short_q", configs, torch.bfloat16) for kernel, configs in _SHORT_Q_CONFIGS.items()]


@pytest.mark.parametrize("kernel, configs, dtype", _TUNED, ids=[t[0] for t in _TUNED])
def test_every_gpu_config_is_correct(kernel, configs, dtype, device, monkeypatch):
    """Each tile shape the GPU autotuner may pick, run alone (the interpreter otherwise runs one)."""
    # The short-query launch points serve at most SHORT_Q_MAX queries: 32 causal ones here.
    lq = kqa.SHORT_Q_MAX if kernel.endswith("_short_q") else 70
    q, k, v, grad_out = _inputs(2, 2, lq, 100, 64, dtype, device, seed=9)
    lens = _lens([100, 37], device)
    tuner = getattr(kqa, kernel)
    for config in configs:
        monkeypatch.setattr(tuner, "configs", [config])
        _check_against_oracle(q, k, v, grad_out, causal=True, kv_lens=lens)


def test_launch_points_by_dtype_and_query_count():
    q = torch.empty(2, 12, 32, 64, dtype=torch.bfloat16)
    assert kqa._launch_points(q) == (kqa._attn_fwd_kernel_short_q, kqa._attn_bwd_dq_kernel_short_q,
                                     kqa._attn_bwd_dkdv_kernel_short_q)
    assert kqa._launch_points(q.half()[:, :, :1]) == kqa._launch_points(q)
    assert kqa._launch_points(torch.empty(2, 12, 33, 64, dtype=torch.float16))[0] is kqa._attn_fwd_kernel
    assert kqa._launch_points(q.float())[0] is kqa._attn_fwd_kernel_fp32


def test_reference_gradcheck():
    g = torch.Generator().manual_seed(10)
    q, k, v = (torch.randn(3, 2, n, 4, generator=g, dtype=torch.float64, requires_grad=True) for n in (5, 6, 6))
    lens = torch.tensor([6, 3, 0])
    for causal in (False, True):
        assert torch.autograd.gradcheck(
            lambda q, k, v: qformer_attention_reference(q, k, v, causal=causal, kv_lens=lens, scale=0.7), (q, k, v)
        )


def test_auto_backend(device):
    q, k, v, _ = _inputs(2, 2, 32, 40, 64, torch.float32, device, seed=11)
    lens = _lens([40, 7], device)
    auto = qformer_attention(q, k, v, causal=True, kv_lens=lens)
    chosen = "triton" if device == "cuda" else "torch"
    assert torch.equal(auto, qformer_attention(q, k, v, causal=True, kv_lens=lens, backend=chosen))
    # Inputs the kernel does not take fall back to the reference.
    q64, k64, v64 = (x.double() for x in (q, k, v))
    assert qformer_attention(q64, k64, v64).dtype == torch.float64
    wide = torch.randn(1, 1, 4, 160, device=device)
    assert torch.equal(qformer_attention(wide, wide, wide), qformer_attention_reference(wide, wide, wide))


def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, device=device).to(dtype)


def _x(**kw):
    """A valid q, k or v of shape [1, 1, 2, 4]."""
    return _t(1, 1, 2, 4, **kw)


def _lens1(*shape, dtype=torch.int64):
    return torch.ones(*shape, dtype=dtype)


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda: qformer_attention([1.0], _x(), _x()), TypeError, "q must be a torch.Tensor"),
        (lambda: qformer_attention(_t(1, 2, 4), _x(), _x()), ValueError, "q must have 4 dimensions"),
        (lambda: qformer_attention(_x(), _x().long(), _x()), TypeError, "k must have dtype"),
        (lambda: qformer_attention(_x(), _x(), _x(dtype=torch.float16)), TypeError, "share a dtype"),
        (lambda: qformer_attention(_x(), _x(), _x(), kv_lens=torch.ones(1)), TypeError, "kv_lens must have dtype"),
        (lambda: qformer_attention(_x(), _x(), _x(), kv_lens=_lens1(1, 1)), ValueError, "kv_lens must have 1 dim"),
        (lambda: qformer_attention(*[_t(2, 1, 2, 4)] * 3, kv_lens=_lens1(3)), ValueError, "shape [B] = [2], got (3,)"),
        (lambda: qformer_attention(_x(), _x(), _x(device="meta")), ValueError, "one device"),
        (lambda: qformer_attention(_x(), _x(), _x(), causal=1), TypeError, "causal must be a bool"),
        (lambda: qformer_attention(_t(1, 2, 2, 4), _x(), _x()), ValueError, "same B and H"),
        (lambda: qformer_attention(_x(), _t(1, 1, 3, 4), _x()), ValueError, "k and v must have the same length"),
        (lambda: qformer_attention(_x(), _t(1, 1, 2, 8), _t(1, 1, 2, 8)), ValueError, "share head_dim"),
        (lambda: qformer_attention(_x(), _x(), _x(), scale=float("inf")), ValueError, "scale must be a finite"),
        (lambda: qformer_attention(_x(), _x(), _x(), scale="0.1"), ValueError, "scale must be a finite"),
        (lambda: qformer_attention(_x(), _x(), _x(), backend="fast"), ValueError, "backend must be one of"),
        (lambda: qformer_attention(_x(), _x(), _x(), backend="cuda"), ValueError, "no CUDA C++"),
        (lambda: qformer_attention(*[_x(dtype=torch.float64)] * 3, backend="triton"), ValueError,
         "got float64 with head_dim=4"),
        (lambda: qformer_attention(*[_t(1, 1, 2, 160)] * 3, backend="triton"), ValueError, "head_dim <= 128"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value), str(info.value)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        qformer_attention(_x(), _x(), _x(), backend="triton")


def test_custom_ops_pass_opcheck(device):
    q, k, v, grad_out = _inputs(2, 2, 33, 40, 32, torch.float32, device, seed=12)
    lens = _lens([40, 0], device)
    for x in (q, k, v):
        x.requires_grad_()
    torch.library.opcheck(torch.ops.seedfast.qformer_attention_fwd.default, (q, k, v, lens, True, 0.2))
    torch.library.opcheck(torch.ops.seedfast.qformer_attention_fwd.default, (q, k, v, None, False, 0.2))
    out, lse = torch.ops.seedfast.qformer_attention_fwd(q.detach(), k.detach(), v.detach(), lens, True, 0.2)
    torch.library.opcheck(torch.ops.seedfast.qformer_attention_bwd.default,
                          (grad_out, q.detach(), k.detach(), v.detach(), out, lse, lens, True, 0.2))


def test_torch_compile_fullgraph_matches_eager(device):
    q, k, v, grad_out = _inputs(2, 2, 32, 64, 64, torch.float32, device, seed=13)
    lens = _lens([64, 33], device)
    for x in (q, k, v):
        x.requires_grad_()

    def step(q, k, v):
        return (qformer_attention(q, k, v, causal=True, kv_lens=lens, backend="triton") * grad_out).sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    eager_loss, compiled_loss = step(q, k, v), compiled(q, k, v)
    assert torch.equal(eager_loss, compiled_loss)
    for a, b in zip(torch.autograd.grad(eager_loss, (q, k, v)), torch.autograd.grad(compiled_loss, (q, k, v))):
        assert torch.equal(a, b)


def _signature(kernel: str, dt: str) -> dict:
    """The runtime (non-constexpr) arguments of each kernel, in order, with their AOT types."""
    tensors = {
        "_attn_fwd_kernel": ["q", "k", "v", "lens", "o", "lse"],
        "_attn_bwd_dq_kernel": ["q", "k", "v", "lens", "o", "do", "lse", "delta", "dq"],
        "_attn_bwd_dkdv_kernel": ["q", "k", "v", "lens", "do", "lse", "delta", "dk", "dv"],
    }[kernel]
    strided = {
        "_attn_fwd_kernel": ["q", "k", "v", "o"],
        "_attn_bwd_dq_kernel": ["q", "k", "v", "o", "do", "dq"],
        "_attn_bwd_dkdv_kernel": ["q", "k", "v", "do", "dk", "dv"],
    }[kernel]
    special = {"lens": "*i32", "lse": "*fp32", "delta": "*fp32"}
    sig = {f"{t}_ptr": special.get(t, f"*{dt}") for t in tensors}
    sig.update({"H": "i32", "LQ": "i32", "LK": "i32", "qk_scale": "fp32"})
    if kernel != "_attn_fwd_kernel":
        sig["scale"] = "fp32"
    sig.update({f"s{t}_{a}": "i32" for t in strided for a in "bhl"})
    sig.update({"LQ_BUCKET": "i32", "LK_BUCKET": "i32"})
    return sig


def _compile_cost(spec: dict) -> int:
    c = spec["constexprs"]
    return (8 if spec["signature"]["q_ptr"] == "*fp32" else 1) * (c["D_LO"] + c["D_HI"])


def _head_constexprs(head_dim: int, align: int) -> dict:
    d_lo, d_hi = kqa.head_dim_tiles(head_dim)
    return {"HEAD_DIM": head_dim, "D_LO": d_lo, "D_HI": d_hi, "ALIGN": align}


@pytest.mark.skipif(os.environ.get("SEEDFAST_SKIP_AOT") == "1", reason="AOT compile disabled")
def test_kernels_compile_for_sm80_and_sm90():
    specs = []
    for suffix, dtypes in (("", ("fp16", "bf16")), ("_fp32", ("fp32",)), ("_short_q", ("fp16", "bf16"))):
        for kernel in ("_attn_fwd_kernel", "_attn_bwd_dq_kernel", "_attn_bwd_dkdv_kernel"):
            for dt in dtypes:
                for head_dim in (64, 88):
                    specs.append({
                        "module": "seedfast.kernels.qformer_attention", "kernel": kernel + suffix,
                        "signature": _signature(kernel, dt),
                        "constexprs": {**_head_constexprs(head_dim, 4 if dt == "fp32" else 8),
                                       "CAUSAL": True, "HAS_KV_LENS": True,
                                       "INTERPRET_BF16": False, "PRECISION": "tf32x3" if dt == "fp32" else "ieee"},
                    })
    # The other mask-flag combinations, once each: the single-config fp32 launch point with
    # 16-bit pointers is the same jitted function with one tile.
    for kernel in ("_attn_fwd_kernel", "_attn_bwd_dq_kernel", "_attn_bwd_dkdv_kernel"):
        for causal, has_lens in ((False, False), (True, False), (False, True)):
            specs.append({
                "module": "seedfast.kernels.qformer_attention", "kernel": kernel + "_fp32",
                "signature": _signature(kernel, "bf16"),
                "constexprs": {**_head_constexprs(64, 1), "CAUSAL": causal, "HAS_KV_LENS": has_lens,
                               "INTERPRET_BF16": False, "PRECISION": "ieee"},
            })
    # Two compiler processes, balanced by a rough cost (fp32 3xTF32 and 128-wide tiles compile
    # several times slower).
    halves, load = ([], []), [0, 0]
    for spec in sorted(specs, key=_compile_cost, reverse=True):
        lighter = load.index(min(load))
        halves[lighter].append(spec)
        load[lighter] += _compile_cost(spec)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(aot_compile, halves))
    failures = [f for r in results for f in r["failures"]]
    assert not failures, "\n".join(failures)
    short_q = 2 * len(kqa.SHORT_Q_GPU_CONFIGS) + len(kqa.SHORT_Q_DKDV_GPU_CONFIGS)
    per_target = (3 * 2 * (2 * len(kqa.GPU_CONFIGS) + len(kqa.FP32_GPU_CONFIGS)) + 3 * 3 * len(kqa.FP32_GPU_CONFIGS)
                  + 2 * 2 * short_q)
    expected = 2 * per_target  # sm_80 and sm_90
    assert sum(r["compiled"] for r in results) == expected


MASKS = {"none": {}, "causal": {"causal": True}, "kv_lens": {"kv_lens": [5, 4]},
         "both": {"causal": True, "kv_lens": [4, 5]}}


@pytest.mark.parametrize("mask", list(MASKS), ids=list(MASKS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=_ids)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_nan_in_nan_out_on_every_backend(backend, dtype, mask, device):
    """One rule: a NaN in a query row gives a NaN output row (and only that row); a NaN in the
    k or v of a key gives NaN in every row that sees that key. Before, the torch path without a
    mask returned a zero row for a NaN query (CPU SDPA's fused kernel), unlike Triton."""
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the kernel has no float64")
    kw = dict(MASKS[mask])
    if "kv_lens" in kw:
        kw["kv_lens"] = _lens(kw["kv_lens"], device)
    q, k, v, _ = _inputs(2, 2, 5, 5, 16, dtype, device, seed=11)
    sees = attention_mask(5, 5, causal=kw.get("causal", False), kv_lens=kw.get("kv_lens"), device=device)
    sees = torch.ones(2, 1, 5, 5, dtype=torch.bool, device=device) if sees is None else sees.expand(2, 1, 5, 5)

    q_bad = q.clone()
    q_bad[0, 1, 2, 3] = float("nan")
    out = qformer_attention(q_bad, k, v, backend=backend, **kw)
    expected = torch.zeros(2, 2, 5, dtype=torch.bool, device=device)
    expected[0, 1, 2] = True
    assert torch.equal(out.isnan().any(-1), expected)

    for name in ("k", "v"):
        k_bad, v_bad = k.clone(), v.clone()
        (k_bad if name == "k" else v_bad)[1, 0, 3, 5] = float("nan")
        out = qformer_attention(q, k_bad, v_bad, backend=backend, **kw)
        reads_key_3 = sees[1, 0, :, 3]
        assert out[1, 0][reads_key_3].isnan().any(-1).all(), f"NaN in {name} lost"
        assert not out[0].isnan().any() and not out[1, 1].isnan().any(), f"NaN in {name} leaked to another (b, h)"


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_row_that_sees_no_key_is_zero_even_with_a_nan_query(backend, device):
    q, k, v, _ = _inputs(2, 1, 4, 6, 16, torch.float32, device, seed=12)
    q[0, 0, 1, 0] = float("nan")
    out = qformer_attention(q, k, v, kv_lens=_lens([0, 6], device), backend=backend)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert not out[1].isnan().any()


def test_head_dim_tiles_split_instead_of_padding():
    # SEED's EVA ViT-g has D = 88: two chunks of 64 + 32 (96 columns), not one of 128.
    assert kqa.head_dim_tiles(88) == (64, 32)
    assert kqa.head_dim_tiles(80) == (64, 16)
    assert kqa.head_dim_tiles(96) == (64, 32)
    assert kqa.head_dim_tiles(64) == (64, 0) and kqa.head_dim_tiles(128) == (128, 0)
    assert kqa.head_dim_tiles(4) == (16, 0) and kqa.head_dim_tiles(24) == (16, 16)
    for d in range(1, kqa.MAX_HEAD_DIM + 1):
        lo, hi = kqa.head_dim_tiles(d)
        padded = max(16, 1 << (d - 1).bit_length())
        assert d <= lo + hi <= padded and lo >= 16 and lo & (lo - 1) == 0
        assert hi == 0 or (hi >= 16 and hi & (hi - 1) == 0)
    for bad in (0, kqa.MAX_HEAD_DIM + 1):
        with pytest.raises(ValueError, match=r"head_dim must be in \[1, 128\]"):
            kqa.head_dim_tiles(bad)


def test_stride_align():
    bhld = torch.empty(2, 16, 257, 88, dtype=torch.float16)
    assert kqa.stride_align(bhld) == 8 and kqa.stride_align(bhld.float()) == 4
    # The Q-Former's [B, L, H, D] projection viewed as [B, H, L, D].
    assert kqa.stride_align(torch.empty(2, 257, 16, 88, dtype=torch.bfloat16).transpose(1, 2)) == 8
    odd_rows = torch.empty(2, 3, 5, 89, dtype=torch.float16)[..., :88]
    assert kqa.stride_align(bhld, odd_rows) == 1
    # A size-1 dimension's stride is never used, so it does not spoil the alignment.
    size1 = torch.empty(1000, dtype=torch.float16).as_strided((1, 2, 5, 88), (7, 440, 88, 1))
    assert kqa.stride_align(size1) == 8


def _tile_cases():
    """Every (D, Lq) pair the new tiles must handle; dtype, mask and Lk vary with the index so
    that each dtype meets causal Lq ≠ Lk, kv_lens with a zero, and cross-attention."""
    cases = []
    for i, (d, lq) in enumerate((d, lq) for d in (64, 80, 88, 96, 128) for lq in (1, 32, 33, 64, 257)):
        # One causal query sees one key, where dQ is exactly zero and a relative error is
        # meaningless: a single query is cross-attention.
        causal = i % 2 == 0 and lq > 1
        lk = {1: 40, 32: 32 if causal else 257, 33: 70, 64: 50, 257: 100}[lq]
        lens = None if i % 4 == 3 else [0, lk - 3 * (i % 3)]
        cases.append(pytest.param(DTYPES[i % 3], d, lq, lk, causal, lens, id=f"d{d}-lq{lq}-lk{lk}-{i}"))
    return cases


@pytest.mark.parametrize("dtype, d, lq, lk, causal, lens", _tile_cases())
def test_head_dims_and_query_lengths_match_oracle(dtype, d, lq, lk, causal, lens, device):
    q, k, v, grad_out = _inputs(2, 1, lq, lk, d, dtype, device, seed=d * 7 + lq)
    out, grads = _check_against_oracle(q, k, v, grad_out, causal=causal, kv_lens=_lens(lens, device))
    if lens is not None:
        # The batch that sees no key: zero output and zero gradients, no NaN.
        assert torch.all(out[0] == 0) and all(torch.all(g[0] == 0) for g in grads)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_unaligned_rows_at_d88(dtype, device):
    """Rows 89 elements apart cannot be proven 16-byte aligned: ALIGN = 1, same results."""
    g = torch.Generator().manual_seed(14)
    q, k, v, grad_out = (torch.randn(2, 2, n, 89, generator=g).to(device=device, dtype=dtype)[..., :88]
                         for n in (33, 57, 57, 33))
    assert kqa.stride_align(q, k, v, grad_out) == 1
    _check_against_oracle(q * 1.5, k, v, grad_out, causal=True, kv_lens=_lens([57, 20], device))


# Compiles one kernel config for sm_90 the way a launch on aligned tensors would specialise it
# (16-byte-aligned pointers, the launcher's ALIGN) and reads the compiled code: register and
# spill counts from ptxas, global-load and tensor-core instructions from the PTX.
_COMPILED_CODE_SCRIPT = textwrap.dedent(
    """
    import json, os, re, subprocess, sys, tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from seedfast.kernels import qformer_attention as kqa

    PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    POINTERS = {"lens_ptr": "*i64", "lse_ptr": "*fp32", "delta_ptr": "*fp32"}
    FLOATS = {"qk_scale", "scale"}
    results = []
    for spec in json.loads(sys.argv[1]):
        fn = getattr(kqa, spec["kernel"])
        d_lo, d_hi = kqa.head_dim_tiles(spec["head_dim"])
        constexprs = {"HEAD_DIM": spec["head_dim"], "D_LO": d_lo, "D_HI": d_hi,
                      "ALIGN": 4 if spec["dtype"] == "fp32" else 8, "CAUSAL": True, "HAS_KV_LENS": True,
                      "INTERPRET_BF16": False, "PRECISION": "tf32x3" if spec["dtype"] == "fp32" else "ieee",
                      "BLOCK_M": spec["block_m"], "BLOCK_N": spec["block_n"]}
        signature, attrs = {}, {}
        for i, name in enumerate(fn.arg_names):
            if name in constexprs:
                signature[name] = "constexpr"
            elif name.endswith("_ptr"):
                signature[name] = POINTERS.get(name, "*" + spec["dtype"])
                attrs[(i,)] = [["tt.divisibility", 16]]
            else:
                signature[name] = "fp32" if name in FLOATS else "i32"
        src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        out = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                             options={"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]})
        ptx = out.asm["ptx"]
        with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
            f.write(ptx)
            f.flush()
            log = subprocess.run([PTXAS, "-arch=sm_90a", "-v", f.name, "-o", os.devnull],
                                 capture_output=True, text=True, check=True).stderr
        count = lambda pattern: len(re.findall(pattern, ptx))
        results.append(dict(
            spec,
            registers=int(re.search(r"Used (\\d+) registers", log).group(1)),
            spill_bytes=int(re.search(r"(\\d+) bytes spill stores", log).group(1))
            + int(re.search(r"(\\d+) bytes spill loads", log).group(1)),
            vector_loads=count(r"ld\\.global(?:\\.\\w+)*\\.v[24]\\.") + count(r"cp\\.async\\.c[ag]\\.shared\\.global"),
            scalar_16bit_loads=count(r"ld\\.global(?:\\.\\w+)*\\.[bu]16 "),
            wgmma=count(r"wgmma\\.mma_async"),
            mma_sync=count(r"mma\\.sync"),
        ))
    print(json.dumps(results))
    """
)


def _compiled_code(specs: list[dict]) -> list[dict]:
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run([sys.executable, "-c", _COMPILED_CODE_SCRIPT, json.dumps(specs)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _code_specs(dtype: str, head_dims: tuple[int, ...], *, short_q: bool = False) -> list[dict]:
    if short_q:
        kernels = [("_attn_fwd_keys_major", kqa.SHORT_Q_GPU_CONFIGS), ("_attn_bwd_dq_keys_major", kqa.SHORT_Q_GPU_CONFIGS),
                   ("_attn_bwd_dkdv", kqa.SHORT_Q_DKDV_GPU_CONFIGS)]
    else:
        configs = kqa.FP32_GPU_CONFIGS if dtype == "fp32" else kqa.GPU_CONFIGS
        kernels = [(kernel, configs) for kernel in ("_attn_fwd", "_attn_bwd_dq", "_attn_bwd_dkdv")]
    return [
        {"kernel": kernel, "dtype": dtype, "head_dim": d, "block_m": c.kwargs["BLOCK_M"], "block_n": c.kwargs["BLOCK_N"],
         "num_warps": c.num_warps, "num_stages": c.num_stages}
        for d in head_dims for kernel, configs in kernels for c in configs
    ]


def _code_problems(results: list[dict]) -> list[str]:
    """Spills, scalar 16-bit loads, or a 16-bit MMA with 64 rows that is not wgmma."""
    problems = []
    for r in results:
        where = f"{r['kernel']} {r['dtype']} D={r['head_dim']} {r['block_m']}x{r['block_n']}/{r['num_warps']}w"
        if r["spill_bytes"]:
            problems.append(f"{where} spills {r['spill_bytes']} bytes ({r['registers']} registers)")
        if r["scalar_16bit_loads"] or not r["vector_loads"]:
            problems.append(f"{where}: {r['scalar_16bit_loads']} scalar 16-bit loads, {r['vector_loads']} vector loads")
        # The MMA's M: the query tile in the forward and dQ kernels, the key tile in dK/dV, the
        # key tile and the head dim in the keys-major kernels.
        if r["kernel"].endswith("_keys_major"):
            m_tile = min(r["block_n"], r["head_dim"])
        else:
            m_tile = r["block_n"] if r["kernel"] == "_attn_bwd_dkdv" else r["block_m"]
        if r["dtype"] != "fp32" and m_tile >= 64 and not (r["wgmma"] and not r["mma_sync"]):
            problems.append(f"{where}: wgmma {r['wgmma']}, mma.sync {r['mma_sync']}")
    return problems


def _compile_in_two(specs: list[dict]) -> list[dict]:
    with ThreadPoolExecutor(2) as pool:
        results = [r for part in pool.map(_compiled_code, (specs[0::2], specs[1::2])) for r in part]
    assert len(results) == len(specs)
    return results


@pytest.mark.skipif(os.environ.get("SEEDFAST_SKIP_AOT") == "1", reason="AOT compile disabled")
def test_compiled_code_at_eva_head_dims():
    """sm_90 code at D = 80, 88, 96 for every shipped config: 16-byte vector or cp.async loads
    and no scalar 16-bit loads (at D = 88 each kernel used to compile to 96-320 scalar
    ``ld.global.b16`` and no vector load),
    no register spills (fp32 included), and wgmma wherever the MMA tile has 64 rows."""
    specs = _code_specs("fp16", (80, 88, 96)) + _code_specs("bf16", (88,)) + _code_specs("fp32", (88,))
    problems = _code_problems(_compile_in_two(specs))
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(os.environ.get("SEEDFAST_SKIP_AOT") == "1", reason="AOT compile disabled")
def test_compiled_code_at_qformer_shapes():
    """sm_90 code of the launch points that serve the Q-Former's 32 queries (D = 64): every
    matmul of the forward, dQ and dK/dV kernels is a wgmma (a 32-query tile alone compiles to
    mma.sync), with vector loads and no spills."""
    specs = _code_specs("fp16", (64,), short_q=True) + _code_specs("bf16", (64,), short_q=True)
    results = _compile_in_two(specs)
    problems = _code_problems(results)
    assert not problems, "\n".join(problems)
    assert all(r["wgmma"] > 0 and r["mma_sync"] == 0 for r in results)
