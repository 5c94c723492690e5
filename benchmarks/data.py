"""Data-pipeline throughput in samples per CPU-second (goal: >= 150), against a plain reader.

    python benchmarks/data.py                       # renders a small demo set into a temp folder
    python benchmarks/data.py --shards demo/train   # or any shard folder / brace pattern
    python benchmarks/data.py --workers 4 --batches 40

Figures printed:
* the cost of each step for one sample in ms (tar reading, each member's decoding, collate) and
  each member's size
* ``plain reference``: one process, tarfile + ``decode_sample`` (every member, the whole FOA decoded,
  as a reader written from DESIGN.md's version 1 would), no shuffle
* ``pipeline``: disse.trainer.data.loader with the training set-up (shuffle buffer, batches of --batch-size)
  in-process, with 1 DataLoader worker and with --workers workers. ``per CPU-s`` divides the
  samples by the CPU time of every process involved (main + workers, from /proc), so it counts the
  hand-over through shared memory too; on a machine with fewer cores than workers + 1 the wall-clock
  rate is bounded by the cores, not the pipeline.
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

from disse.pipeline.shards import read_tar_samples
from disse.schemas.shard import decode_foa_sample, decode_iv, decode_meta, decode_sample, decode_w_wav, iv_member
from disse.trainer.data.loader import (DataConfig, ErrorLog, _raw_samples, collate, decode_raw, resolve_shards,
                                train_loader)


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


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of live processes (Linux /proc; 0 where unreadable)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def fresh_page_cost_us(n_bytes: int = 32 << 20, repeats: int = 5) -> float:
    """Microseconds to first-touch one 4 kB page of fresh shared memory (what a DataLoader batch costs
    per page, in the worker and again in the main process). ~0.1-0.3 us on bare metal; far more in
    some VMs, where it dominates the hand-over from workers."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        t = torch.empty(0, dtype=torch.uint8)._typed_storage()._new_shared(n_bytes)
        torch.tensor([], dtype=torch.uint8).set_(t).view(-1)[::4096].fill_(1)
        best = min(best, time.perf_counter() - t0)
        del t
    return 1e6 * best / (n_bytes / 4096)


def pipeline(shards, workers: int, batch_size: int, batches: int) -> tuple[float, float]:
    """(samples/s wall-clock, samples per CPU-second of every process involved: main + workers)."""
    cfg = DataConfig(batch_size=batch_size, num_workers=workers, shuffle_buffer=64, seed=0)
    it = iter(train_loader(shards, cfg))
    for _ in range(max(1, workers)):
        next(it)  # start-up (worker fork, first shard) is not throughput
    pids = [os.getpid()] + [w.pid for w in getattr(it, "_workers", [])]
    c0, t0 = _cpu_seconds(pids), time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        for name in ("waveform", "iv"):  # a consumer touches every page (mapping shared memory costs CPU)
            batch[name].reshape(-1)[::512].sum()
    wall, cpu = time.perf_counter() - t0, _cpu_seconds(pids) - c0
    del it
    n = batches * batch_size
    return n / wall, (n / cpu if cpu > 0 else float("nan"))


def parts(urls: list[str], n: int = 16) -> dict[str, float]:
    """Milliseconds per sample of each step (one core, best of 3), and MB per sample of each member."""
    samples = [s for s in _raw_samples(urls[0], ErrorLog())][:n]
    full = {s["__key__"]: s for s in read_tar_samples(urls[0])}  # every member, the FOA channels too
    out: dict[str, float] = {}

    def timed(name, fn, per_sample=True):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            if per_sample:
                for s in samples:
                    fn(s)
            else:
                fn(samples)
            best = min(best, time.perf_counter() - t0)
        out[name] = 1e3 * best / len(samples)

    timed("tar read (needed)", lambda _: list(_raw_samples(urls[0], ErrorLog())), per_sample=False)
    timed("FOA decode (4 channels)", lambda s: decode_foa_sample(full[s["__key__"]], decode_meta(s["json"])))
    if "w.wav" in samples[0]:
        timed("w.wav decode", lambda s: decode_w_wav(s["w.wav"], pcm16=True))
    member = iv_member(samples[0], where="benchmark")
    timed(f"{member} decode (int8 kept)", lambda s: decode_iv(s[member], dequantise=False))
    timed("json decode", lambda s: decode_meta(s["json"]))
    timed("decode_raw (all)", decode_raw)
    decoded = [decode_raw(s) for s in samples]
    timed("collate", lambda _: collate(decoded), per_sample=False)
    for member in ("foa.flac", "yzx.flac", "w.wav", "iv.npy", "iv.npz", "json"):
        sizes = [len(full[s["__key__"]].get(member, b"")) for s in samples]
        if any(sizes):
            out[f"{member} MB/sample"] = float(np.mean(sizes) / 1e6)
    out["all members MB/sample"] = sum(v for k, v in out.items() if k.endswith("MB/sample"))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default="", help="shard folder or brace pattern (default: render a small demo)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=40, help="batches timed per pipeline run (and per worker)")
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
    print(f"shards: {len(shards.urls)} ({shards.total} samples) from {spec}; cores: {os.cpu_count()}; "
          f"batch {args.batch_size}")
    costs = parts(shards.urls)
    for name, value in costs.items():
        print(f"  {name:24s} {value:8.2f}" + ("" if "MB" in name else " ms/sample"))
    r_naive = naive(shards.urls, n)
    print(f"{'reader':44s} {'samples/s':>10s} {'per CPU-s':>10s}")
    print(f"{'plain reference: tarfile + decode_sample':44s} {r_naive:10.1f} {r_naive:10.1f}")
    rows = [("pipeline, in-process (num_workers=0)", 0, args.batches)]
    for w in sorted({1, args.workers}):
        rows.append((f"pipeline, {w} DataLoader worker(s)", w, args.batches * max(1, w)))
    results = {}
    for label, workers, batches in rows:
        wall, per_cpu = pipeline(shards, workers, args.batch_size, batches)
        results[workers] = per_cpu
        verdict = "meets" if per_cpu >= 150 else "below"
        print(f"{label:44s} {wall:10.1f} {per_cpu:10.1f}   ({per_cpu / r_naive:.1f}x reference; {verdict} 150/CPU-s)")
    # per CPU-second counts the main process too (it maps the workers' shared-memory batches)
    hand_over = 1e3 / results[1] - 1e3 / results[0]
    first = decode_raw(next(_raw_samples(shards.urls[0], ErrorLog())))
    mb = (first["waveform"].nbytes + first["iv"].nbytes) / 1e6  # int16 W + int8 (v3, v4) or float16 iv
    print(f"hand-over from a worker (shared memory, both processes): {hand_over:.2f} ms/sample for "
          f"{mb:.2f} MB; a fresh 4 kB page costs {fresh_page_cost_us():.2f} us here")
    if args.workers + 1 > (os.cpu_count() or 1):
        print(f"note: {args.workers} workers + the main process share {os.cpu_count()} cores here")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
