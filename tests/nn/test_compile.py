"""torch.compile and CUDA-graph safety: opcheck on every registered seedfast custom op, and
compiled (fullgraph) models built from the seedfast.nn modules against eager."""
from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import seedfast.ops  # importing it registers the seedfast:: custom ops
from seedfast.nn import ConstrainedSampler, QFormerAttention, VectorQuantizer, VisualVocab

VOCAB = VisualVocab(text_vocab_size=10, first_code_id=10, num_codes=6, boi_id=16, eoi_id=17, eos_id=2,
                    codes_per_image=3)
GPU = torch.cuda.is_available()


def registered_ops() -> list[str]:
    """Every ``seedfast::`` custom op registered once seedfast.ops is imported."""
    return sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("seedfast::"))


def _detached(value):
    return value.detach() if isinstance(value, torch.Tensor) else value


class _RecordSeedfastOps(TorchDispatchMode):
    """Records the first call (op, args, kwargs) of each seedfast custom op that runs under it.

    A call made while autograd runs a backward pass is recorded with its tensors detached: it
    is not itself differentiated (no double backward), so opcheck must not try to.
    """

    def __init__(self):
        super().__init__()
        self.calls: dict[str, tuple] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::", 1)[1]
        if func.namespace == "seedfast" and name not in self.calls:
            if torch._C._current_graph_task_id() != -1:
                rec_args = tuple(_detached(a) for a in args)
                rec_kwargs = {k: _detached(v) for k, v in kwargs.items()}
            else:
                rec_args, rec_kwargs = args, kwargs
            self.calls[name] = (func, rec_args, rec_kwargs)
        return func(*args, **kwargs)


def _sample_calls(device: str) -> None:
    """Run every public op forward and backward on every backend this machine can run.

    A backend a machine cannot run (CUDA C++ on CPU, say) raises ValueError and is skipped;
    the custom ops it would reach stay unrecorded and are reported by the test below.
    """
    g = torch.Generator().manual_seed(0)
    z = torch.randn(40, 16, generator=g).to(device).requires_grad_()
    codebook = torch.randn(30, 16, generator=g).to(device).requires_grad_()
    q, k, v = (torch.randn(2, 2, 5, 8, generator=g).to(device).requires_grad_() for _ in range(3))
    kv_lens = torch.tensor([5, 3], device=device)
    logits = torch.randn(3, 18, generator=g).to(device)
    image_pos = torch.tensor([-1, 0, 3], dtype=torch.int32, device=device)
    # The fused decode ops are inference-only: inputs without gradients.
    hidden, residual = (torch.randn(3, 16, generator=g).to(device) for _ in range(2))
    norm_w = torch.randn(16, generator=g).to(device)
    gate_up = torch.randn(3, 2 * 12, generator=g).to(device)
    heads, kv_heads, head_dim = 2, 1, 8
    qkv = torch.randn(3, (heads + 2 * kv_heads) * head_dim, generator=g).to(device)
    angles = torch.rand(6, head_dim, generator=g).to(device)
    k_cache, v_cache = (torch.zeros(3, 6, kv_heads, head_dim, device=device) for _ in range(2))
    positions = torch.tensor([0, 2, 5], device=device)
    for backend in ("triton", "cuda"):
        calls = [
            lambda: sum(x.float().sum() for x in seedfast.ops.vq_quantize(z, codebook, return_counts=True,
                                                                          backend=backend)[::2]),
            lambda: seedfast.ops.nearest_code(z, codebook, backend=backend).float().sum(),
            lambda: seedfast.ops.qformer_attention(q, k, v, causal=True, kv_lens=kv_lens, backend=backend).sum(),
            lambda: seedfast.ops.constrained_sample(logits, image_pos, vocab=VOCAB, temperature=0.7, top_p=0.9,
                                                   seed=1, offset=2, backend=backend)[0].float().sum(),
            lambda: sum(t.sum() for t in seedfast.ops.add_rms_norm(hidden, residual, norm_w, 1e-6, backend=backend)),
            lambda: seedfast.ops.silu_mul(gate_up, backend=backend).sum(),
            lambda: seedfast.ops.rope_kv_write(qkv, angles.cos(), angles.sin(), positions, k_cache, v_cache,
                                               backend=backend).sum(),
        ]
        for call in calls:
            try:
                out = call()
            except ValueError:
                continue
            if out.requires_grad:
                out.backward()


@functools.cache
def _recorded_calls(device: str) -> dict[str, tuple]:
    with _RecordSeedfastOps() as recorder:
        _sample_calls(device)
    return recorder.calls


def test_some_custom_ops_are_registered():
    assert {"vq_quantize", "vq_quantize_backward", "nearest_code"} <= set(registered_ops())


@pytest.mark.parametrize("name", registered_ops())
def test_opcheck(name, device):
    """Every registered op, with the inputs a public op passed it. Ops of the CUDA C++
    backend (named ``*cuda*``, as seedfast's csrc ops are) cannot run without a GPU; every
    other op (Triton runs under the interpreter) must be reached by ``_sample_calls``."""
    calls = _recorded_calls(device)
    if name not in calls:
        if not GPU and "cuda" in name:
            pytest.skip(f"seedfast::{name} is a CUDA C++ op: needs a GPU")
        pytest.fail(f"seedfast::{name} is registered but no public-op call in _sample_calls reaches it: add one")
    op, args, kwargs = calls[name]
    torch.library.opcheck(op, args, kwargs)


# ---------------------------------------------------------------------------------------------
# Compiled models (aot_eager keeps CI fast; one inductor test at the end).


