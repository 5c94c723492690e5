"""Data-pipeline throughput in samples/s per CPU core (goal: >= 150), against a naive reader.

    python benchmarks/data.py                       # renders a small demo set into a temp folder
    python benchmarks/data.py --shards demo/train   # or any shard folder / brace pattern
    python benchmarks/data.py --workers 4 --batches 40

Figures printed:
* ``naive``: one process, tarfile + ``decode_sample`` (every member, all 4 FOA channels), no shuffle
* ``pipeline x1``: disse.trainer.data, decoding in the main process (num_workers=0), 1 torch thread
* ``pipeline xN``: the same with N DataLoader workers (the training set-up); per core = total / N
* the cost of one sample's parts (FLAC decode, npy, json, collate) in ms
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from disse.schemas.shard import decode_foa, decode_iv, decode_meta, decode_sample
from disse.trainer.data import DataConfig, collate, decode_raw, resolve_shards, train_loader


def naive(urls: list[str], n: int) -> float:
    """Samples/s of the obvious reader: group tar members, decode everything."""
    t0, count = time.perf_counter(), 0
    while count < n:
        for url in urls:
            with tarfile.open(url) as tar:
                members: dict[str, dict] = {}
                for m in tar.getmembers():
                    key, _, ext = m.name.partition(".")
                    members.setdefault(key, {"__key__": key})[ext] = tar.extractfile(m).read()
            for sample in members.values():
                decode_sample(sample)
                count += 1
                if count >= n:
                    break
            if count >= n:
                break
    return count / (time.perf_counter() - t0)


def pipeline(shards, workers: int, batch_size: int, batches: int) -> float:
    cfg = DataConfig(batch_size=batch_size, num_workers=workers, shuffle_buffer=64, seed=0)
    it = iter(train_loader(shards, cfg))
    next(it)  # start-up (worker fork, first shard) is not throughput
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch_size / (time.perf_counter() - t0)
    del it
    return rate


def parts(urls: list[str], n: int = 16) -> dict[str, float]:
    """Milliseconds per sample of each decoding step (one core)."""
    samples = []
    with tarfile.open(urls[0]) as tar:
        members: dict[str, dict] = {}
        for m in tar.getmembers():
            key, _, ext = m.name.partition(".")
            members.setdefault(key, {"__key__": key})[ext] = tar.extractfile(m).read()
        samples = list(members.values())[:n]
    out = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        for s in samples:
            fn(s)
        out[name] = 1e3 * (time.perf_counter() - t0) / len(samples)

    timed("flac 4ch decode", lambda s: decode_foa(s["foa.flac"]))
    timed("iv.npy decode", lambda s: decode_iv(s["iv.npy"]))
    timed("json decode", lambda s: decode_meta(s["json"]))
    timed("decode_raw (W only)", decode_raw)
    decoded = [decode_raw(s) for s in samples]
    t0 = time.perf_counter()
    collate(decoded)
    out["collate"] = 1e3 * (time.perf_counter() - t0) / len(samples)
    out["flac MB/sample"] = float(np.mean([len(s["foa.flac"]) for s in samples]) / 1e6)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default="", help="shard folder or brace pattern (default: render a small demo)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=12, help="batches timed per pipeline run")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    tmp = None
    spec = args.shards
    if not spec:
        from disse.pipeline.demo import DemoConfig, run_demo
        tmp = tempfile.TemporaryDirectory()
        print("rendering a small demo set (real FOA renders) ...", file=sys.stderr)
        run_demo(tmp.name, DemoConfig(types=8, clips_per_type=3, rooms=4, positions_per_room=3, rirs_per_clip=4,
                                      clips_per_rir=4, shard_size=16, seed=0), workers=os.cpu_count() or 1,
                 progress=False)
        spec = str(Path(tmp.name) / "train")
    shards = resolve_shards(spec, what="--shards")
    n = args.batches * args.batch_size
    print(f"shards: {len(shards.urls)} ({shards.total} samples) from {spec}; cores: {os.cpu_count()}")
    costs = parts(shards.urls)
    for name, ms in costs.items():
        print(f"  {name:22s} {ms:8.2f}" + ("" if "MB" in name else " ms/sample"))
    # libsndfile decodes every channel of a FLAC frame: this bounds any reader of 4-channel foa.flac
    print(f"ceiling set by 4-channel FLAC decoding alone: {1e3 / costs['flac 4ch decode']:.1f} samples/s/core")
    r_naive = naive(shards.urls, n)
    r_one = pipeline(shards, 0, args.batch_size, args.batches)
    r_many = pipeline(shards, args.workers, args.batch_size, args.batches * max(1, args.workers // 2))
    print(f"naive reader (1 process, all members)   {r_naive:8.1f} samples/s  = {r_naive:6.1f} /core")
    print(f"pipeline, in-process (1 core)           {r_one:8.1f} samples/s  = {r_one:6.1f} /core  "
          f"({r_one / r_naive:.2f}x naive)")
    print(f"pipeline, {args.workers} workers                     {r_many:8.1f} samples/s  = "
          f"{r_many / args.workers:6.1f} /core")
    print(f"goal: 150 samples/s/core -> {'met' if r_one >= 150 else 'NOT met'} (per core, in-process figure)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
