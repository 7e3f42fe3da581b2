"""Benchmark of SEED-LLaMA decoding against transformers, in the same process on the same weights.

On CUDA: the SEED-LLaMA 8B config (Vicuna-7B + visual vocabulary) with random bf16 weights (no
download). On CPU: the tiny config in fp32; a smoke run that claims nothing.

Modes (each closure is one whole call; ``Case.params["tokens"]`` is the tokens it produces, so
tokens/s = tokens / median time; :func:`summarize` prints them):

* ``hbm-copy``: a device-to-device copy, measuring the memory bandwidth of this run (bytes =
  read + write). Only seedfast runs it.
* ``decode``: batch-1 greedy decoding of ``new_tokens`` after a short prompt, **decode steps
  alone**: the prompt is prefilled and the first token sampled when the case is built, and each
  timed call restores that state (a few small device copies) and runs ``new_tokens`` steps. So
  prefill, allocation, CUDA-graph capture and compilation stay out of the time. ``bytes`` = per
  token, every weight read once plus the valid KV cache (``weights_MB`` and ``kv_MB_per_token``,
  the average over the steps, in the params), summed over the tokens: what a bandwidth-bound
  decoder must move, so ``gbps / copy gbps`` is the fraction of the HBM roofline;
  :func:`summarize` prints the calculation beside each row.
* ``image-gen``: a batch of prompts ending in ``<img>`` (as SEED's ``force_boi``) sampling the
  32 codes and ``</img>`` (temperature 1, top-p 0.5; exactly 33 tokens a row), whole ``generate``
  calls (prefill included) on both sides; transformers enforces the grammar with
  :class:`seedfast.integrations.ImageGrammarLogitsProcessor`.
* ``prefill``: one prompt of ``prompt`` tokens into the cache (logits of the last token).

Implementations: ``seedfast`` (CUDA graphs on CUDA), ``seedfast-eager`` (the same without graphs:
what the graphs buy), ``hf-static`` (transformers with a static cache, eager: the decode steps
as a loop of forwards over a ``StaticCache``, image generation through ``generate`` with
compilation off) and, in :data:`HF_COMPILE` (full runs of bench/bench_decode.py), ``hf-compile``
(the same decode step under ``torch.compile(mode="reduce-overhead")``, gpt-fast style, and
``generate`` with transformers' automatic compilation, whose default ``CompileConfig`` is
``mode="reduce-overhead"`` too; CUDA only). The transformers model
shares seedfast's weight tensors (views), so both read the same bytes.
"""
from __future__ import annotations

import functools
import inspect

import torch

from dataclasses import fields

from seedfast.benchmarks.harness import Case, Impl, PeerUnavailable, RunResult
from seedfast.generation import SamplingParams, generate
from seedfast.generation.cuda_graphs import DecodeRunner, RowSettings
from seedfast.integrations import ImageGrammarLogitsProcessor
from seedfast.models.kv_cache import KVCache, cache_bytes_per_token
from seedfast.models.llama import Llama, LlamaConfig, resolve_attention, rope_table
from seedfast.models.seed_llama import seed_llama_vocab, tiny_visual_vocab
from seedfast.visual_vocab import VisualVocab

NAME = "decode"
IMAGE_TOKENS = 33  # 32 codes + </img> after a forced <img>
IMAGE_SAMPLING = dict(temperature=1.0, top_k=0, top_p=0.5)  # the official scripts' settings, top-k off


def _setup(device: torch.device) -> tuple[str, LlamaConfig, torch.dtype, VisualVocab]:
    if device.type == "cuda":
        return "seed-llama-8b", LlamaConfig.seed_llama_8b(), torch.bfloat16, seed_llama_vocab()
    return "tiny", LlamaConfig.tiny(), torch.float32, tiny_visual_vocab()


