"""One process or many under ``torchrun``: process group, device, model wrapping, collectives.

Under ``torchrun`` (``WORLD_SIZE > 1``) the loop joins a process group (NCCL on GPUs, gloo on
CPUs), each process takes ``cuda:LOCAL_RANK``, and the model is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel` or, for the LLM, sharded with FSDP2
(``fully_shard`` per decoder layer, then the root). Gradients are averaged over processes in
both cases, so with equal micro-batches a step equals one process holding the global batch.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> DistInfo:
    """Join the ``torchrun`` process group if there is one and pick this process's device.

    Parameters
    ----------
    device : {"cpu", "cuda"}, optional
        Default: CUDA when available.

    Raises
    ------
    ValueError
        ``device="cuda"`` without a visible GPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible to torch")
    dev = torch.device("cuda", local) if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(dev)
    owns = world > 1 and not dist.is_initialized()
    if owns:
        # device_id binds NCCL to this GPU up front (no lazy init, no guessing in barriers).
        dist.init_process_group("nccl" if kind == "cuda" else "gloo", device_id=dev if kind == "cuda" else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev, owns_group=owns)


def teardown(info: DistInfo) -> None:
    """Leave the process group :func:`setup` joined (one the caller set up is left alone), once
    every rank got here.

    The barrier matters: a rank that exits while a peer still waits in a gloo collective
    makes the peer fail with "connection closed by peer" (and torchrun abort the run).
    """
    if info.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient for this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``[b, ...]`` on each rank → ``[world·b, ...]`` in rank order, differentiable."""
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """``[b, ...]`` on each rank → ``[world·b, ...]`` in rank order, without gradient."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks (in place; identity in one process)."""
    if info.distributed:
        dist.all_reduce(t)
    return t


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True when ``flag`` is true on some rank: every rank takes the same branch."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(module: nn.Module, info: DistInfo, *, parallel: str, shard: list[nn.Module] | None = None) -> nn.Module:
    """Wrap for data parallelism (nothing to do in one process).

    Parameters
    ----------
    module : the module whose ``forward`` computes the loss
    parallel : {"ddp", "fsdp"}
    shard : modules to ``fully_shard`` one by one before the root (the LLM's decoder layers)

    Returns
    -------
    The DDP wrapper, or ``module`` itself (FSDP2 shards in place, one process leaves it alone).
    """
    if not info.distributed:
        return module
    if parallel == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    # On GPUs: gather weights in bf16 (half the traffic), reduce gradients in fp32.
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if info.device.type == "cuda" else MixedPrecisionPolicy())
    for m in shard or []:
        fully_shard(m, mesh=mesh, mp_policy=mp)
    fully_shard(module, mesh=mesh, mp_policy=mp)
    return module


@contextlib.contextmanager
def gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on accumulation micro-steps (DDP ``no_sync``, FSDP2
    ``set_requires_gradient_sync``); the last micro-step of a step synchronises."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and not sync:
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)
    yield


def barrier(info: DistInfo) -> None:
    """Wait for every rank (nothing in one process)."""
    if info.distributed:
        dist.barrier()
