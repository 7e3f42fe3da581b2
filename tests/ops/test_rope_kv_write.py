"""rope_kv_write: the Triton kernel (interpreted on CPU) against the torch reference and a
float64 oracle; the cache is written at exactly each row's position and nowhere else."""
from __future__ import annotations

import os

import pytest
import torch

from seedfast.ops import rope_kv_write, rope_kv_write_reference
from tests.accuracy import assert_within_baseline
from tests.aot import aot_compile

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _table(length, d, seed=0):
    """A rotate-half table as rope_table builds it: cos = [c, c], sin = [-s, s]."""
    g = torch.Generator().manual_seed(seed)
    angles = torch.rand(length, d // 2, generator=g) * 40
    return torch.cat([angles.cos()] * 2, -1), torch.cat([-angles.sin(), angles.sin()], -1)


def _inputs(b, h, hkv, d, s, dtype, device, *, rows=None, seed=0, pos_dtype=torch.int32):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, (h + 2 * hkv) * d, generator=g).to(device=device, dtype=dtype)
    cos, sin = _table(s + 3, d, seed)
    positions = torch.randint(0, s, (b,), generator=g).to(device=device, dtype=pos_dtype)
    rows = rows or b
    k_cache = torch.randn(rows, s, hkv, d, generator=g).to(device=device, dtype=dtype)
    v_cache = torch.randn(rows, s, hkv, d, generator=g).to(device=device, dtype=dtype)
    return qkv, cos.to(device), sin.to(device), positions, k_cache, v_cache


