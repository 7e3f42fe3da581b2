"""The user commands on the released SEED folders (one :class:`~seedfast.pipeline.SeedPipeline` from
flags), and batched generation for any pipeline (the demo's too).

``--tokenizer`` (a ``seedfast convert`` folder, or ``seed_quantizer.pt`` with ``--vit``),
``--llm`` (a Hugging Face SEED-LLaMA folder; its text tokenizer from the same folder or
``--text-tokenizer``), ``--detokenizer`` (a diffusers unCLIP folder), ``--template 8b|14b``; or
``--models DIR`` holding :data:`MODELS_MANIFEST`, which names the same parts (paths relative to
``DIR``).

Batched generation (:func:`run_requests`) reads one JSON request per line, runs them in batches,
writes one PNG or text file per request and a ``results.jsonl``; under ``torchrun`` each process
takes every ``WORLD_SIZE``-th request and rank 0 writes the merged ``results.jsonl``. Each request
carries its own seed and samples on stream 0, so its output does not depend on the batch, the
row or the process it ran on.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seedfast.demo.commands import CommandError

MODELS_MANIFEST = "seedfast-models.json"
"""``{"tokenizer": ..., "llm": ..., "detokenizer": ..., "text_tokenizer"?, "vit"?, "template"?}``."""
PART_KEYS = ("tokenizer", "llm", "detokenizer", "text_tokenizer", "vit", "template")
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "max_new_tokens")
MAX_SEED = 2**63


def read_manifest(folder: str | Path) -> dict[str, str]:
    """The parts :data:`MODELS_MANIFEST` in ``folder`` names, as paths resolved against ``folder``.

    Raises
    ------
    CommandError
        No manifest, not a JSON object, an unknown key or a value that is not a string.
    """
    path = Path(folder) / MODELS_MANIFEST
    if not path.is_file():
        raise CommandError(f"--models {folder}: no {MODELS_MANIFEST} in it (a JSON object naming tokenizer, llm, "
                           "detokenizer)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CommandError(f"{path}: not valid JSON ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise CommandError(f"{path}: expected a JSON object naming {', '.join(PART_KEYS)}")
    unknown = sorted(set(data) - set(PART_KEYS))
    if unknown:
        raise CommandError(f"{path}: unknown key(s) {', '.join(unknown)}; expected {', '.join(PART_KEYS)}")
    for key, value in data.items():
        if not isinstance(value, str):
            raise CommandError(f"{path}: {key} must be a string, got {value!r}")
    return {k: (v if k == "template" else str(Path(folder) / v)) for k, v in data.items()}


def load_pipeline(parts: dict[str, str | None], *, device: str = "cpu", need_llm: bool = True,
                  need_detokenizer: bool = True) -> Any:
    """A :class:`~seedfast.pipeline.SeedPipeline` over the named folders.

    Raises
    ------
    CommandError
        A missing part the command needs, or a loader's error (one line).
    """
    from seedfast.pipeline import SeedPipeline

    needed = ["tokenizer", *(["llm"] if need_llm else []), *(["detokenizer"] if need_detokenizer else [])]
    for key in needed:
        if not parts.get(key):
            raise CommandError(f"this command needs --{key.replace('_', '-')} (or --models DIR naming it)")
    try:
        return SeedPipeline.from_pretrained(
            parts["tokenizer"], parts.get("llm") if need_llm else None,
            parts.get("detokenizer") if need_detokenizer else None, text_tokenizer=parts.get("text_tokenizer"),
            vit=parts.get("vit"), template=parts.get("template"), device=device)
    except (OSError, ValueError, KeyError, ImportError) as err:
        raise CommandError(f"cannot load the models: {' '.join(str(err).split())}") from None


def read_rgb(path: str | Path) -> torch.Tensor:
    """An image file as ``[3, H, W]`` uint8 by the official transform's first step (``.convert("RGB")``).

    Raises
    ------
    CommandError
        No such file, or not an image.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise CommandError(f"no such image file: {path}")
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise CommandError(f"{path}: not an image ({' '.join(str(err).split())})") from None
    import numpy as np

    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