def cases(*, quick: bool, device: torch.device) -> list[Case]:
    """Copy bandwidth, batch-1 decode, batched image generation and prefill for this device's model."""
    name, config, dtype, _ = _setup(device)
    dt = "bf16" if dtype == torch.bfloat16 else "fp32"
    cuda = device.type == "cuda"
    weights = _weight_bytes(config, dtype)
    per_token = cache_bytes_per_token(config, dtype)
    out = []
    copy_mib = 2048 if cuda else 64
    out.append(Case(NAME, "hbm-copy", {"MiB": copy_mib}, bytes=2.0 * copy_mib * 2**20, size=copy_mib))
    prompt = 32
    new = (64 if quick else 256) if cuda else 16
    # Step i feeds the token at position prompt + i: it reads the prompt + i cached tokens and its own.
    cache = sum(prompt + i + 1 for i in range(new)) * per_token
    out.append(Case(NAME, "decode", {"model": name, "batch": 1, "prompt": prompt, "new_tokens": new, "dtype": dt,
                                     "tokens": new, "weights_MB": round(weights / 1e6, 3),
                                     "kv_MB_per_token": round(cache / new / 1e6, 3)},
                    flops=2.0 * _matmul_params(config) * new, bytes=float(new * weights + cache), size=new))
    for batch in ((64, 256) if cuda else (8,)):
        prompt = 24
        tokens = batch * IMAGE_TOKENS
        cache = batch * sum(prompt + 1 + i for i in range(IMAGE_TOKENS)) * per_token
        out.append(Case(NAME, "image-gen", {"model": name, "batch": batch, "prompt": prompt + 1,
                                            "new_tokens": IMAGE_TOKENS, "dtype": dt, "tokens": tokens},
                        flops=2.0 * _matmul_params(config) * tokens,
                        bytes=float(IMAGE_TOKENS * weights + cache), size=tokens))
    for prompt in ((1024, 4096) if cuda else (128,)):
        attn = 2.0 * config.n_layers * prompt * prompt * config.n_heads * config.head_dim  # causal QKᵀ and PV
        out.append(Case(NAME, "prefill", {"model": name, "batch": 1, "prompt": prompt, "dtype": dt, "tokens": prompt},
                        flops=2.0 * _matmul_params(config) * prompt + attn, bytes=float(weights), size=prompt))
    return out


def _matmul_params(config: LlamaConfig) -> int:
    """Weights that multiply each token (everything but the embedding table)."""
    c = config
    per_layer = c.dim * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim + c.n_heads * c.head_dim * c.dim
    per_layer += 3 * c.dim * c.intermediate_size
    return c.n_layers * per_layer + c.vocab_size * c.dim


def _weight_bytes(config: LlamaConfig, dtype: torch.dtype) -> int:
    """Bytes one decode step reads from the weights: every matrix and norm (one embedding row, ignored)."""
    norms = (2 * config.n_layers + 1) * config.dim
    return (_matmul_params(config) + norms) * torch.empty((), dtype=dtype).element_size()


@functools.cache
def _models(device_str: str) -> tuple[Llama, object]:
    """seedfast's model with random weights, and a transformers model on the same tensors (cached per run)."""
    device = torch.device(device_str)
    _, config, dtype, _ = _setup(device)
    with torch.device("meta"):
        model = Llama(config).to(dtype)
    model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return model.eval(), _hf_view(model)


