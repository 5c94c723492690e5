"""torchrun / DDP helpers: process-group set-up, gathering features with gradients, rank-0 gating.

Single-process runs (plain ``python``/``disse-train``) never touch torch.distributed; under
``torchrun`` (``WORLD_SIZE > 1``) the backend is NCCL on GPU and gloo on CPU.
"""
from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dnn

from disse.trainer.model.device import resolve_device


@dataclass
class DistInfo:
    """Where this process stands: ``rank`` of ``world`` processes; ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    """``train.device`` -> this rank's device (:func:`disse.trainer.model.device.resolve_device`)."""
    return resolve_device(pref, local_rank, field="train.device")


def init_distributed(device_pref: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the torchrun process group when launched by torchrun, else a one-process DistInfo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=device)


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def gather_with_grad(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from all ranks in rank order, keeping gradients to the local part.

    The backward pass sums the gradients that every rank's loss sends to this rank's slice; with
    DDP averaging the parameter gradients afterwards, the result is exactly the gradient of the
    (identical) global loss. Every rank must pass the same B.
    """
    if not info.distributed:
        return x
    with warnings.catch_warnings():  # deprecated in favour of a private API; still the public one
        warnings.simplefilter("ignore", FutureWarning)
        parts = dnn.all_gather(x)
    return torch.cat(parts, dim=0)


def gather_no_grad(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from all ranks (ids, targets: no gradient)."""
    if not info.distributed:
        return x
    out = [torch.empty_like(x) for _ in range(info.world)]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def gather_tree(tree: Any, info: DistInfo, *, grad: bool) -> Any:
    """Apply :func:`gather_with_grad` / :func:`gather_no_grad` to every tensor of a nested dict."""
    if isinstance(tree, dict):
        return {k: gather_tree(v, info, grad=grad) for k, v in tree.items()}
    if torch.is_tensor(tree) and tree.dim() > 0:
        return gather_with_grad(tree, info) if grad else gather_no_grad(tree, info)
    return tree


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """Mean of a Python float over ranks (for logging)."""
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item()) / info.world


def all_reduce_sum_int(values: list[int], info: DistInfo) -> list[int]:
    if not info.distributed:
        return values
    t = torch.tensor(values, dtype=torch.int64, device=info.device)
    dist.all_reduce(t)
    return [int(v) for v in t.tolist()]


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
