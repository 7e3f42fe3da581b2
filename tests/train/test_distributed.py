"""Data parallelism: ``torchrun --nproc_per_node=2`` (gloo, CPU) gives what one process gives with
the same global batch: DDP for stages 1–2 (stage 1 with its gathered contrastive batch), FSDP2
``fully_shard`` for stage 3, full fine-tuning and LoRA; each two-process run also stops and
resumes half-way."""
import subprocess
import sys

import numpy as np
import pytest

from seedfast.train.data import GlobalSampler
from seedfast.train.loop import train

from . import dist_worker
from .helpers import max_diff, steps_of, subprocess_env, weights

TIMEOUT_S = 300


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One torchrun launch runs every scenario (a launch costs ~10 s of start-up on a small runner)."""
    out = tmp_path_factory.mktemp("torchrun")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(dist_worker.__file__), str(out)]
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return out


@pytest.mark.parametrize("name", list(dist_worker.SCENARIOS))
def test_two_processes_equal_one(two_ranks, tmp_path, name):
    train(dist_worker.config(name, ("train.parallel=\"ddp\"",)), tmp_path, steps=dist_worker.STEPS, device="cpu",
          progress=False)
    step = dist_worker.STEPS
    ours, theirs = weights(tmp_path, step), weights(two_ranks / name, step)
    assert max_diff(ours, theirs) < 1e-7
    assert max_diff(weights(tmp_path, step, "optimizer.safetensors"),
                    weights(two_ranks / name, step, "optimizer.safetensors")) < 1e-7
    one, two = steps_of(tmp_path)[-1], steps_of(two_ranks / name)[-1]
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-6)
    assert one["grad_norm"] == pytest.approx(two["grad_norm"], rel=1e-5)


def test_only_rank_zero_writes(two_ranks):
    for name in dist_worker.SCENARIOS:
        lines = (two_ranks / name / "log.jsonl").read_text().splitlines()
        assert sum('"event": "start"' in line for line in lines) == 2  # the first run and its resumption
        assert (two_ranks / name / "final").is_dir()


def test_ranks_read_disjoint_slices_of_the_global_batch():
    sampler = GlobalSampler(size=50, global_batch=12, seed=3, shuffle=True)
    for step in range(10):
        parts = [m for r in range(2) for m in sampler.micro_batches(step, r, 2, 3)]
        assert sorted(np.concatenate(parts)) == sorted(sampler.step_indices(step))
        one = np.concatenate(sampler.micro_batches(step, 0, 1, 6))
        # micro-step m of 2 ranks × 3 = one process's micro-step m of 6, in rank order
        assert list(one) == list(np.concatenate([sampler.micro_batches(step, r, 2, 3)[m]
                                                for m in range(2) for r in range(2)]))
    seen = np.concatenate([sampler.step_indices(s) for s in range(25)])  # 6 epochs
    for epoch in range(6):
        assert sorted(seen[epoch * 50:(epoch + 1) * 50]) == list(range(50))
