"""The LLaMA decoder against transformers' LlamaForCausalLM (same random weights, fp32, CPU), its
static-cache paths against full recomputation, configs and errors (checkpoints: test_llama_hf.py)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from seedfast.models.kv_cache import KVCache, cache_bytes_per_token
from seedfast.models.llama import (
    Llama,
    LlamaConfig,
    RopeScaling,
    parameter_count,
    resolve_attention,
    rope_table,
)
from tests.accuracy import assert_within_baseline
from tests.generation.tiny import one_thread, tiny_pair  # noqa: F401 (one_thread: fixture)

TOL = 1e-4
TINY = LlamaConfig.tiny()
CONFIGS = {
    "gqa": TINY,
    "mha-linear-rope": dataclasses.replace(TINY, n_kv_heads=4, rope_scaling=RopeScaling("linear", 2.0)),
    "llama3-rope-tied": dataclasses.replace(TINY, n_kv_heads=1, rope_theta=500000.0, tie_word_embeddings=True,
                                            rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 64)),
}


def _prompts(lengths, vocab_size=256, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (n,), generator=g).tolist() for n in lengths]


def _padded(prompts, pad=0):
    out = torch.full((len(prompts), max(map(len, prompts))), pad, dtype=torch.int64)
    for b, p in enumerate(prompts):
        out[b, : len(p)] = torch.tensor(p)
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefill_and_every_decode_step_match_transformers(name):
    config = CONFIGS[name]
    model, hf = tiny_pair(config, seed=3)
    lengths = [5, 17, 9]
    prompts = _prompts(lengths)
    cache = KVCache.allocate(config, 4, 64, dtype=torch.float32, device="cpu")
    rope = rope_table(config, 64, "cpu")
    steps = 6
    new = _prompts([steps] * 3, seed=2)
    with torch.no_grad():
        full = model(_padded(prompts))
        hf_full = hf(_padded(prompts)).logits
        assert (full - hf_full).abs().max() < TOL  # right padding: every real position is exact
        logits = model.prefill(_padded(prompts), lengths, cache, rope)
        assert cache.lengths[:3].tolist() == lengths
        seqs = [list(p) for p in prompts]
        for t in range(steps + 1):
            for b, seq in enumerate(seqs):
                ref = hf(torch.tensor([seq])).logits[0, -1]
                err = (logits[b] - ref).abs().max().item()
                assert err < TOL, f"{name}: row {b} step {t}: max |Δlogit| = {err:.2e}"
            if t == steps:
                break
            tokens = torch.tensor([new[b][t] for b in range(3)])
            logits = model.decode(tokens, cache, rope, seq_len=32)
            cache.lengths[:3] += 1
            for b, seq in enumerate(seqs):
                seq.append(int(tokens[b]))


def test_static_cache_decode_equals_full_recomputation():
    model, _ = tiny_pair(seed=4)
    config = model.config
    lengths = [3, 30, 12, 1]
    prompts = _prompts(lengths, seed=5)
    cache = KVCache.allocate(config, 4, 300, dtype=torch.float32, device="cpu")
    # Stale, finite garbage past every row's length must not matter (it is masked).
    g = torch.Generator().manual_seed(0)
    cache.k.copy_(torch.randn(cache.k.shape, generator=g) * 100)
    cache.v.copy_(torch.randn(cache.v.shape, generator=g) * 100)
    rope = rope_table(config, 300, "cpu")
    seqs = [list(p) for p in prompts]
    with torch.no_grad():
        logits = model.prefill(_padded(prompts, pad=7), lengths, cache, rope)
        for step in range(8):
            tokens = logits.argmax(-1)
            for b in range(4):
                seqs[b].append(int(tokens[b]))
            # The attended window varies (the whole cache, or a bucket just past the longest row).
            seq_len = None if step % 2 else int(cache.lengths.max()) + 1
            logits = model.decode(tokens, cache, rope, seq_len=seq_len)
            cache.lengths += 1
            for b in range(4):
                ref = model(torch.tensor([seqs[b]]))[0, -1]
                assert (logits[b] - ref).abs().max() < TOL, (step, b)
    assert cache.lengths.tolist() == [n + 8 for n in lengths]


def test_forward_matches_transformers_on_every_position():
    model, hf = tiny_pair(seed=6)
    x = torch.tensor(_prompts([40, 40], seed=7))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() < TOL


def test_seed_llama_configs_match_transformers_parameter_counts():
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers import LlamaForCausalLM

    for config, billions in ((LlamaConfig.seed_llama_8b(), 6.8), (LlamaConfig.seed_llama_14b(), 13.1)):
        assert config.vocab_size == 32000 + 8192 + 2
        with torch.device("meta"):
            hf = LlamaForCausalLM(HFLlamaConfig(**config.to_hf_dict()))
            ours = Llama(config)
        n = sum(p.numel() for p in hf.parameters())
        assert sum(p.numel() for p in ours.parameters()) == n == parameter_count(config)
        assert abs(n / 1e9 - billions) < 0.05
        assert LlamaConfig.from_hf_dict(hf.config.to_dict()) == config
    assert LlamaConfig.from_name("seed-llama-14b").norm_eps == 1e-5
    assert LlamaConfig.seed_llama_8b().max_seq_len == 2048
    assert cache_bytes_per_token(LlamaConfig.seed_llama_8b(), torch.bfloat16) == 2 * 32 * 4096 * 2


def test_config_parsing_of_transformers_4_files():
    old = {"vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "intermediate_size": 96, "rms_norm_eps": 1e-5, "rope_theta": 5000.0,
           "rope_scaling": {"type": "linear", "factor": 4.0}, "max_position_embeddings": 128}
    config = LlamaConfig.from_hf_dict(old)
    assert config.rope_theta == 5000.0 and config.rope_scaling == RopeScaling("linear", 4.0)
    assert config.n_kv_heads == 4 and config.head_dim == 16


@pytest.mark.parametrize("change, words", [
    ({"hidden_act": "gelu"}, "hidden_act must be 'silu'"),
    ({"attention_bias": True}, "attention_bias must be False"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "rope type 'yarn' is not supported"),
])
def test_unsupported_hf_configs_are_named(change, words):
    with pytest.raises(ValueError, match=words):
        LlamaConfig.from_hf_dict({**TINY.to_hf_dict(), **change})


@pytest.mark.parametrize("kwargs, words", [
    (dict(n_heads=4, n_kv_heads=3), "multiple of n_kv_heads"),
    (dict(dim=66, n_heads=4), "not a multiple of n_heads"),
    (dict(n_layers=0), "n_layers must be >= 1"),
    (dict(head_dim=7), "head_dim must be even"),
])
def test_bad_configs_raise(kwargs, words):
    base = dict(vocab_size=10, dim=64, n_layers=1, n_heads=4, intermediate_size=8)
    with pytest.raises(ValueError, match=words):
        LlamaConfig(**{**base, **kwargs})
    with pytest.raises(ValueError, match="name must be one of"):
        LlamaConfig.from_name("gpt2")


def test_bad_model_inputs_raise_clear_errors():
    model, _ = tiny_pair(seed=13)
    cache = KVCache.allocate(model.config, 2, 16, dtype=torch.float32, device="cpu")
    rope = rope_table(model.config, 16, "cpu")
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 322\), got ids from 0 to 400"):
        model(torch.tensor([[0, 400]]))
    with pytest.raises(TypeError, match="tokens must be int64"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"lengths must be 2 ints in \[1, 4\]"):
        model.prefill(torch.zeros(2, 4, dtype=torch.long), [4, 5], cache, rope)
    with pytest.raises(ValueError, match="does not fit a cache of 2 rows × 16 positions"):
        model.prefill(torch.zeros(3, 4, dtype=torch.long), [4, 4, 4], cache, rope)
    with pytest.raises(ValueError, match="attention must be 'sdpa' or 'flash'"):
        model.prefill(torch.zeros(2, 4, dtype=torch.long), [4, 4], cache, rope, attention="xformers")
    with pytest.raises(ValueError, match="rope table covers 8 positions"):
        model.prefill(torch.zeros(2, 10, dtype=torch.long), [4, 4], cache, rope_table(model.config, 8, "cpu"))
    with pytest.raises(ValueError, match="batch_size and max_seq_len must be >= 1"):
        KVCache.allocate(model.config, 0, 16, dtype=torch.float32, device="cpu")


def test_attention_backend_resolution():
    cpu = torch.device("cpu")
    assert resolve_attention("auto", cpu, torch.bfloat16) == "sdpa"
    with pytest.raises(ValueError, match="attention='flash' needs the flash-attn package"):
        resolve_attention("flash", cpu, torch.float16)
    with pytest.raises(ValueError, match="attention must be one of"):
        resolve_attention("eager", cpu, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_cached_paths_are_as_accurate_as_a_full_pass(dtype):
    """Prefill/decode in half precision against an fp32 oracle: at most twice the error of a
    plain half-precision forward over the same tokens (the flash-attn test rule)."""
    model32, _ = tiny_pair(seed=14)
    model32 = model32.to("cuda")
    model = Llama.from_hf(model32.hf_state_dict(), model32.config, dtype=dtype, device="cuda")
    lengths = [7, 33, 20]
    prompts = _prompts(lengths, seed=15)
    cache = KVCache.allocate(model.config, 3, 256, dtype=dtype, device="cuda")
    rope = rope_table(model.config, 256, "cuda")
    with torch.no_grad():
        logits = model.prefill(_padded(prompts).cuda(), lengths, cache, rope)
        seqs = [list(p) for p in prompts]
        for _ in range(4):
            for b in range(3):
                x = torch.tensor([seqs[b]], device="cuda")
                assert_within_baseline(logits[b], model(x)[0, -1], model32(x)[0, -1], floor=1e-3, what="logits")
            tokens = logits.argmax(-1)
            for b in range(3):
                seqs[b].append(int(tokens[b]))
            logits = model.decode(tokens, cache, rope, seq_len=64)
            cache.lengths += 1


@pytest.mark.gpu
def test_flash_attention_paths_are_as_accurate_as_sdpa():
    pytest.importorskip("flash_attn")
    model32, _ = tiny_pair(seed=16)
    model32 = model32.to("cuda")
    model = Llama.from_hf(model32.hf_state_dict(), model32.config, dtype=torch.bfloat16, device="cuda")
    lengths = [7, 33, 20]
    prompts = _padded(_prompts(lengths, seed=17)).cuda()

    def run(m, attention, next_tokens=None):
        cache = KVCache.allocate(m.config, 3, 256, dtype=m.dtype, device="cuda")
        rope = rope_table(m.config, 256, "cuda")
        with torch.no_grad():
            first = m.prefill(prompts, lengths, cache, rope, attention=attention)
            tokens = first.argmax(-1) if next_tokens is None else next_tokens
            second = m.decode(tokens, cache, rope, attention=attention)
        return first, second, tokens

    oracle_first, oracle_second, tokens = run(model32, "sdpa")
    sdpa_first, sdpa_second, _ = run(model, "sdpa", tokens)
    flash_first, flash_second, _ = run(model, "flash", tokens)
    assert_within_baseline(flash_first, sdpa_first, oracle_first, floor=1e-3, what="prefill logits")
    assert_within_baseline(flash_second, sdpa_second, oracle_second, floor=1e-3, what="decode logits")


# ---------------------------------------------------------------------------------------------
# The fused decode path (rope_kv_write, add_rms_norm, silu_mul): Triton under the interpreter on CPU.


def _cached_run(model, backend, prompts, lengths, steps, seed=0):
    """Prefill (reference ops), then ``steps`` decode steps with ``backend``: the logits of every step and the cache."""
    cache = KVCache.allocate(model.config, len(lengths) + 1, 48, dtype=model.dtype, device="cpu")
    rope = rope_table(model.config, 48, "cpu")
    g = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        model.prefill(_padded(prompts), lengths, cache, rope, backend="torch")
        for _ in range(steps):
            tokens = torch.randint(0, 256, (len(lengths),), generator=g)
            out.append(model.decode(tokens, cache, rope, seq_len=40, backend=backend))
            cache.lengths[: len(lengths)] += 1
    return out, cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_decode_matches_the_unfused_path(dtype):
    """Every step's logits and the cache it writes: the fused ops' error against a float64 run is
    at most twice the unfused (reference) path's error in the same dtype, plus a floor."""
    model32, _ = tiny_pair(seed=21)
    model = Llama.from_hf(model32.hf_state_dict(), model32.config, dtype=dtype)
    model64 = Llama.from_hf(model32.hf_state_dict(), model32.config, dtype=torch.float64)
    lengths = [5, 11, 2]
    prompts = _prompts(lengths, seed=22)
    fused, fused_cache = _cached_run(model, "triton", prompts, lengths, steps=4)
    unfused, unfused_cache = _cached_run(model, "torch", prompts, lengths, steps=4)
    oracle, oracle_cache = _cached_run(model64, "torch", prompts, lengths, steps=4)
    floor = 1e-6 if dtype == torch.float32 else 1e-3
    for step, (a, b, o) in enumerate(zip(fused, unfused, oracle)):
        assert_within_baseline(a, b, o, floor=floor, what=f"step {step} logits")
    for name in ("k", "v"):
        assert_within_baseline(getattr(fused_cache, name), getattr(unfused_cache, name), getattr(oracle_cache, name),
                               floor=floor, what=f"cache.{name}")
    assert torch.equal(fused_cache.lengths, unfused_cache.lengths)


