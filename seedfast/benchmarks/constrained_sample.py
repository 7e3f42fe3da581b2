"""Benchmark of grammar-constrained sampling (:func:`seedfast.ops.constrained_sample`) against its peers.

Implementations, all run in the same process on the same inputs:

* ``seedfast`` (ours): the public op with ``backend="auto"``, i.e. the fused Triton kernel on
  CUDA (the torch reference on CPU, where numbers claim nothing).
* ``seedfast-cuda``: the same op through the CUDA C++ extension (``backend="cuda"``), a second
  implementation of ours reported as a peer so both appear side by side with the Triton row.
* ``torch-sort``: :func:`~seedfast.ops.constrained_sample.constrained_sample_reference`, the
  sort-based torch implementation (grammar mask, sort, cumsum, inverse CDF).
* ``torch-sort-compiled``: the same reference under ``torch.compile`` (CUDA only: on CPU the
  compile costs far more than the numbers could tell).
* ``flashinfer``: the grammar applied as an additive ``-inf`` bias per state, then FlashInfer's
  ``top_k_top_p_sampling_from_logits`` (masked ``argmax`` in the greedy mode). Optional.
* ``vllm``: the same bias, then vLLM's ``apply_top_k_top_p`` and an exponential race over the
  softmax, as vLLM's sampler does (``argmax`` when greedy). Optional.

Modes (temperature 1 unless greedy): ``top_k`` (top-k 50 only), ``top_p`` (top-p 0.9 only),
``sample`` (both) and ``greedy``. Rows mix the two grammar states: even rows are in text, odd
rows inside an image. Peers that are not installed are recorded as unavailable. Every op is called with ``check=False``:
the error check is one host synchronisation, which a decode loop does at most once per step.

:func:`graph_capture_check` captures the op in a CUDA graph and replays it with an advanced
offset (used by the GPU tests).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from seedfast.benchmarks.harness import Case, Impl, PeerUnavailable
from seedfast.models.seed_llama import seed_llama_vocab
from seedfast.ops.constrained_sample import VisualVocab, constrained_sample, constrained_sample_reference, grammar_masks

NAME = "constrained_sample"
TEMPERATURE = 1.0
TOP_K = 50
TOP_P = 0.9
# Mode → (top_k, top_p): 0 and 1.0 switch a filter off.
FILTERS = {"top_k": (TOP_K, 1.0), "top_p": (0, TOP_P), "sample": (TOP_K, TOP_P), "greedy": (TOP_K, TOP_P)}
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# A 152064-id vocabulary (Qwen-sized) with the 8192 codes at the very end.
LARGE_VOCAB = VisualVocab(text_vocab_size=143870, first_code_id=143872, num_codes=8192, boi_id=143870,
                          eoi_id=143871, eos_id=2)


def vocab_for(v: int) -> VisualVocab:
    """The layout benchmarked at vocabulary size ``v`` (SEED-LLaMA's, or codes at the end)."""
    if v == 40194:
        return seed_llama_vocab()
    if v == 152064:
        return LARGE_VOCAB
    raise ValueError(f"no benchmark layout for V={v}; use 40194 or 152064")


def cases(*, quick: bool, device: torch.device) -> list[Case]:
    """On CUDA, B ∈ {1, 8, 64, 256} × V ∈ {40194, 152064} × the modes top-k, top-p, both and
    greedy in bf16, and both filters in fp32 too; small CPU sets for regressions."""
    if device.type == "cuda":
        batches = [1, 256] if quick else [1, 8, 64, 256]
        vocabs = [40194] if quick else [40194, 152064]
        modes = ["sample", "greedy"] if quick else ["top_k", "top_p", "sample", "greedy"]
    else:
        batches = [1, 8] if quick else [1, 64]
        vocabs = [40194]
        modes = ["sample"] if quick else ["sample", "greedy"]
    out = []
    for mode in modes:
        dtypes = ["fp32", "bf16"] if device.type == "cuda" and mode == "sample" and not quick else (
            ["bf16"] if device.type == "cuda" else ["fp32"])
        for dt in dtypes:
            elt = torch.finfo(_DTYPES[dt]).bits // 8
            for v in vocabs:
                for b in batches:
                    # Logits read once; tokens, next positions and the per-row inputs.
                    moved = b * v * elt + b * (8 + 4 + 4 + 4 + 8 + 4 + 8 + 8)
                    out.append(Case(NAME, mode, {"B": b, "V": v, "dtype": dt}, bytes=float(moved), size=b))
    return out


def make_inputs(case: Case, device: torch.device) -> dict:
    """Logits (random normal × 2.5, so the top-50 and top-0.9 sets are tens to hundreds of
    tokens) and per-row tensors; even rows in text, odd rows inside an image."""
    p = case.params
    b, v = p["B"], p["V"]
    g = torch.Generator(device="cpu").manual_seed(0)
    logits = (torch.randn(b, v, generator=g) * 2.5).to(device=device, dtype=_DTYPES[p["dtype"]])
    rows = torch.arange(b)
    image_pos = torch.where(rows % 2 == 0, -1, rows % 32).to(device=device, dtype=torch.int32)
    greedy = case.mode == "greedy"
    top_k, top_p = FILTERS[case.mode]
    return {
        "logits": logits,
        "image_pos": image_pos,
        "vocab": vocab_for(v),
        "temperature": torch.full((b,), 0.0 if greedy else TEMPERATURE, device=device),
        "top_k": torch.full((b,), top_k, dtype=torch.int64, device=device),
        "top_p": torch.full((b,), top_p, device=device),
        "seed": torch.full((b,), 1234, dtype=torch.int64, device=device),
        "offset": torch.zeros(b, dtype=torch.int64, device=device),
    }


def grammar_bias(vocab: VisualVocab, v: int, device: torch.device) -> torch.Tensor:
    """``[2, V]`` additive masks (0 allowed, ``-inf`` forbidden) for text (row 0) and image (row 1)."""
    text, codes = grammar_masks(vocab, v, device)
    allowed = torch.stack([text, codes])
    return torch.zeros(allowed.shape, device=device).masked_fill_(~allowed, -math.inf)


def _build_seedfast(backend: str) -> Callable[[Case, torch.device], Callable[[], object]]:
    def build(case: Case, device: torch.device) -> Callable[[], object]:
        if backend == "cuda":
            if device.type != "cuda":
                raise PeerUnavailable("the CUDA C++ backend needs a CUDA device")
            from seedfast.ops.constrained_sample import cuda_extension

            try:
                cuda_extension()
            except RuntimeError as err:
                raise PeerUnavailable(str(err)) from err
        x = make_inputs(case, device)
        logits, image_pos = x.pop("logits"), x.pop("image_pos")
        return lambda: constrained_sample(logits, image_pos, check=False, backend=backend, **x)

    return build


def _build_torch_sort(case: Case, device: torch.device) -> Callable[[], object]:
    x = make_inputs(case, device)
    logits, image_pos = x.pop("logits"), x.pop("image_pos")
    return lambda: constrained_sample_reference(logits, image_pos, **x)


def _build_torch_sort_compiled(case: Case, device: torch.device) -> Callable[[], object]:
    if device.type != "cuda":
        raise PeerUnavailable("torch.compile of the reference is timed on CUDA only")
    x = make_inputs(case, device)
    logits, image_pos = x.pop("logits"), x.pop("image_pos")
    compiled = torch.compile(constrained_sample_reference, dynamic=False)
    return lambda: compiled(logits, image_pos, **x)


def _masked_logits_fn(case: Case, device: torch.device) -> tuple[dict, Callable[[], torch.Tensor]]:
    x = make_inputs(case, device)
    bias = grammar_bias(x["vocab"], case.params["V"], device)
    state = (x["image_pos"] >= 0).long()
    logits = x["logits"]
    return x, lambda: logits.float() + bias[state]


def _build_flashinfer(case: Case, device: torch.device) -> Callable[[], object]:
    if device.type != "cuda":
        raise PeerUnavailable("FlashInfer runs on CUDA only")
    try:
        from flashinfer.sampling import top_k_top_p_sampling_from_logits
    except ImportError as err:
        raise PeerUnavailable("flashinfer is not installed") from err
    _, masked = _masked_logits_fn(case, device)
    if case.mode == "greedy":
        return lambda: masked().argmax(-1)
    # Scalars: every row shares the settings, and FlashInfer's per-row arrays have their own dtypes.
    top_k, top_p = FILTERS[case.mode]
    if top_k == 0:
        from flashinfer.sampling import top_p_sampling_from_probs

        return lambda: top_p_sampling_from_probs(masked().softmax(-1), top_p)
    if top_p >= 1.0:
        from flashinfer.sampling import top_k_sampling_from_probs

        return lambda: top_k_sampling_from_probs(masked().softmax(-1), top_k)
    return lambda: top_k_top_p_sampling_from_logits(masked(), top_k, top_p)


def _build_vllm(case: Case, device: torch.device) -> Callable[[], object]:
    try:
        from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p
    except ImportError as err:
        raise PeerUnavailable("vllm (with vllm.v1.sample.ops.topk_topp_sampler) is not installed") from err
    x, masked = _masked_logits_fn(case, device)
    if case.mode == "greedy":
        return lambda: masked().argmax(-1)

    top_k, top_p = FILTERS[case.mode]
    # vLLM takes None for a filter that is off.
    k = x["top_k"] if top_k > 0 else None
    p = x["top_p"] if top_p < 1.0 else None

    def run() -> torch.Tensor:
        probs = apply_top_k_top_p(masked(), k, p).softmax(-1)
        return probs.div_(torch.empty_like(probs).exponential_()).argmax(-1)

    return run


impls = [
    Impl("seedfast", _build_seedfast("auto"), ours=True),
    Impl("seedfast-cuda", _build_seedfast("cuda")),
    Impl("torch-sort", _build_torch_sort),
    Impl("torch-sort-compiled", _build_torch_sort_compiled),
    Impl("flashinfer", _build_flashinfer),
    Impl("vllm", _build_vllm),
]


def graph_capture_check(device: torch.device, *, backend: str = "triton", batch: int = 256,
                        vocab_size: int = 40194) -> dict:
    """Capture :func:`constrained_sample` in a ``torch.cuda.CUDAGraph``, replay it, advance the
    offset tensor in place, replay again.

    Returns
    -------
    dict
        ``changed_fraction``: share of rows whose token changed between the two replays (near 1
        for these logits); ``replay_matches_eager``: both replays equal eager calls with the same
        offsets; ``grammar_ok``: every replayed token is allowed for its row.

    Raises
    ------
    RuntimeError
        ``device`` is not a CUDA device.
    """
    if device.type != "cuda":
        raise RuntimeError(f"graph_capture_check needs a CUDA device, got {device}")
    case = Case(NAME, "sample", {"B": batch, "V": vocab_size, "dtype": "bf16"})
    x = make_inputs(case, device)
    logits, image_pos, offset = x.pop("logits"), x.pop("image_pos"), x["offset"]

    def step(check: bool | None = None):
        return constrained_sample(logits, image_pos, check=check, backend=backend, **x)

    # Warm up on a side stream (Triton compiles, the extension builds) before capturing.
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            step(check=False)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tokens, _ = step()  # check=None: the host-side check is skipped while capturing
    graph.replay()
    first = tokens.clone()
    eager_first = step(check=False)[0]
    offset.add_(1)
    graph.replay()
    second = tokens.clone()
    eager_second = step(check=False)[0]
    torch.cuda.synchronize(device)
    text, codes = grammar_masks(x["vocab"], vocab_size, device)
    allowed = torch.where((image_pos < 0)[:, None], text, codes)
    grammar_ok = bool(allowed.gather(1, first[:, None]).all() and allowed.gather(1, second[:, None]).all())
    return {
        "backend": backend,
        "changed_fraction": (first != second).float().mean().item(),
        "replay_matches_eager": bool(torch.equal(first, eager_first) and torch.equal(second, eager_second)),
        "grammar_ok": grammar_ok,
    }
