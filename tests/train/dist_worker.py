"""Run under ``torchrun --nproc_per_node=2``: tiny training runs in one gloo process group.

``python -m torch.distributed.run --standalone --nproc_per_node=2 tests/train/dist_worker.py OUT``
writes ``OUT/<scenario>/`` for each scenario (each run stopped after step 1 and resumed);
tests/train/test_distributed.py compares them with one process holding the same global batch.
"""
import sys

import torch.distributed as dist

from seedfast.train.config_sources import build_config, read_preset
from seedfast.train.loop import train

STEPS = 2
# eps = 1 keeps AdamW's update linear in the gradient at these tiny sizes, so the comparison
# sees the gradient's agreement (~1e-9) rather than Adam's amplification of rounding where v ≈ 0.
COMMON = ["optim.eps=1.0", "tokenizer.qformer_dropout=0.0"]
SCENARIOS = {
    "stage1-ddp": (1, [*COMMON]),
    "stage2-ddp": (2, [*COMMON]),
    "stage3-fsdp-full": (3, [*COMMON, "lora.enabled=false", 'train.parallel="fsdp"']),
    "stage3-fsdp-lora": (3, [*COMMON, "lora.dropout=0.0", 'train.parallel="fsdp"']),
}


def config(name: str, extra: tuple[str, ...] = ()):
    stage, overrides = SCENARIOS[name]
    return build_config(stage, [read_preset("tiny")], [*overrides, *extra])


def main(out: str) -> None:
    dist.init_process_group("gloo")
    for name in SCENARIOS:
        # Stop after step 1, then resume: loading (broadcast from rank 0) is exercised under DDP and FSDP2.
        train(config(name), f"{out}/{name}", steps=1, device="cpu", progress=False)
        train(config(name), f"{out}/{name}", steps=STEPS, device="cpu", progress=False, resume_run=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