def test_fused_forward_and_prefill_match_the_unfused_path():
    model, _ = tiny_pair(seed=23)
    lengths = [6, 13]
    tokens = _padded(_prompts(lengths, seed=24))
    cache = KVCache.allocate(model.config, 2, 16, dtype=torch.float32, device="cpu")
    rope = rope_table(model.config, 16, "cpu")
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, backend="triton"), model(tokens, backend="torch"),
                                   rtol=1e-5, atol=1e-5)
        fused = model.prefill(tokens, lengths, cache, rope, backend="triton")
        torch.testing.assert_close(fused, model.prefill(tokens, lengths, cache, rope, backend="torch"),
                                   rtol=1e-5, atol=1e-5)
    for call in (lambda: model(tokens, backend="cuda"),
                 lambda: model.prefill(tokens, lengths, cache, rope, backend=None),
                 lambda: model.decode(tokens[:, 0], cache, rope, backend="fused")):
        with pytest.raises(ValueError, match=r"Llama\.\w+: backend must be one of \('auto', 'triton', 'torch'\)"):
            call()


def _ops_per_decode_step(config, backend):
    """Ops that do work in one ``Llama.decode`` call, by name, as the dispatcher hands them out.

    What is counted: every operator call that reaches the dispatcher's Python key below autograd
    (a ``TorchDispatchMode``), except views (``OpOverload.is_view``: slices, transposes, reshapes
    that move no data). A custom op counts once, whatever its implementation runs inside (the
    mode is off while an op runs). A composite op counts as the ops it decomposes into, so on
    CPU ``F.rms_norm`` counts 6 where CUDA runs one fused kernel, and SDPA counts 1. The torch
    profiler would be the obvious tool, but on this torch it drops some calls of Python custom
    ops (``seedfast::silu_mul`` called through its ``OpOverload`` is missing from its events
    while ``seedfast::add_rms_norm`` is there), so it cannot hold a count.
    """
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class CountOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                self.ops[func.name()] += 1
            return func(*args, **(kwargs or {}))

    model = Llama(config).eval()
    cache = KVCache.allocate(config, 2, 16, dtype=torch.float32, device="cpu")
    cache.lengths.copy_(torch.tensor([3, 7]))
    rope = rope_table(config, 16, "cpu")
    with torch.no_grad(), CountOps() as counter:
        model.decode(torch.tensor([5, 9]), cache, rope, seq_len=12, backend=backend)
    return counter.ops