def check_seed(seed: object, where: str) -> int:
    """``seed`` as an int in ``[0, 2**63)`` (int64).

    Raises
    ------
    CommandError
        Naming ``where`` and the range.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise CommandError(f"{where} must be an integer in [0, 2**63), got {seed!r}")
    return seed


# -------------------------------------------------------------------------------------------------
# Batched generation


@dataclass(frozen=True)
class Request:
    """One line of a prompts file.

    Attributes
    ----------
    index : int
        Line order among the requests (0-based); names the output file.
    prompt : str
        What to draw, or the question about ``image``.
    seed : int
    image : str or None
        An image file: the request is answered in text; without one SEED-LLaMA draws an image.
    sampling : dict
        ``temperature``, ``top_k``, ``top_p``, ``max_new_tokens`` overrides.
    """

    index: int
    prompt: str
    seed: int
    image: str | None
    sampling: dict[str, Any]


def read_requests(path: str | Path, *, default_seed: int = 0) -> list[Request]:
    """The requests of a JSONL file (blank lines skipped); a request without a seed gets ``default_seed + index``.

    Raises
    ------
    CommandError
        Unreadable file, a line that is not a JSON object, a missing/non-string ``prompt``, an
        unknown key, a bad seed or sampling value (naming the line).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CommandError(f"--prompts {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CommandError(f"--prompts {path}: cannot read it ({' '.join(str(err).split())})") from None
    requests: list[Request] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise CommandError(f"{where}: not JSON ({err.msg})") from None
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            raise CommandError(f'{where}: expected an object with a "prompt" string')
        unknown = sorted(set(data) - {"prompt", "seed", "image", *SAMPLING_KEYS})
        if unknown:
            raise CommandError(f"{where}: unknown key(s) {', '.join(unknown)}")
        index = len(requests)
        seed = check_seed(data.get("seed", default_seed + index), f"{where}: seed")
        image = data.get("image")
        if image is not None and not isinstance(image, str):
            raise CommandError(f"{where}: image must be a file path string")
        if image is not None and not Path(image).is_absolute():
            image = str(path.parent / image)
        sampling = {k: data[k] for k in SAMPLING_KEYS if k in data}
        for key, value in sampling.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise CommandError(f"{where}: {key} must be a number, got {value!r}")
        requests.append(Request(index, data["prompt"], seed, image, sampling))
    if not requests:
        raise CommandError(f"--prompts {path}: no requests in it")
    return requests


def run_batch(pipe: Any, batch: Sequence[Request], read_image: Callable[[str], torch.Tensor] = read_rgb
              ) -> list[dict[str, Any]]:
    """One batch through the pipeline: image requests are answered in text, the others drawn.

    Returns one result dict per request: ``index``, ``prompt``, ``seed``, ``finish_reason`` and
    ``codes`` (+ ``pixels`` with a de-tokenizer) or ``image`` and ``text``.

    Raises
    ------
    CommandError
        A request the pipeline refuses (bad sampling values, a prompt beyond the context, words
        the text tokenizer does not know), naming the batch's requests.
    """
    from seedfast.models.seed_llama import BOI_TOKEN, IMAGE_PLACEHOLDER

    texts, images, params = [], [], []
    try:
        for r in batch:
            if r.image is None:
                texts.append(pipe.render(r.prompt) + BOI_TOKEN)
                images.append([])
                params.append(pipe.image_sampling.replace(**r.sampling,
                                                          max_new_tokens=pipe.vocab.codes_per_image + 1))
            else:
                texts.append(pipe.render(IMAGE_PLACEHOLDER + r.prompt))
                images.append([read_image(r.image)])
                params.append(pipe.sampling.replace(**r.sampling))
        replies = pipe.complete(texts, images, seed=[r.seed for r in batch], sampling=params)
    except ValueError as err:
        raise CommandError(f"requests {batch[0].index}..{batch[-1].index}: {' '.join(str(err).split())}") from None
    results = []
    for r, reply in zip(batch, replies):
        result: dict[str, Any] = {"index": r.index, "prompt": r.prompt, "seed": r.seed,
                                  "finish_reason": reply.finish_reason}
        if r.image is None:
            result["codes"] = reply.image_codes[0].tolist() if len(reply.image_codes) else []
            if reply.images is not None:
                result["pixels"] = reply.images[0]
        else:
            result["image"] = r.image
            result["text"] = reply.text_segments[0].strip()
        results.append(result)
    return results


def _distributed() -> tuple[int, int]:
    """``(rank, world_size)``; starts a process group under torchrun (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def run_requests(pipe: Any, requests: Sequence[Request], out: str | Path, *, batch_size: int,
                 progress: bool = True, read_image: Callable[[str], torch.Tensor] = read_rgb) -> Path:
    """Run ``requests`` in batches, write ``NNNNN.png`` / ``NNNNN.txt`` per request and ``results.jsonl``.

    ``read_image`` reads a request's image file as ``[3, H, W]`` uint8 (default: the official
    transform's first step, :func:`read_rgb`).

    Under torchrun each process runs every ``WORLD_SIZE``-th request; rank 0 writes the merged
    ``results.jsonl`` (one line per request, in request order). Files are written atomically.

    Returns
    -------
    Path
        ``results.jsonl``.
    """
    from tqdm import tqdm

    from seedfast.checkpoint_io import save_bytes
    from seedfast.demo.images import save_png

    rank, world = _distributed()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mine = [r for r in requests if r.index % world == rank]
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    bar = tqdm(total=len(mine), desc=f"generate (rank {rank})" if world > 1 else "generate", unit="req",
               disable=not progress)
    for i in range(0, len(mine), batch_size):
        for res in run_batch(pipe, mine[i:i + batch_size], read_image):
            name = f"{res['index']:05d}"
            if "pixels" in res:
                res["output"] = save_png(res.pop("pixels"), out / f"{name}.png").name
            elif "text" in res:
                res["output"] = save_bytes(out / f"{name}.txt", (res["text"] + "\n").encode("utf-8")).name
            records.append(res)
            bar.update(1)
    bar.close()
    seconds = time.perf_counter() - start
    if progress:
        print(f"rank {rank}: {len(mine)} requests in {seconds:.1f} s ({len(mine) / max(seconds, 1e-9):.2f} req/s)",
              flush=True)
    if world > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, records)
        records = [r for part in gathered for r in part]
    results = out / "results.jsonl"
    if rank == 0:
        records.sort(key=lambda r: r["index"])
        save_bytes(results, "".join(json.dumps(r) + "\n" for r in records).encode("utf-8"))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return results


__all__ = ["MODELS_MANIFEST", "Request", "check_seed", "load_pipeline", "read_manifest", "read_requests", "read_rgb",
           "run_batch", "run_requests"]
