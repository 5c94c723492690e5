"""Distributed training on CPU (gloo): gathered-feature gradients are exact, torchrun runs end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from disse.trainer.training.distributed import DistInfo, gather_no_grad, gather_with_grad

B, D_IN, D = 4, 6, 5


def clip_loss(a: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE (positives = equal ids), the shape of the DELSA loss."""
    logits = 10 * F.normalize(a, dim=-1) @ F.normalize(t, dim=-1).T
    pos = (ids[:, None] == ids[None, :]).float()
    return 0.5 * (-(pos * logits.log_softmax(1)).sum(1) / pos.sum(1)).mean() + \
        0.5 * (-(pos * logits.log_softmax(0)).sum(0) / pos.sum(0)).mean()


def make_data(world: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(world * B, D_IN, generator=g)
    y = torch.randn(world * B, D_IN, generator=g)
    ids = torch.randint(0, 3, (world * B,), generator=g)
    return x, y, ids


def make_model():
    torch.manual_seed(1)
    return torch.nn.ModuleDict({"a": torch.nn.Linear(D_IN, D), "t": torch.nn.Linear(D_IN, D)})


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    info = DistInfo(rank=rank, world=world)
    model = make_model()
    ddp = torch.nn.parallel.DistributedDataParallel(_Both(model))
    x, y, ids = make_data(world)
    sl = slice(rank * B, (rank + 1) * B)
    a, t = ddp(x[sl], y[sl])
    loss = clip_loss(gather_with_grad(a, info), gather_with_grad(t, info), gather_no_grad(ids[sl], info))
    loss.backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.named_parameters()} | {"loss": loss.detach()}, out)
    dist.destroy_process_group()


class _Both(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x, y):
        return self.m["a"](x), self.m["t"](y)


def test_gathered_loss_gradient_equals_big_batch_gradient(tmp_path):
    import torch._dynamo  # noqa: F401  DDP imports it (~6 s); once here, the forked ranks inherit it
    world = 2
    out = str(tmp_path / "grads.pt")
    mp.start_processes(_worker, args=(world, str(tmp_path / "init"), out), nprocs=world, start_method="fork")
    got = torch.load(out, weights_only=True)
    model = make_model()
    x, y, ids = make_data(world)
    loss = clip_loss(model["a"](x), model["t"](y), ids)
    loss.backward()
    assert got["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-6)


def test_torchrun_two_ranks_on_cpu(demo_shards, tmp_path):
    """`torchrun --nproc_per_node 2` (gloo) trains, with one log and one checkpoint writer.

    Half the source clauses dropped from the space head's captions (pinned here: the demo drops them all), so
    with two samples one rank's batch may have no spatial caption while the other's has, and the ranks' text
    rows differ (B vs 2B); with caption distillation on, what they gather must not."""
    from test_train import SMALL

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "disse.trainer.cli.train", "--config", "demo", *SMALL, "train.threads=1",
           f"data.train={demo_shards / 'train'}", "data.val=", f"train.out_dir={out}", "train.max_steps=2",
           "data.batch_size=2", "data.num_workers=1", "eval.at_start=false", "eval.each_epoch=false",
           "data.space_caption_drop=0.5", "loss.caption_distill_weight=1.0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.count("done: 2/2 steps") == 1  # rank 0 reports; rank 1 stays quiet
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    start = records[0]
    assert start["event"] == "start" and start["world"] == 2 and start["global_batch"] == 4
    assert sum(r["event"] == "start" for r in records) == 1
    state = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    assert state["step"] == 2 and len(state["data"]) == 2 and len(state["rng"]) == 2
    assert not list((out / "checkpoints").glob(".*.tmp"))  # no temporary file left behind
