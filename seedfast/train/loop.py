"""The training loop.

State is small by design. Step ``s`` (0-based) reads the samples the sampler assigns to ``s``,
seeds every random stream with ``step_seed(seed, s, rank)``, and uses learning rate
``learning_rate(optim, s)``; so weights, optimizer moments and ``s`` are all a checkpoint
needs, and ``--steps 4`` then ``--steps 8 --resume`` ends bit-identical to one ``--steps 8``
run. ``--steps N`` stops after global step N; the schedule's length is ``optim.total_steps``.
"""
from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seedfast.train import checkpoint as ckpt
from seedfast.train import distributed as D
from seedfast.train.config import ConfigError, OptimConfig, RunConfig
from seedfast.train.data import Prefetcher
from seedfast.train.export import export_final, load_trained, trained_state, trained_optimizer_state
from seedfast.train.inputs import MicroBatch
from seedfast.train.lock import RunFolderError, RunLock
from seedfast.train.log import RunLog
from seedfast.train.metrics import GpuMonitor, codebook_stats, mfu, peak_tflops
from seedfast.train.run import Run, build_run
from seedfast.train.schedule import warmup_cosine


@dataclass(frozen=True)
class TrainResult:
    """How a run ended: ``step`` reached, ``stopped_by`` a signal name or None, the last
    checkpoint, the exported model (only when ``--steps`` was reached)."""

    step: int
    stopped_by: str | None
    checkpoint: Path | None
    final: Path | None


def learning_rate(o: OptimConfig, step: int) -> float:
    """Linear warm-up ``warmup_lr → lr`` over ``warmup_steps``, cosine to ``min_lr`` at ``total_steps``."""
    return warmup_cosine(step, o.total_steps, o.warmup_steps, o.lr, start=o.warmup_lr, end=o.min_lr)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of every random stream (dropout) of ``rank`` in step ``step``."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def train_step(run: Run, step: int, batches: list[MicroBatch]) -> dict[str, float]:
    """One optimizer step over this rank's micro-batches; the returned numbers are global."""
    info, opt = run.info, run.optimizer
    torch.manual_seed(step_seed(run.cfg.train.seed, step, info.rank))
    units = D.all_reduce_sum(torch.tensor([float(sum(b.units for b in batches))], device=info.device), info)
    scale = info.world_size / units
    sums: dict[str, torch.Tensor] = {}
    counts = None
    for i, mb in enumerate(batches):
        with D.gradient_sync(run.model, sync=i == len(batches) - 1):
            with run.autocast():
                out = run.model(mb.inputs)
            loss = out.pop("loss")
            (loss * scale).backward()
        if "codes" in out:
            used = torch.bincount(out.pop("codes").flatten(), minlength=run.trained.config.codebook_size)
            counts = used if counts is None else counts + used
        for k, v in {"loss": loss, **out}.items():
            sums[k] = sums.get(k, 0) + v.detach().float()
    params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if run.cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grads_with_norm_(params, run.cfg.optim.grad_clip, norm)
    lr = learning_rate(run.cfg.optim, step)
    for g in opt.param_groups:
        g["lr"] = lr
    opt.step()
    opt.zero_grad(set_to_none=True)
    names = list(sums)
    logged = D.all_reduce_sum(torch.stack([sums[k].reshape(()) for k in names]), info) / units
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under FSDP2
    stats = {**{k: float(v) for k, v in zip(names, logged)}, "lr": lr, "grad_norm": float(norm)}
    if counts is not None:
        cb = codebook_stats(D.all_reduce_sum(counts, info).cpu())
        stats.update(codebook_used=cb.used, codebook_perplexity=cb.perplexity)
    return stats


class _StopSignal:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.name: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.name = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _state(run: Run, step: int) -> dict[str, Any]:
    return {"stage": run.cfg.stage, "config": run.cfg.flat(), "world_size": run.info.world_size,
            "data_size": run.data_size, "samples_seen": step * run.cfg.train.global_batch,
            "epoch": run.sampler.epoch(step),
            "rng": "torch.manual_seed(step_seed(train.seed, step, rank)) at the start of every step"}


def save_checkpoint(run: Run, out: Path, step: int) -> Path | None:
    """Collective: gather the trained weights and optimizer state; rank 0 writes them atomically."""
    model, optim = trained_state(run), trained_optimizer_state(run)
    path = ckpt.save(out, step, model, optim, _state(run, step), run.cfg.train.keep_last) if run.info.is_main \
        else None
    D.barrier(run.info)
    return path


def resume(run: Run, out: Path) -> int:
    """Load the newest checkpoint of ``out`` into ``run``; return its step (0 when there is none).

    Raises
    ------
    CheckpointError
        A corrupt checkpoint (file and problem named).
    ConfigError
        The checkpoint was written with other settings (each differing field named), or over
        data of another size.
    """
    from seedfast.train.config import differing_fields

    path = ckpt.latest(out)
    found = D.broadcast_object(None if path is None else str(path), run.info)
    if found is None:
        return 0
    loaded = ckpt.load(found) if run.info.is_main else None
    state = D.broadcast_object(loaded.state if loaded else None, run.info)
    diff = differing_fields(state["config"], run.cfg.flat())
    if diff:
        raise ConfigError(f"{found} was written with other settings: " + "; ".join(diff))
    if state["data_size"] != run.data_size:
        raise ConfigError(f"{found}: the data now holds {run.data_size} samples, the checkpoint's run read "
                          f"{state['data_size']}; the sample order would differ")
    load_trained(run, loaded.model if loaded else {}, loaded.optimizer if loaded else {}, source=found)
    return int(state["step"])