def _hf_view(model: Llama):
    """A transformers ``LlamaForCausalLM`` whose parameters are views of ``model`` 's (no copy)."""
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers import LlamaForCausalLM

    cfg = HFLlamaConfig(**model.config.to_hf_dict(), pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.device("meta"):
        hf = LlamaForCausalLM(cfg)
    hf.load_state_dict(model.hf_state_dict(), strict=True, assign=True)
    with torch.device(model.device):
        hf.model.rotary_emb = type(hf.model.rotary_emb)(cfg)  # its buffers are not in the state dict
    return hf.eval()


def _prompts(case: Case, vocab: VisualVocab, *, force_image: bool) -> list[list[int]]:
    p = case.params
    g = torch.Generator().manual_seed(1)
    length = p["prompt"] - 1 if force_image else p["prompt"]
    rows = [[1] + torch.randint(3, vocab.text_vocab_size, (length - 1,), generator=g).tolist()
            for _ in range(p["batch"])]
    return [r + [vocab.boi_id] for r in rows] if force_image else rows


def _build_seedfast(graphs: bool):
    def build(case: Case, device: torch.device):
        model, _ = _models(str(device))
        _, _, _, vocab = _setup(device)
        use_graphs = graphs and device.type == "cuda"
        if case.mode == "hbm-copy":
            if not graphs:
                raise PeerUnavailable("the copy-bandwidth case is seedfast's only")
            src = torch.empty(case.params["MiB"] * 2**20, dtype=torch.uint8, device=device)
            dst = torch.empty_like(src)
            return lambda: dst.copy_(src)
        if case.mode == "prefill":
            if not graphs:
                raise PeerUnavailable("prefill is never graph-captured: it is the seedfast row")
            return _prefill_closure(model, case, device, vocab)
        if case.mode == "decode":
            return _decode_steps_closure(model, case, vocab, use_graphs)
        prompts = _prompts(case, vocab, force_image=True)

        def run():
            sampling = SamplingParams(max_new_tokens=case.params["new_tokens"], **IMAGE_SAMPLING)
            return generate(model, prompts, sampling, vocab=vocab, ignore_eos=True, use_cuda_graphs=use_graphs)
        return run
    return build


def _decode_steps_closure(model: Llama, case: Case, vocab: VisualVocab, use_graphs: bool):
    """``new_tokens`` greedy decode steps of a prefilled runner; returns their tokens ``[B, new_tokens]``.

    The runner is prefilled here; every call first restores its post-prefill state (the per-row
    state, the sampler's buffers, the cache lengths: the cached keys past them are rewritten
    with the same values), so each call decodes the same tokens from the same positions.
    """
    prompts = _prompts(case, vocab, force_image=False)
    b, new = len(prompts), case.params["new_tokens"]
    positions = case.params["prompt"] + new + 1 + vocab.codes_per_image  # what DecodeRunner.start asks for
    runner = DecodeRunner(model, vocab, batch_size=b, max_seq_len=positions, use_cuda_graphs=use_graphs)
    runner.start(prompts, RowSettings(image_pos=[-1] * b, limits=[new + 1] * b, temperature=[0.0] * b, top_k=[0] * b,
                                      top_p=[1.0] * b, seed=[0] * b, eos=[-1] * b))
    live = [getattr(runner.state, f.name) for f in fields(runner.state)]
    live += [*runner.sampler.buffers(), runner.cache.lengths]
    saved = [t.clone() for t in live]
    steps = runner.steps

    def run():
        for tensor, value in zip(live, saved):
            tensor.copy_(value)
        runner.steps = steps
        for _ in range(new):
            runner.step()
        return runner.state.out[:b, steps: steps + new]
    return run


def _prefill_closure(model: Llama, case: Case, device: torch.device, vocab: VisualVocab):
    p = case.params["prompt"]
    cache = KVCache.allocate(model.config, 1, p, dtype=model.dtype, device=device)
    rope = rope_table(model.config, p, device)
    tokens = torch.randint(3, vocab.text_vocab_size, (1, p), device=device)
    attention = resolve_attention("auto", device, model.dtype)

    def run():
        with torch.no_grad():
            return model.prefill(tokens, [p], cache, rope, attention=attention)
    return run


def _build_hf(compiled: bool):
    def build(case: Case, device: torch.device):
        if case.mode == "hbm-copy":
            raise PeerUnavailable("the copy-bandwidth case is seedfast's only")
        if compiled and device.type != "cuda":
            raise PeerUnavailable("transformers compiles generate only on CUDA")
        model, hf = _models(str(device))
        _, _, _, vocab = _setup(device)
        if case.mode == "prefill":
            if compiled:
                raise PeerUnavailable("transformers compiles generate, not a bare forward")
            tokens = torch.randint(3, vocab.text_vocab_size, (1, case.params["prompt"]), device=device)

            def forward():
                with torch.no_grad():
                    return hf(input_ids=tokens, logits_to_keep=1, use_cache=True).logits
            return forward
        if case.mode == "decode":
            return _hf_decode_steps_closure(hf, case, vocab, device, compiled)
        from transformers import LogitsProcessorList

        ids = torch.tensor(_prompts(case, vocab, force_image=True), device=device)  # one length: no padding
        new = case.params["new_tokens"]
        grammar = LogitsProcessorList([ImageGrammarLogitsProcessor(vocab)])

        def run():
            with torch.no_grad():
                return hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                   min_new_tokens=new, cache_implementation="static", disable_compile=not compiled,
                                   pad_token_id=0, logits_processor=grammar, do_sample=True, **IMAGE_SAMPLING)
        return run
    return build


