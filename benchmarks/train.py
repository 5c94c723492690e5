"""Training throughput (samples/s) for a config: the optimiser step alone, and end to end with the data.

    python benchmarks/train.py                                  # demo config, CPU, small rendered demo
    python benchmarks/train.py --config paper --shards shards/train data.batch_size=64   # on a GPU: bf16
    python benchmarks/train.py --config official model.official.roberta_dir=/data/roberta-base   # the release's model

Figures printed:
* ``step only``: repeated optimiser steps on one real batch held in memory (model + loss + AdamW,
  with the config's precision and accumulation); the ceiling the data pipeline has to feed
* ``end to end``: disse-train's loop on the shards for ``--steps`` steps, from its log.jsonl; then the same
  with ``train.prefetch=false`` (each step's tokens and new frozen-text states made in turn, not during the
  step before), and the minor page faults of this process per step (training/loop.py, data/loader.py
  ``keep_freed_memory``)
* peak memory: GPU (allocated) on CUDA, else the process's peak resident set (CPU)

Any model preset: the loop's objective (training/loop.py ``objective_for``) builds the model, the loss and the
inputs, so ``--config official`` measures DISSEOfficial with its front end computed on the device.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="demo")
    ap.add_argument("--shards", default="", help="training shards (default: render a small demo)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("overrides", nargs="*", help="section.field=value config overrides")
    args = ap.parse_args(argv)

    from disse.trainer.training.config import load_train_config
    from disse.trainer.data.loader import eval_loader, keep_freed_memory, resolve_shards
    from disse.trainer.training.distributed import DistInfo, pick_device
    from disse.trainer.training.loop import (StepContext, apply_freeze, make_optimizer, objective_for,
                                             resolve_precision, train, train_step)
    from disse.trainer.cli.train import resolve_config_path

    tmp = tempfile.TemporaryDirectory()
    spec = args.shards
    if not spec:
        from disse.pipeline.demo import DemoConfig, run_demo
        print("rendering a small demo set ...", file=sys.stderr)
        run_demo(tmp.name, DemoConfig(types=8, clips_per_type=3, rooms=4, positions_per_room=3, rirs_per_clip=4,
                                      clips_per_rir=4, shard_size=16, seed=0), workers=os.cpu_count() or 1,
                 progress=False)
        spec = str(Path(tmp.name) / "train")
    overrides = [f"data.train={spec}", "data.val=", f"train.out_dir={tmp.name}/run", "log.progress=false",
                 "log.every_steps=1", "eval.each_epoch=false", *args.overrides]
    cfg = load_train_config(resolve_config_path(args.config), overrides)
    device = pick_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    shards = resolve_shards(spec)

    # --- step only (with the loop's process settings: its thread count, freed memory kept)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    keep_freed_memory()
    torch.manual_seed(0)
    objective = objective_for(cfg)
    objective.prepare(cfg, shards, None)
    model = objective.build_model(cfg)
    apply_freeze(model, cfg.train.freeze)
    model = model.train().to(device)
    loss_fn = objective.build_loss(cfg)
    if isinstance(loss_fn, torch.nn.Module):
        loss_fn.to(device)
    opt = make_optimizer(model, cfg)
    raw = objective.wrap(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    ctx = StepContext(raw, raw, model, loss_fn, opt, torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
                      DistInfo(device=device), precision, cfg.optim.grad_clip, params, objective)
    batch = next(iter(eval_loader(shards, cfg.data.batch_size, preset=objective.inputs)))
    if len(batch["key"]) < cfg.data.batch_size:
        raise SystemExit(f"need at least {cfg.data.batch_size} samples in one shard pass")
    micro = [batch] * cfg.train.accum_steps
    for _ in range(2):
        train_step(ctx, micro)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        train_step(ctx, micro)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    n = args.steps * cfg.data.batch_size * cfg.train.accum_steps
    n_params = sum(p.numel() for p in params)
    print(f"config {args.config}: {n_params / 1e6:.1f} M trainable parameters, device {device}, precision {precision}, "
          f"batch {cfg.data.batch_size} x accum {cfg.train.accum_steps}, torch threads {torch.get_num_threads()}")
    print(f"{'step only:':24s} {n / dt:8.2f} samples/s  ({1e3 * dt / args.steps:.0f} ms/step)")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    else:
        print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    del ctx, model, opt

    # --- end to end (the real loop, data pipeline included); the reference prepares each step in turn
    cfg.train.max_steps = args.steps + 2
    for prefetch in (True, False):
        cfg.train.prefetch = prefetch
        cfg.train.out_dir = f"{tmp.name}/run-{prefetch}"
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        train(cfg)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        records = [json.loads(x) for x in open(Path(cfg.train.out_dir) / "log.jsonl")]
        rates = [r["samples_per_s"] for r in records if r.get("event") == "train"][2:]
        waits = [r["data_wait_frac"] for r in records if r.get("event") == "train"][2:]
        name = "end to end:" if prefetch else "  train.prefetch=false:"
        if rates:
            print(f"{name:24s} {sum(rates) / len(rates):8.2f} samples/s  (data wait "
                  f"{100 * sum(waits) / len(waits):.0f}% of step time, {cfg.data.num_workers} workers, "
                  f"{faults / cfg.train.max_steps:,.0f} page faults per step in this process)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
