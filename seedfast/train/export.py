"""Trained weights in and out: full (unsharded) state dicts for checkpoints, and the finished
model in a folder the rest of seedfast loads.

State dicts go through ``torch.distributed.checkpoint.state_dict``, which handles one process,
DDP and FSDP2 alike: *full* tensors gathered to rank 0's CPU (``cpu_offload``), trained
parameters only (``ignore_frozen_params``; frozen ones are rebuilt from the config). Names are
the trained model's own (``Qformer.bert…`` for the tokenizer, ``layers.0.attention.wqkv…``
for the LLM). Loading broadcasts from rank 0 under several processes, so only rank 0 reads files.

``DIR/final`` (written when ``--steps`` is reached):

* stages 1–2: ``SeedTokenizer.save`` format (``model.safetensors`` + ``config.json``): the
  trained weights over a fresh float32 build of the frozen ones (no bf16 rounding of the ViT);
* stage 3: a Hugging Face LLaMA folder (``config.json``, ``model.safetensors``) with LoRA merged,
  written by :func:`seedfast.models.llama_hf.save_hf`, loadable by
  :meth:`seedfast.models.llama.Llama.from_hf` and by ``transformers``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from seedfast.train import distributed as D
from seedfast.train.checkpoint import CheckpointError
from seedfast.train.run import Run

PREFIX = "model."
"""The objective holds the trained model as ``.model``."""
FINAL_DIR = "final"


def _options(run: Run, *, saving: bool) -> StateDictOptions:
    if saving:
        return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return StateDictOptions(full_state_dict=True, broadcast_from_rank0=run.info.distributed, strict=False)


def _strip(name: str) -> str:
    return name.removeprefix(PREFIX)


def trained_state(run: Run) -> dict[str, torch.Tensor]:
    """Collective: the trained parameters, full, on rank 0's CPU (empty on other ranks)."""
    sd = get_model_state_dict(run.objective, options=_options(run, saving=True))
    return {_strip(k): v for k, v in sd.items()}


def trained_optimizer_state(run: Run) -> dict[str, Any]:
    """Collective: the optimizer state keyed by parameter name, full, on rank 0 (empty elsewhere)."""
    osd = get_optimizer_state_dict(run.objective, run.optimizer, options=_options(run, saving=True))
    if not osd:
        return {"state": {}, "param_groups": []}
    return {"state": {_strip(k): v for k, v in osd["state"].items()},
            "param_groups": [{**g, "params": [_strip(p) for p in g["params"]]} for g in osd["param_groups"]]}


def trained_names(run: Run) -> set[str]:
    return {_strip(n) for n, p in run.objective.named_parameters() if p.requires_grad}


def load_trained(run: Run, model: dict[str, torch.Tensor], optimizer: dict[str, Any], *, source: str) -> None:
    """Collective: put a checkpoint's weights and optimizer state into ``run`` (rank 0's arguments count).

    Raises
    ------
    CheckpointError
        The checkpoint's tensors are not exactly this run's trained parameters.
    """
    problem = None
    if run.info.is_main:
        want, got = trained_names(run), set(model)
        if want != got:
            problem = (f"{source}: holds {len(got)} trained tensors, this run trains {len(want)} "
                       f"(missing e.g. {sorted(want - got)[:3]}, unexpected e.g. {sorted(got - want)[:3]})")
    problem = D.broadcast_object(problem, run.info)
    if problem:
        raise CheckpointError(problem)
    opts = _options(run, saving=False)
    set_model_state_dict(run.objective, {PREFIX + k: v for k, v in model.items()}, options=opts)
    if optimizer:
        optimizer = {"state": {PREFIX + k: v for k, v in optimizer["state"].items()},
                     "param_groups": [{**g, "params": [PREFIX + p for p in g["params"]]}
                                      for g in optimizer["param_groups"]]}
    set_optimizer_state_dict(run.objective, run.optimizer, optimizer, options=opts)


def export_final(run: Run, out: str | Path) -> Path:
    """Collective: write the finished model to ``out/final`` (rank 0), atomically; return the folder.

    Both writers (``SeedTokenizer.save``, :func:`~seedfast.models.llama_hf.save_hf`) go through
    :func:`seedfast.checkpoint_io.write_folder`, so the folder is complete or absent.
    """
    trained = trained_state(run)
    final = Path(out) / FINAL_DIR
    if run.info.is_main:
        if run.cfg.stage in (1, 2):
            _write_tokenizer(run, trained, final)
        else:
            _write_llm(run, trained, final)
    D.barrier(run.info)
    return final


def _write_tokenizer(run: Run, trained: dict[str, torch.Tensor], folder: Path) -> None:
    from seedfast.train.stages import build_tokenizer

    model, _ = build_tokenizer(run.cfg, run.cfg.stage)
    model.load_state_dict({k: v.float() for k, v in trained.items()}, strict=False)
    model.save(folder)


def _write_llm(run: Run, trained: dict[str, torch.Tensor], folder: Path) -> None:
    from seedfast.models.llama_hf import save_hf
    from seedfast.train.config import model_config
    from seedfast.train.stages import build_llm, merge_lora

    cfg = run.cfg
    model = build_llm(cfg)
    model.load_state_dict({k: v.float() for k, v in trained.items()}, strict=False)
    state = merge_lora(model.state_dict(), cfg) if cfg.lora.enabled else model.state_dict()
    save_hf(state, model_config("llm", cfg.llm), folder)