def test_fused_decode_step_runs_at_most_12_ops_per_layer_plus_a_constant():
    """Per layer: 4 GEMMs (qkv, o, gate/up, down), rope_kv_write, SDPA, 2 add_rms_norm, silu_mul = 9.
    The constant: the additive mask (4), the embedding, the first layer's plain RMSNorm (6 on
    CPU) and the output GEMM = 12. The unfused path (the torch reference ops) is far above the
    bound per layer: RoPE, the cache writes, residual adds and norms each split into several ops."""
    two = _ops_per_decode_step(TINY, "triton")
    four = _ops_per_decode_step(dataclasses.replace(TINY, n_layers=4), "triton")
    per_layer = (sum(four.values()) - sum(two.values())) / 2
    constant = sum(two.values()) - 2 * per_layer
    assert per_layer <= 12 and constant <= 16, (per_layer, constant, dict(two))
    assert (per_layer, constant) == (9, 12), dict(two)
    assert two["seedfast::rope_kv_write"] == 2 and two["seedfast::silu_mul"] == 2
    assert two["seedfast::add_rms_norm"] == 4 and "aten::index_put_" not in two
    unfused_two = _ops_per_decode_step(TINY, "torch")
    unfused_four = _ops_per_decode_step(dataclasses.replace(TINY, n_layers=4), "torch")
    assert (sum(unfused_four.values()) - sum(unfused_two.values())) / 2 > 12