class TinyTokenizer(torch.nn.Module):
    """Queries → causal self-attention → cross-attention to padded "image" tokens → VQ."""

    def __init__(self, vq_backend: str = "auto"):
        super().__init__()
        self.self_attn = QFormerAttention(16, 2, causal=True)
        self.cross_attn = QFormerAttention(16, 2, kv_dim=12)
        self.to_code = torch.nn.Linear(16, 8)
        self.vq = VectorQuantizer(8, 8, init="normal", restart_unused_after=2, backend=vq_backend)

    def forward(self, queries, image, image_lens):
        h = queries + self.self_attn(queries)
        h = h + self.cross_attn(h, image, kv_lens=image_lens)
        return self.vq(self.to_code(h))


def _compare_model(backend: str, vq_backend: str, device: str) -> None:
    torch.manual_seed(0)
    eager = TinyTokenizer(vq_backend).to(device)
    compiled_model = copy.deepcopy(eager)
    initial_codebook = eager.vq.codebook.detach().clone()
    compiled = torch.compile(compiled_model, backend=backend, fullgraph=True)
    for step in range(4):
        g = torch.Generator().manual_seed(step)
        queries = torch.randn(2, 6, 16, generator=g).to(device)
        image = torch.randn(2, 9, 12, generator=g).to(device)
        lens = torch.tensor([9, 4], device=device)
        torch.manual_seed(100 + step)  # the same restart draws in both
        ref = eager(queries, image, lens)
        torch.manual_seed(100 + step)
        out = compiled(queries, image, lens)
        assert torch.equal(out.codes, ref.codes)
        assert torch.allclose(out.z_q, ref.z_q, atol=1e-5) and torch.allclose(out.loss, ref.loss, rtol=1e-4)
        ref_grads = torch.autograd.grad(ref.loss + ref.z_q.square().sum(), list(eager.parameters()))
        grads = torch.autograd.grad(out.loss + out.z_q.square().sum(), list(compiled_model.parameters()))
        for a, b in zip(grads, ref_grads):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    # Statistics and restarts happened inside the compiled graph too.
    compiled_buffers = dict(compiled_model.vq.named_buffers())
    for name, buf in eager.vq.named_buffers():
        assert torch.allclose(compiled_buffers[name].double(), buf.double(), rtol=1e-5, atol=1e-7), name
    assert torch.allclose(compiled_model.vq.codebook, eager.vq.codebook)
    assert eager.vq.usage_steps.item() == 4
    assert not torch.equal(eager.vq.codebook, initial_codebook), "the run must restart some codes"


@pytest.mark.parametrize("vq_backend", ["torch", "triton"])
def test_modules_compile_fullgraph_aot_eager(vq_backend, device):
    _compare_model("aot_eager", vq_backend, device)


def test_sampler_compiles_fullgraph_and_keeps_state():
    torch.manual_seed(0)
    eager = ConstrainedSampler(VOCAB, 3, temperature=0.9, top_k=6, seed=5, check=False)
    graphed = ConstrainedSampler(VOCAB, 3, temperature=0.9, top_k=6, seed=5, check=False)
    step = torch.compile(graphed, backend="aot_eager", fullgraph=True)
    bias = torch.zeros(18)
    bias[VOCAB.boi_id] = 2.0
    tokens = []
    for _ in range(12):
        logits = torch.randn(3, 18) + bias
        tokens.append(step(logits))
        assert torch.equal(tokens[-1], eager(logits))
        assert torch.equal(graphed.image_pos, eager.image_pos)
    assert graphed.offset.tolist() == [12, 12, 12]
    # The run went through the grammar's states, not only text.
    assert (torch.stack(tokens) == VOCAB.eoi_id).any()


def test_quantizer_compiles_with_inductor(device):
    """The one inductor test (~15-30 s cold): the custom VQ op as an extern node, and the
    in-place statistics and codebook restarts inside an inductor graph, forward and backward."""
    torch.manual_seed(0)
    eager = VectorQuantizer(8, 8, init="normal", restart_unused_after=2, backend="triton", device=device)
    compiled_vq = copy.deepcopy(eager)
    initial = eager.codebook.detach().clone()
    compiled = torch.compile(compiled_vq, backend="inductor", fullgraph=True)
    # Inductor generates its own random numbers unless told to use eager's; restarts draw them.
    with torch._inductor.config.patch(fallback_random=True):
        _compare_quantizer_steps(eager, compiled_vq, compiled, device)
    assert not torch.equal(eager.codebook, initial), "the run must restart some codes"


def _compare_quantizer_steps(eager, compiled_vq, compiled, device):
    for step in range(3):
        z = torch.randn(12, 8, generator=torch.Generator().manual_seed(step)).to(device)
        z_eager, z_compiled = z.clone().requires_grad_(), z.clone().requires_grad_()
        torch.manual_seed(step)
        ref = eager(z_eager)
        torch.manual_seed(step)
        out = compiled(z_compiled)
        assert torch.equal(out.codes, ref.codes)
        assert torch.allclose(out.z_q, ref.z_q) and torch.allclose(out.loss, ref.loss, rtol=1e-5)
        g_ref = torch.autograd.grad(ref.loss + ref.z_q.square().sum(), (z_eager, eager.codebook))
        g_out = torch.autograd.grad(out.loss + out.z_q.square().sum(), (z_compiled, compiled_vq.codebook))
        for a, b in zip(g_out, g_ref):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert torch.equal(compiled_vq.codebook, eager.codebook)
    assert torch.equal(compiled_vq.last_used_step, eager.last_used_step)
