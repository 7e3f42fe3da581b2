"""``seedfast demo``: train every SEED model from scratch on the procedural data, measure them on
the held-out split, and write the report.

Order of work. The de-tokenizer learns (target embedding of a real image → that image), as
SD-unCLIP's decoder learns from CLIP image embeddings, so it does not depend on the tokenizer:
it trains in a second process while the main thread writes the frozen encoder
(:mod:`seedfast.demo.encoder`) and runs tokenizer stage 1, stage 2 and SEED-LLaMA stage 3
through :func:`seedfast.train.loop.train`. At inference it is fed the tokenizer's generation
embeddings, which stage 2 trained to predict those targets; so once stage 2 is done, its last
``detokenizer_code_steps`` steps are conditioned on those predictions instead (from each
image's codes), while stage 3 trains. Stage 2 first encodes a pool of training images with the
frozen ViT and Q-Former; stage 3 quantises the same causal features into its codes, and the
pool is deleted after stage 3.
Each process computes with one intra-op thread, which is deterministic and, on a 2-core machine,
keeps both cores busy without the two fighting over them (an oversubscribed OpenMP pool made a
de-tokenizer step five times slower on the shared machine; two threads of one process queued for
the interpreter lock, see :class:`_DetokenizerTraining`). The de-tokenizer's process seeds its
own generators, so a seed gives the same run.

Then the held-out split is encoded, reconstructed, captioned and drawn from its captions, and
the attribute checker scores all of it (see :mod:`seedfast.demo.report` for the files).
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seedfast.data import (
    ProceduralConfig,
    ProceduralDataset,
    accuracy_breakdown,
    attribute_accuracy,
    parse_caption,
    read_scenes,
)
from seedfast.demo.config import STAGE_NAMES, DemoConfig
from seedfast.demo.models import DemoModels, EmbeddingNormaliser, Manifest, NormalisedDetokenizer
from seedfast.demo.report import Examples, StageSummary, write_metrics, write_report
from seedfast.models.preprocess import clip_preprocess
from seedfast.models.seed_tokenizer import SeedTokenizer
from seedfast.train.pixel_detokenizer import train_pixel_detokenizer

TRAIN_DIR = "train"
MODELS_DIR = "models"
TRAIN_SIZE = 1_000_000
"""Procedural training samples: more than any demo reads, so no image is seen twice."""


class DemoError(Exception):
    """The demo cannot run as asked (e.g. its output folder holds something else)."""


@dataclass(frozen=True)
class DemoResult:
    """A finished demo: its folder, metrics, report, per-stage summaries and the metrics' breakdown
    (per attribute, relation, object count; see :func:`evaluate`)."""

    out: Path
    metrics: dict[str, float]
    report: Path
    stages: list[StageSummary]
    breakdown: dict[str, dict[str, float]]


def _say(text: str) -> None:
    from tqdm import tqdm

    # Through tqdm so that a line never lands in the middle of a progress bar.
    tqdm.write(text, file=sys.stderr)


def prepare_output(out: Path) -> None:
    """Make ``out`` ready for a run: create it, or clear a previous demo's files from it.

    Raises
    ------
    DemoError
        ``out`` is a file, or a non-empty folder that does not look like a demo's output.
    """
    from seedfast.demo.report import IMAGES_DIR, OUTPUT_FILES

    ours = {TRAIN_DIR, MODELS_DIR, IMAGES_DIR, *OUTPUT_FILES}
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {out} is a file, not a folder")
    if out.is_dir():
        present = {p.name for p in out.iterdir()}
        if present and not present <= ours:
            raise DemoError(f"--out {out} holds files the demo did not write ({', '.join(sorted(present - ours))}); "
                            "choose an empty or new folder")
        for name in present:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def run_demo(config: DemoConfig, out: str | Path, *, seed: int = 0, progress: bool = True) -> DemoResult:
    """Train, measure and report (see the module docstring).

    Parameters
    ----------
    config : DemoConfig
        :meth:`DemoConfig.full` or :meth:`DemoConfig.quick`.
    out : path
        The output folder (created; a previous demo's files in it are replaced).
    seed : int
        Seeds the data, every initialisation and every random draw: a seed gives the same
        run on the same machine.
    progress : bool
        Progress bars on stderr (summary lines are printed either way).

    Raises
    ------
    DemoError
        ``out`` cannot be used, or the de-tokenizer's process failed.
    KeyboardInterrupt
        A stage was stopped by SIGINT / SIGTERM.
    """
    start = time.perf_counter()
    out = Path(out)
    prepare_output(out)
    threads = torch.get_num_threads()
    # One intra-op thread while the de-tokenizer's process trains on the other core; every
    # thread for the evaluation, which starts once that process has ended (seed 0, idle demo:
    # about 47 s with one thread, 28 s with two, the same metrics).
    torch.set_num_threads(1)
    try:
        stages, models = _train_all(config, out, seed, progress)
        torch.set_num_threads(threads)
        metrics, examples, breakdown = evaluate(models, config, seed=seed, progress=progress)
        metrics["seconds"] = round(time.perf_counter() - start, 1)
    finally:
        torch.set_num_threads(threads)
    write_metrics(out, metrics, breakdown)
    report = write_report(out, metrics=metrics, breakdown=breakdown, examples=examples, stages=stages,
                          settings={"demo": config.name, "seed": seed, "image_size": config.image_size,
                                    "max_objects": config.max_objects, "tokenizer": config.tokenizer,
                                    "llm": config.llm, "target": config.target,
                                    "detokenizer": config.detokenizer_model.to_dict(),
                                    "held-out samples": config.eval_size})
    return DemoResult(out=out, metrics=metrics, report=report, stages=stages, breakdown=breakdown)


# -------------------------------------------------------------------------------------------------
# Training


def _procedural(config: DemoConfig, seed: int, split: str, size: int) -> ProceduralDataset:
    pc = ProceduralConfig(image_size=config.image_size, max_objects=config.max_objects, seed=seed,
                          train_size=size if split == "train" else 0, heldout_size=size if split == "heldout" else 0)
    return ProceduralDataset(pc, split)


def _train_stage(config: DemoConfig, stage: int, folder: Path, seed: int, progress: bool, *,
                 features: Path | None = None, **paths: Path) -> tuple[Path, StageSummary]:
    """Run one stage; with ``features`` it reads that pool of causal features, which stage 2
    first writes (``config.stage2_pool`` training images) when the folder does not exist yet."""
    from seedfast.train.config_sources import build_config
    from seedfast.train.log import LOG_FILE
    from seedfast.train.loop import train

    settings = {1: config.stage1, 2: config.stage2, 3: config.stage3}[stage]
    _say(f"{STAGE_NAMES[stage]}: {settings.steps} steps of {settings.batch}")
    t0 = time.perf_counter()
    tables = config.stage_tables(stage, seed=seed, **paths)
    if features is not None:
        if not features.exists():
            from seedfast.train.features import precompute

            _say(f"{STAGE_NAMES[stage]}: encoding {config.stage2_pool} training images once (frozen ViT + Q-Former)")
            precompute(build_config(stage, [tables]), features, device="cpu", progress=progress)
        tables["data"]["features"] = str(features)
    result = train(build_config(stage, [tables]), folder, steps=settings.steps, device="cpu", progress=progress)
    if result.stopped_by is not None or result.final is None:
        raise KeyboardInterrupt(f"{STAGE_NAMES[stage]} stopped by {result.stopped_by or 'a signal'}")
    seconds = time.perf_counter() - t0
    last = _last_step(folder / LOG_FILE)
    terms = {1: ("itc",), 2: ("mse", "vq", "cos"), 3: ("ce",)}[stage]
    end = ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", *terms) if k in last)
    if stage == 2 and "codebook_used" in last:
        end += f", codebook {last['codebook_used']}/{config.tokenizer['codebook_size']} used"
    summary = StageSummary(STAGE_NAMES[stage], settings.steps, seconds, end, losses=_losses(folder / LOG_FILE))
    _say(f"{STAGE_NAMES[stage]}: done in {seconds:.0f} s; {end}")
    return result.final, summary


def _losses(log: Path) -> tuple[float, ...]:
    """The training loss of every logged step."""
    records = (json.loads(line) for line in log.read_text(encoding="utf-8").splitlines())
    return tuple(float(r["loss"]) for r in records if "event" not in r and "loss" in r)


def _last_step(log: Path) -> dict[str, float]:
    last: dict[str, float] = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "event" not in record:
            last = record
    return last


class _Cancelled(Exception):
    """The tokenizer stages failed or were stopped while the de-tokenizer waited for their tokenizer."""


class _DetokenizerJob:
    """The de-tokenizer's data, normaliser, model and training (run in the child process).

    Its first ``steps - code_steps`` steps are conditioned on exact target embeddings; the last
    ``code_steps`` on the generation embeddings that the stage-2 tokenizer predicts from each
    image's 32 codes. ``next_tokenizer`` blocks until that tokenizer's folder is known and
    returns it, or None when it will never come.
    """

    def __init__(self, config: DemoConfig, seed: int, progress: bool,
                 next_tokenizer: Callable[[], str | Path | None]) -> None:
        from seedfast.models.pixel_detokenizer import PixelDetokenizer
        from seedfast.train.targets import build_target

        self.config, self.seed, self.progress, self.next_tokenizer = config, seed, progress, next_tokenizer
        self.target = build_target(config.target, config.detokenizer_model.embed_dim)
        self.data = _procedural(config, seed, "train", TRAIN_SIZE)
        # The normaliser's statistics come from the last training images, which no stage reads.
        stats = self.data.batch(range(TRAIN_SIZE - config.normaliser_samples, TRAIN_SIZE))
        self.normaliser = EmbeddingNormaliser.fit(self._targets(stats.images))
        self.model = PixelDetokenizer(config.detokenizer_model, device="cpu", seed=seed)
        self.waited = 0.0

    def _targets(self, images: torch.Tensor) -> torch.Tensor:
        return self.target(clip_preprocess(images, size=self.config.image_size))

    def _coder(self) -> SeedTokenizer:
        t0 = time.perf_counter()
        folder = self.next_tokenizer()
        self.waited = time.perf_counter() - t0
        if folder is None:
            raise _Cancelled("the tokenizer stages did not finish")
        return SeedTokenizer.load(folder).eval()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        s, image_size = self.config.detokenizer, self.config.image_size
        exact = s.steps - self.config.detokenizer_code_steps
        # The training split in order: the tokenizer's stages read it in a shuffled order, and
        # an image seen by both is no more than the same data used twice.
        for step in range(exact):
            batch = self.data.batch(range(step * s.batch, (step + 1) * s.batch))
            yield self.normaliser(self._targets(batch.images)), batch.images.float() / 255
        if exact == s.steps:
            return
        coder = self._coder()
        # Images past the stage-2 pool, which stage 2 fitted for several epochs: the predicted
        # embeddings are then as good as on held-out images, not better.
        first = max(self.config.stage2_pool, exact * s.batch)
        for step in range(s.steps - exact):
            batch = self.data.batch(range(first + step * s.batch, first + (step + 1) * s.batch))
            with torch.no_grad():
                predicted = coder.generation_embedding(coder.encode(clip_preprocess(batch.images, size=image_size)))
            yield self.normaliser(predicted), batch.images.float() / 255

    def run(self) -> list[float]:
        s = self.config.detokenizer
        return train_pixel_detokenizer(self.model, self._batches(), steps=s.steps, lr=s.lr, warmup_steps=s.warmup,
                                       seed=self.seed, progress=self.progress)


RESULT_FILE = "result.json"
"""What the de-tokenizer's process writes into its folder when it has trained and saved the model."""
CONFIG_FILE = "config.pickle"
"""The :class:`DemoConfig` the parent hands to the de-tokenizer's process."""
CANCELLED_EXIT = 3
"""The de-tokenizer's process's exit code when the tokenizer it waited for never came."""


def detokenizer_worker(folder: Path, seed: int, progress: bool) -> int:
    """The de-tokenizer's process (``python -m seedfast.demo.detokenizer_worker``): train as
    ``folder/config.pickle`` says, reading the stage-2 tokenizer's folder as a line on stdin
    (end of input: it never comes), save the model and ``result.json`` into ``folder``.

    Returns the exit code: 0, or :data:`CANCELLED_EXIT`; other failures raise.
    """
    import pickle

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    config = pickle.loads((folder / CONFIG_FILE).read_bytes())

    def next_tokenizer() -> str | None:
        line = sys.stdin.readline().strip()
        return line or None

    job = _DetokenizerJob(config, seed, progress, next_tokenizer)
    try:
        losses = job.run()
    except _Cancelled as err:
        print(f"de-tokenizer: {err}", file=sys.stderr)
        return CANCELLED_EXIT
    NormalisedDetokenizer(job.model, job.normaliser).save(folder)
    result = {"losses": losses, "seconds": time.perf_counter() - t0, "waited": job.waited}
    (folder / RESULT_FILE).write_text(json.dumps(result), encoding="utf-8")
    return 0


class _DetokenizerTraining:
    """The de-tokenizer's training in a child process beside the main thread's stages.

    A process, not a thread: the two trainings are many small ops each, and in one process
    they queue for the interpreter lock (measured at seed 0, idle: a stage-3 step took 137 ms
    beside a de-tokenizer thread, 130 ms beside this process; stage 1 156 → 146 s, stage 2
    369 → 346 s, the whole run 932 → 879 s). A fresh interpreter
    (``python -m seedfast.demo.detokenizer_worker``), not :mod:`multiprocessing`: a spawned
    child would import and re-run the caller's main script. The child computes with one
    intra-op thread and seeds its own generators, so a seed gives the same run; its error
    output is the parent's. It writes the trained de-tokenizer and its normaliser to ``folder``.
    """

    def __init__(self, config: DemoConfig, seed: int, progress: bool, folder: Path) -> None:
        self.config, self.seed, self.progress, self.folder = config, seed, progress, folder
        self.process: Any = None

    def start(self) -> None:
        import os
        import pickle
        import subprocess

        import seedfast

        s = self.config.detokenizer
        _say(f"de-tokenizer (pixel diffusion): {s.steps} steps of {s.batch} in a second process, the last "
             f"{self.config.detokenizer_code_steps} on the stage-2 tokenizer's embeddings of image codes")
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / CONFIG_FILE).write_bytes(pickle.dumps(self.config))
        # The child imports the seedfast this process runs, wherever it came from.
        root = str(Path(seedfast.__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        command = [sys.executable, "-m", "seedfast.demo.detokenizer_worker", str(self.folder), str(self.seed),
                   "--progress" if self.progress else "--no-progress"]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, text=True, env=env)

    def check(self) -> None:
        """Raise at once, not after stage 3, if the child has already failed.

        Raises
        ------
        DemoError
            The child ended with a non-zero exit code.
        """
        code = self.process.poll()
        if code not in (None, 0):
            raise DemoError(f"the de-tokenizer process ended early (exit code {code}; its error is printed above)")

    def provide_tokenizer(self, folder: Path) -> None:
        """The stage-2 tokenizer is saved in ``folder``: the code-conditioned steps may start."""
        self.check()
        self.process.stdin.write(f"{folder}\n")
        self.process.stdin.flush()

    def cancel(self) -> None:
        """The tokenizer stages failed or were stopped: end the child (it may be mid-training)."""
        import subprocess

        try:
            self.process.stdin.close()  # end of input: the tokenizer never comes
        except OSError:
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            self.process.wait()

    def join(self) -> tuple[NormalisedDetokenizer, StageSummary]:
        """Wait for the child; its de-tokenizer and summary.

        Raises
        ------
        DemoError
            The child failed (its error is printed above) or was cancelled.
        """
        code = self.process.wait()
        if code == CANCELLED_EXIT:
            raise DemoError("the de-tokenizer's training was cancelled: the tokenizer stages did not finish")
        if code != 0 or not (self.folder / RESULT_FILE).is_file():
            raise DemoError(f"the de-tokenizer process failed (exit code {code}; its error is printed above)")
        result = json.loads((self.folder / RESULT_FILE).read_text(encoding="utf-8"))
        losses, seconds = result["losses"], result["seconds"]
        tail = losses[-50:]
        end = f"loss {sum(tail) / len(tail):.4f} (mean of the last {len(tail)} steps)"
        if self.config.detokenizer_code_steps:
            end += f"; waited {result['waited']:.0f} s for the tokenizer"
        _say(f"de-tokenizer: done in {seconds:.0f} s; {end}")
        summary = StageSummary("de-tokenizer (pixel diffusion on target, then code, embeddings)",
                               self.config.detokenizer.steps, seconds, end, losses=tuple(losses))
        return NormalisedDetokenizer.load(self.folder), summary


def _train_all(config: DemoConfig, out: Path, seed: int, progress: bool) -> tuple[list[StageSummary], DemoModels]:
    from seedfast.demo.encoder import frozen_encoder_init
    from seedfast.models.llama import Llama
    from seedfast.train.config import model_config
    from seedfast.train.config_sources import build_config

    runs = out / TRAIN_DIR
    init = runs / "init"
    stage1_config = build_config(1, [config.stage_tables(1, seed=seed)])
    frozen_encoder_init(model_config("tokenizer", stage1_config.tokenizer), seed).save(init)
    detok = _DetokenizerTraining(config, seed, progress, runs / "detokenizer")
    detok.start()
    # Stages 2 and 3 train nothing upstream of the Q-Former's output, so a pool of images encoded
    # once serves every epoch of stage 2 and stage 3's codes: the ViT and Q-Former forwards were
    # ~40 % of a stage-2 step and ~17 % of a stage-3 step.
    pool = runs / "stage2-features" if config.stage2_pool else None
    try:
        stage1, s1 = _train_stage(config, 1, runs / "stage1", seed, progress, init=init)
        detok.check()
        stage2, s2 = _train_stage(config, 2, runs / "stage2", seed, progress, init=stage1, features=pool)
        detok.provide_tokenizer(stage2)
        stage3, s3 = _train_stage(config, 3, runs / "stage3", seed, progress, tokenizer=stage2, features=pool)
    except BaseException:
        detok.cancel()
        raise
    finally:
        if pool is not None:  # only the stages' input (~11 KB an image); the run folders keep the weights
            shutil.rmtree(pool, ignore_errors=True)
    if detok.process.poll() is None:
        _say("waiting for the de-tokenizer to finish")
    detokenizer, sd = detok.join()
    manifest = Manifest(image_size=config.image_size, max_objects=config.max_objects,
                        decode_steps=config.detokenizer_model.sample_steps,
                        guidance_scale=config.detokenizer_model.guidance_scale,
                        caption_temperature=config.caption_temperature, image_temperature=config.image_temperature,
                        image_top_k=config.image_top_k, image_top_p=config.image_top_p)
    models = DemoModels(SeedTokenizer.load(stage2).eval(), detokenizer,
                        Llama.from_hf(stage3, dtype=torch.float32).eval(), manifest)
    models.save(out / MODELS_DIR)
    return [s1, s2, sd, s3], models


# -------------------------------------------------------------------------------------------------
# Measuring


def _in_chunks(fn: Callable[[slice], torch.Tensor | list], n: int, chunk: int, desc: str,
               progress: bool) -> list:
    from tqdm import tqdm

    parts = []
    for start in tqdm(range(0, n, chunk), desc=desc, unit="batch", disable=not progress, leave=False,
                      file=sys.stderr):
        parts.append(fn(slice(start, min(start + chunk, n))))
    return parts


def evaluate(models: DemoModels, config: DemoConfig, *, seed: int = 0, progress: bool = True,
             chunk: int = 64) -> tuple[dict[str, float], Examples, dict[str, dict[str, float]]]:
    """Score the models on the held-out split.

    Returns
    -------
    metrics : dict
        ``reconstruction_attribute_accuracy``, ``caption_attribute_accuracy``,
        ``text_to_image_attribute_accuracy``, ``codebook_utilisation``, ``checker_accuracy``
        (``seconds`` is added by :func:`run_demo`).
    examples : Examples
        The first ``config.show`` samples, for the report.
    breakdown : dict
        For ``reconstruction``, ``caption``, ``text_to_image`` and ``checker``: the
        :func:`seedfast.data.accuracy_breakdown` of that task (overall, per attribute, the
        relation, one- and two-object scenes apart).
    """
    n, max_objects = config.eval_size, config.max_objects
    batch = _procedural(config, seed, "heldout", n).batch(range(n))
    images, truths, captions = batch.images, batch.truths, batch.captions
    # Row i's sampler and decoder seeds depend only on (seed, i): a sample is drawn the same
    # whatever the chunking.
    seeds = [seed * 1_000_003 + i for i in range(n)]
    codes = torch.cat(_in_chunks(lambda s: models.tokenize(images[s]), n, chunk, "encode", progress))
    reconstructions = torch.cat(_in_chunks(lambda s: models.detokenize(codes[s], seed=seeds[s]), n, chunk,
                                           "reconstruct", progress))
    generated_captions = sum(_in_chunks(lambda s: models.caption(codes[s], seed=seeds[s]), n, chunk, "caption",
                                        progress), [])
    drawn = _in_chunks(lambda s: models.text_to_image(captions[s], seed=seeds[s])[1], n, chunk, "draw", progress)
    generated_images = torch.cat(drawn)
    prompted = [parse_caption(c) for c in captions]
    # Each output is read (checker or caption parser) once, for the metrics and the examples alike.
    scenes = {
        "reconstruction": read_scenes(reconstructions, max_objects=max_objects),
        "caption": [parse_caption(c) for c in generated_captions],
        "text_to_image": read_scenes(generated_images, max_objects=max_objects),
        "checker": read_scenes(images, max_objects=max_objects),
    }
    breakdown = {task: accuracy_breakdown(read, prompted if task == "text_to_image" else truths)
                 for task, read in scenes.items()}
    breakdown = {task: {k: round(float(v), 4) for k, v in parts.items()} for task, parts in breakdown.items()}
    metrics = {
        "reconstruction_attribute_accuracy": breakdown["reconstruction"]["overall"],
        "caption_attribute_accuracy": breakdown["caption"]["overall"],
        "text_to_image_attribute_accuracy": breakdown["text_to_image"]["overall"],
        "codebook_utilisation": codes.unique().numel() / models.tokenizer.config.codebook_size,
        "checker_accuracy": breakdown["checker"]["overall"],
    }
    metrics = {k: round(float(v), 4) for k, v in metrics.items()}
    if not all(math.isfinite(v) for v in metrics.values()):
        raise RuntimeError(f"non-finite metric: {metrics}")
    k = min(config.show, n)
    shown_truths = truths[:k]
    examples = Examples(
        images=images[:k], captions=captions[:k], codes=codes[:k], reconstructions=reconstructions[:k],
        generated_captions=generated_captions[:k], generated_images=generated_images[:k],
        caption_scores=[attribute_accuracy(s, t) for s, t in zip(scenes["caption"], shown_truths)],
        reconstruction_scores=[attribute_accuracy(s, t) for s, t in zip(scenes["reconstruction"], shown_truths)],
        generation_scores=[attribute_accuracy(s, t) for s, t in zip(scenes["text_to_image"], shown_truths)],
    )
    return metrics, examples, breakdown