@pytest.mark.gpu
def test_cuda_fused_decode_is_as_accurate_as_unfused_and_within_the_kernel_bound():
    """On a GPU: the fused (auto) decode against the unfused ops in bf16, both against fp32; and the
    CUDA kernels one decode step launches (profiler, CUDA activity), per layer and constant."""
    from torch.profiler import ProfilerActivity, profile

    model32, _ = tiny_pair(seed=25)
    model32 = model32.to("cuda")
    model = Llama.from_hf(model32.hf_state_dict(), model32.config, dtype=torch.bfloat16, device="cuda")
    lengths = [7, 33, 20]
    prompts = _padded(_prompts(lengths, seed=26)).cuda()

    def run(m, backend):
        cache = KVCache.allocate(m.config, 3, 128, dtype=m.dtype, device="cuda")
        rope = rope_table(m.config, 128, "cuda")
        with torch.no_grad():
            m.prefill(prompts, lengths, cache, rope, backend="torch")
            return m.decode(torch.tensor([5, 9, 11], device="cuda"), cache, rope, seq_len=64, backend=backend)

    assert_within_baseline(run(model, "auto"), run(model, "torch"), run(model32, "torch"), floor=1e-3,
                           what="decode logits")

    def kernels_per_step(n_layers):
        m = Llama(dataclasses.replace(TINY, n_layers=n_layers)).to(device="cuda", dtype=torch.bfloat16).eval()
        cache = KVCache.allocate(m.config, 2, 64, dtype=m.dtype, device="cuda")
        rope = rope_table(m.config, 64, "cuda")
        tokens = torch.tensor([5, 9], device="cuda")
        with torch.no_grad():
            m.decode(tokens, cache, rope, seq_len=64)  # warm-up: Triton compiles outside the profile
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                m.decode(tokens, cache, rope, seq_len=64)
                torch.cuda.synchronize()
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)

    two, four = kernels_per_step(2), kernels_per_step(4)
    per_layer = (four - two) / 2
    assert per_layer <= 12 and two - 2 * per_layer <= 16, (two, four)