def train(cfg: RunConfig, out: str | Path, *, steps: int, resume_run: bool = False, device: str | None = None,
          progress: bool = True) -> TrainResult:
    """Train stage ``cfg.stage`` until global step ``steps``, checkpointing into ``out``.

    The run holds an exclusive lock on ``out`` (:class:`~seedfast.train.lock.RunLock`, rank 0)
    from before the model is built until it returns.

    Raises
    ------
    ConfigError
        Bad settings, ``out`` holds checkpoints but ``resume_run`` is false, or a checkpoint
        beyond ``steps``.
    CheckpointError
        A damaged checkpoint on resume.
    RunFolderError
        ``out`` is in use by another run, or ``out`` (or its ``checkpoints``) is a file.
    OSError
        The run folder cannot be written (read-only file system, no space left, ...); a
        checkpoint that was being written is removed whole, so ``resume_run`` continues from
        the previous one.
    """
    out = Path(out)
    info = D.setup(device)
    try:
        with _hold_run_folder(out, info):
            run = build_run(cfg, info)
            if not resume_run and D.broadcast_object(ckpt.latest(out) is not None, info):
                raise ConfigError(f"{out} already holds checkpoints; pass --resume to continue, or another --out")
            start = resume(run, out) if resume_run else 0
            if start > steps:
                raise ConfigError(f"the checkpoint is at step {start}, beyond --steps {steps}")
            return _loop(run, out, start, steps, progress)
    finally:
        D.teardown(info)


@contextmanager
def _hold_run_folder(out: Path, info: D.DistInfo) -> Iterator[None]:
    """Collective: rank 0 checks and locks ``out``; every rank raises if that failed."""
    lock, problem = None, None
    if info.is_main:
        try:
            lock = RunLock(out)
        except (RunFolderError, OSError) as err:
            if info.world_size == 1:
                raise
            problem = str(err)
    problem = D.broadcast_object(problem, info)
    if problem is not None:
        raise RunFolderError(problem)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _loop(run: Run, out: Path, start: int, steps: int, progress: bool) -> TrainResult:
    info, cfg = run.info, run.cfg
    gpu = GpuMonitor(info.device)
    device_name = torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else "cpu"
    peak = cfg.train.peak_tflops or peak_tflops(device_name)
    step_flops = run.flops_per_sample * cfg.train.global_batch
    log = RunLog(out, enabled=info.is_main, start=start, total=steps, progress=progress)
    log.record(event="start", step=start, stage=cfg.stage, device=device_name, gpu=gpu.note or device_name,
               world_size=info.world_size, micro_batch=run.micro_batch, accumulation=run.accum,
               flops_per_step=step_flops, peak_tflops=peak, features=run.features_kind, config=cfg.flat())
    if run.init_left:
        log.message(f"train.init: {len(run.init_left)} tensor(s) not in {cfg.train.init} keep their seeded "
                    f"initial values (e.g. {', '.join(run.init_left[:3])})")
    prefetch = Prefetcher(run.read)
    done, stopped_by, last, final = start, None, None, None
    try:
        with _StopSignal() as stop:
            for step in range(start, steps):
                t0 = time.perf_counter()
                batches = [run.build_inputs(raw) for raw in prefetch.get(step)]
                stats = train_step(run, step, batches)
                dt = time.perf_counter() - t0
                done = step + 1
                samples, tokens = (float(sum(x)) for x in zip(*((b.samples, b.tokens) for b in batches)))
                rate = D.all_reduce_sum(torch.tensor([samples, tokens], device=info.device), info) / dt
                log.step({"step": done, **stats, "step_time_s": dt, "samples_per_s": float(rate[0]),
                          "tokens_per_s": float(rate[1]), "tflops": step_flops / dt / info.world_size / 1e12,
                          "mfu": mfu(step_flops, dt, info.world_size, peak), **gpu.sample(),
                          "epoch": run.sampler.epoch(done)})
                stopping = D.any_rank(stop.name is not None, info)
                if stopping or done % cfg.train.ckpt_every == 0 or done == steps:
                    last = save_checkpoint(run, out, done)
                    log.record(event="checkpoint", step=done, path=str(last))
                if stopping:
                    stopped_by = D.broadcast_object(stop.name or "a signal to another rank", info)
                    log.record(event="stop", step=done, signal=stopped_by)
                    log.message(f"stopped by {stopped_by} after step {done}; checkpoint {last}")
                    break
        if stopped_by is None and done == steps:
            final = export_final(run, out)
            log.record(event="final", step=done, path=str(final))
    finally:
        prefetch.close()
        log.close()
    return TrainResult(step=done, stopped_by=stopped_by, checkpoint=last or ckpt.latest(out), final=final)