def _oracle(qkv, cos, sin, positions, hkv, d):
    """Rotated q, k and plain v in float64."""
    b = qkv.shape[0]
    x = qkv.double().cpu().view(b, -1, d)
    pos = positions.long().cpu()
    c, s = cos.double().cpu()[pos][:, None], sin.double().cpu()[pos][:, None]
    h = x.shape[1] - 2 * hkv
    rot = x[:, : h + hkv] * c + x[:, : h + hkv].roll(d // 2, -1) * s
    return rot[:, :h], rot[:, h:], x[:, h + hkv:]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("b, h, hkv, d, s", [
    (1, 1, 1, 2, 1),       # the smallest shape
    (3, 4, 2, 16, 10),     # GQA
    (5, 6, 6, 80, 7),      # MHA, a head dim that is not a power of two
    (2, 12, 1, 88, 33),    # MQA, D = 88 (EVA's), more heads than one tile holds
    (4, 32, 8, 128, 5),    # LLaMA-3 8B's heads
])
def test_kernel_matches_reference_and_oracle(b, h, hkv, d, s, dtype, device):
    qkv, cos, sin, pos, kc, vc = _inputs(b, h, hkv, d, s, dtype, device, rows=b + 2, seed=b * 31 + d)
    k_before, v_before = kc.clone(), vc.clone()
    kr, vr = kc.clone(), vc.clone()
    q = rope_kv_write(qkv, cos, sin, pos, kc, vc, backend="triton")
    q_ref = rope_kv_write_reference(qkv, cos, sin, pos, kr, vr)
    assert q.shape == (b, h, d) and q.dtype == dtype
    q64, k64, v64 = _oracle(qkv, cos, sin, pos, hkv, d)
    rows, p = torch.arange(b), pos.long().cpu()
    floor = 1e-6
    assert_within_baseline(q.cpu(), q_ref.cpu(), q64, floor=floor, what="q")
    assert_within_baseline(kc.cpu()[rows, p], kr.cpu()[rows, p], k64, floor=floor, what="k")
    assert torch.equal(vc.cpu()[rows, p], v64.to(dtype)), "v is copied bit for bit"
    assert torch.equal(vc, vr)
    # Both round a float32 rotation once; the float32 sums differ by FMA or not (a few float32
    # units of the inputs' size), so the results are at most one unit of the dtype apart beyond that.
    fp32_slack = 4 * torch.finfo(torch.float32).eps * qkv.double().abs().max()
    for out, ref in ((q, q_ref), (kc, kr)):
        gap = (out.double() - ref.double()).abs()
        assert (gap <= torch.finfo(dtype).eps * ref.double().abs() + fp32_slack).all()
    # Everything but [b, pos[b]] for b < B is untouched (the extra cache rows included).
    written = torch.zeros(kc.shape[:2], dtype=torch.bool)
    written[rows, p] = True
    assert torch.equal(kc.cpu()[~written], k_before.cpu()[~written])
    assert torch.equal(vc.cpu()[~written], v_before.cpu()[~written])


@pytest.mark.parametrize("pos_dtype", [torch.int32, torch.int64])
def test_positions_of_either_int_dtype_and_a_cache_view(pos_dtype, device):
    """The layer view the model passes (``cache.k[i]``: strided batch/seq) and int64 positions."""
    b, h, hkv, d, s = 3, 4, 2, 16, 9
    qkv, cos, sin, pos, _, _ = _inputs(b, h, hkv, d, s, torch.float32, device, pos_dtype=pos_dtype, seed=5)
    caches = torch.zeros(2, 3, 4, s, hkv, d, device=device)  # [k|v, layers, rows, S, Hkv, D]
    ref = caches.clone()
    q = rope_kv_write(qkv, cos, sin, pos, caches[0, 1], caches[1, 1], backend="triton")
    q_ref = rope_kv_write_reference(qkv, cos, sin, pos, ref[0, 1], ref[1, 1])
    torch.testing.assert_close(q, q_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(caches, ref, rtol=1e-6, atol=1e-6)
    assert caches[:, 0].abs().sum() == 0 and caches[:, 2].abs().sum() == 0


def test_auto_is_the_reference_on_cpu_and_bit_identical():
    qkv, cos, sin, pos, kc, vc = _inputs(3, 4, 2, 16, 10, torch.bfloat16, "cpu")
    kr, vr = kc.clone(), vc.clone()
    assert torch.equal(rope_kv_write(qkv, cos, sin, pos, kc, vc), rope_kv_write_reference(qkv, cos, sin, pos, kr, vr))
    assert torch.equal(kc, kr) and torch.equal(vc, vr)


def test_float64_runs_on_the_reference_only(device):
    qkv, cos, sin, pos, kc, vc = _inputs(2, 2, 1, 8, 4, torch.float64, device)
    assert rope_kv_write(qkv, cos, sin, pos, kc, vc, backend="auto").dtype == torch.float64
    with pytest.raises(ValueError, match="backend='triton' needs float32/float16/bfloat16"):
        rope_kv_write(qkv, cos, sin, pos, kc, vc, backend="triton")


def test_no_backward_on_triton_and_auto_falls_back_when_grad_is_needed(device):
    qkv, cos, sin, pos, kc, vc = _inputs(2, 2, 1, 8, 4, torch.float32, device)
    qkv.requires_grad_()
    with pytest.raises(ValueError, match="no backward"):
        rope_kv_write(qkv, cos, sin, pos, kc, vc, backend="triton")
    q = rope_kv_write(qkv, cos, sin, pos, kc.clone(), vc.clone(), backend="auto")
    (g,) = torch.autograd.grad(q.sum(), qkv)
    assert g.shape == qkv.shape
    with torch.no_grad():
        assert rope_kv_write(qkv, cos, sin, pos, kc, vc, backend="triton").shape == (2, 2, 8)


def test_custom_op_passes_opcheck(device):
    qkv, cos, sin, pos, kc, vc = _inputs(3, 4, 2, 16, 10, torch.float32, device)
    torch.library.opcheck(torch.ops.seedfast.rope_kv_write.default, (qkv, cos, sin, pos, kc, vc))


@pytest.mark.parametrize("change, error, match", [
    (dict(qkv=[1.0]), TypeError, "qkv must be a torch.Tensor"),
    (dict(qkv=torch.zeros(3, 128, dtype=torch.int64)), TypeError, "qkv must have dtype"),
    (dict(qkv=torch.zeros(3, 127)), ValueError, r"qkv must have \(H \+ 2·Hkv\)·D columns"),
    (dict(qkv=torch.zeros(3, 64)), ValueError, "H >= 1"),
    (dict(cos=torch.zeros(10, 8)), ValueError, "cos and sin must both be"),
    (dict(cos=torch.zeros(13, 16, dtype=torch.float64)), TypeError, "cos must have dtype in \\(float32\\)"),
    (dict(positions=torch.zeros(2, dtype=torch.int32)), ValueError, r"positions must have shape \[B\] = \[3\]"),
    (dict(positions=torch.zeros(3)), TypeError, "positions must have dtype"),
    (dict(k_cache=torch.zeros(3, 10, 2, 16, dtype=torch.float16)), TypeError, "k_cache must have the dtype of qkv"),
    (dict(v_cache=torch.zeros(3, 9, 2, 16)), ValueError, "v_cache must have k_cache's shape"),
    (dict(k_cache=torch.zeros(2, 10, 2, 16), v_cache=torch.zeros(2, 10, 2, 16)), ValueError, "caches hold 2 rows"),
    (dict(k_cache=torch.zeros(3, 10, 2, 15), v_cache=torch.zeros(3, 10, 2, 15)), ValueError, "must be even"),
    (dict(backend="cuda"), ValueError, "backend must be one of"),
])
def test_bad_inputs_are_named(change, error, match):
    qkv, cos, sin, pos, kc, vc = _inputs(3, 4, 2, 16, 10, torch.float32, "cpu")
    args = dict(qkv=qkv, cos=cos, sin=sin, positions=pos, k_cache=kc, v_cache=vc, backend="torch")
    args.update(change)
    backend = args.pop("backend")
    with pytest.raises(error, match=match):
        rope_kv_write(*args.values(), backend=backend)


@pytest.mark.skipif(os.environ.get("SEEDFAST_SKIP_AOT") == "1", reason="AOT compile disabled")
def test_kernel_compiles_for_sm80_and_sm90():
    from seedfast.kernels.rope_kv_write import launch_config

    specs = []
    for dt in ("fp32", "fp16", "bf16"):
        for h, hkv, d in ((32, 8, 128), (16, 16, 88)):
            cfg = launch_config(h + 2 * hkv, d)
            specs.append({
                "module": "seedfast.kernels.rope_kv_write", "kernel": "_rope_kv_write_kernel",
                "num_warps": cfg["num_warps"],
                "signature": {
                    "qkv_ptr": f"*{dt}", "cos_ptr": "*fp32", "sin_ptr": "*fp32", "pos_ptr": "*i32", "q_ptr": f"*{dt}",
                    "k_cache_ptr": f"*{dt}", "v_cache_ptr": f"*{dt}", "stride_qkv_b": "i32", "stride_cos": "i32",
                    "stride_sin": "i32", "stride_q_b": "i32", "stride_q_h": "i32", "stride_k_b": "i64",
                    "stride_k_s": "i32", "stride_k_h": "i32", "stride_v_b": "i64", "stride_v_s": "i32",
                    "stride_v_h": "i32", "H": "i32", "HKV": "i32",
                },
                "constexprs": {"D": d, "BLOCK_H": cfg["BLOCK_H"], "BLOCK_D": cfg["BLOCK_D"], "INTERPRET_BF16": False},
            })
    result = aot_compile(specs)
    assert not result["failures"], "\n".join(result["failures"])
    assert result["compiled"] == 3 * 2 * 2