def _hf_decode_steps_closure(hf, case: Case, vocab: VisualVocab, device: torch.device, compiled: bool):
    """transformers' decode steps alone: greedy forwards of one token over a ``StaticCache`` filled here.

    Every call restarts at the first generated position (a static cache masks what lies past
    the position it is given, so the previous call's keys need no reset; a cache that counts its
    length gets its counters restored). ``compiled``: the step runs under
    ``torch.compile(mode="reduce-overhead")`` (CUDA graphs), as gpt-fast does. Returns the tokens
    ``[B, new_tokens]``.
    """
    from transformers import StaticCache

    ids = torch.tensor(_prompts(case, vocab, force_image=False), device=device)
    p, new = ids.shape[1], case.params["new_tokens"]
    cache = StaticCache(config=hf.config, max_cache_len=p + new + 1)
    # Versions of transformers whose forward takes ``cache_position`` write the cache there; newer
    # ones (5.25) keep a per-layer counter in the cache instead (restored below).
    explicit = "cache_position" in inspect.signature(hf.model.forward).parameters

    def forward(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        where = dict(cache_position=positions) if explicit else {}
        out = hf(input_ids=tokens, past_key_values=cache, position_ids=positions[None], use_cache=True, **where)
        return out.logits[:, -1].argmax(-1, keepdim=True)

    with torch.no_grad():
        first = forward(ids, torch.arange(p, device=device))
    counters = [t for layer in getattr(cache, "layers", ()) for t in vars(layer).values()
                if isinstance(t, torch.Tensor) and t.numel() == 1]
    saved = [t.clone() for t in counters]
    positions = [torch.tensor([p + i], device=device) for i in range(new)]
    step = torch.compile(forward, mode="reduce-overhead", fullgraph=True) if compiled else forward

    def run():
        for counter, value in zip(counters, saved):
            counter.copy_(value)
        token, out = first, []
        with torch.no_grad():
            for position in positions:
                # A copy: a replayed CUDA graph overwrites its output in the next step.
                token = step(token, position).clone()
                out.append(token)
        return torch.cat(out, 1)
    return run


def summarize(result: RunResult) -> list[str]:
    """Tokens/s per case and implementation, and batch-1 decode as a fraction of the HBM roofline:
    its bytes/s (weights + KV read per token × tokens/s) over the copy bandwidth measured in the
    same run, with the calculation printed on the row."""
    ms = [m for m in result.measurements if m.op == NAME]
    copy = next((m for m in ms if m.mode == "hbm-copy" and m.gbps), None)
    lines = []
    if copy:
        lines.append(f"decode: copy bandwidth {copy.gbps:.0f} GB/s (read + write)")
    for m in ms:
        if m.mode == "hbm-copy" or m.error or not m.median_ms:
            continue
        rate = m.case["tokens"] / (m.median_ms / 1e3)
        line = f"decode: {m.mode} {' '.join(f'{k}={v}' for k, v in m.case.items())} · "
        if m.mode == "decode" and copy and m.gbps:
            split = ""
            if "weights_MB" in m.case and "kv_MB_per_token" in m.case:
                split = f" ({m.case['weights_MB']:.3f} weights + {m.case['kv_MB_per_token']:.3f} KV)"
            line += (f"{1e3 * m.gbps / rate:.3f} MB read per token{split} × tokens/s = {m.gbps:.0f} GB/s of the "
                     f"{copy.gbps:.0f} GB/s copy · {m.impl}: {rate:,.1f} tokens/s, "
                     f"{100 * m.gbps / copy.gbps:.1f}% of the HBM roofline")
        else:
            line += f"{m.impl}: {rate:,.1f} tokens/s"
        lines.append(line)
    return lines


HF_COMPILE = Impl("hf-compile", _build_hf(compiled=True))
# hf-compile compiles the 7B model for each batch shape (minutes): bench/bench_decode.py adds it
# to full runs; the default list (``seedfast bench --op decode``) leaves it out.
impls = [
    Impl("seedfast", _build_seedfast(graphs=True), ours=True),
    Impl("seedfast-eager", _build_seedfast(graphs=False)),
    Impl("hf-static", _build_hf(compiled=False)),
]
