"""Data-pipeline throughput in samples per CPU-second (goal: >= 400 with 2 workers), against a plain reader.

    python benchmarks/data.py                       # renders a small demo set into a temp folder
    python benchmarks/data.py --shards demo/train   # or any shard folder / brace pattern (URLs, pipe: too)
    python benchmarks/data.py --workers 4 --batches 40
    python benchmarks/data.py --quick --shards DIR  # a few batches: checks the script, not the figures

Figures printed:
* the cost of each step for one sample in ms (tar reading, each member's decoding, collate) and
  each member's size
* ``plain reference``: one process, tarfile + ``decode_sample`` (every member, the whole FOA decoded,
  as a reader written from DESIGN.md's version 1 would), no shuffle
* ``pipeline``: disse.trainer.data.loader with the training set-up (shuffle buffer, batches of --batch-size)
  in-process, with 1 DataLoader worker and with --workers workers. ``per CPU-s`` divides the
  samples by the CPU time of every process involved (main + workers, from /proc), so it counts the
  hand-over through shared memory too; on a machine with fewer cores than workers + 1 the wall-clock
  rate is bounded by the cores, not the pipeline. ``main`` / ``workers``: CPU ms per sample of each side.
* ``DataLoader defaults`` (same run, same shards): the pipeline with PyTorch's default hand-over (every
  batch in fresh shared memory) and glibc's default malloc in the workers, i.e. without
  ``BatchBuffers`` and ``keep_freed_memory`` (trainer/data/loader.py): what those two save here.
* ``official preset``: what its front end costs per sample on CPU (all four channels decoded, the
  release's 16 kHz intensity features in torch, the CLAP extractor of the W channel), and the shard
  layouts that would carry it (bytes per sample and decode cost, measured on these samples).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader

import disse.trainer.data.loader as loader_module

from disse.pipeline.shards import read_tar_samples
from disse.schemas.shard import decode_foa_sample, decode_iv, decode_meta, decode_sample, decode_w_wav, iv_member
from disse.trainer.data.loader import DataConfig, ErrorLog, _raw_samples, collate, decode_raw, resolve_shards


def naive(urls: list[str], n: int) -> float:
    """Samples per CPU-second (one process, one thread: = samples/s) of the obvious reader: group tar
    members, decode everything."""
    t0, count = time.process_time(), 0
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
    return count / (time.process_time() - t0)


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


@contextlib.contextmanager
def dataloader_defaults():
    """The loader with PyTorch's default hand-over (fresh shared memory per batch, no copy-out) and glibc's
    default malloc in the workers: the reference the reused buffers are measured against (workers are
    forked, so they see these module attributes)."""
    saved = (loader_module.BatchBuffers, loader_module.keep_freed_memory, loader_module._ReusingLoader)
    loader_module.BatchBuffers = lambda n: None
    loader_module.keep_freed_memory = lambda: False
    loader_module._ReusingLoader = DataLoader
    try:
        yield
    finally:
        loader_module.BatchBuffers, loader_module.keep_freed_memory, loader_module._ReusingLoader = saved


def pipeline(shards, workers: int, batch_size: int, batches: int) -> tuple[float, float, float, float]:
    """(samples/s wall-clock, samples per CPU-second of every process involved: main + workers,
    CPU ms per sample in the main process, in the workers)."""
    cfg = DataConfig(batch_size=batch_size, num_workers=workers, shuffle_buffer=64, seed=0)
    it = iter(loader_module.train_loader(shards, cfg))
    for _ in range(max(1, workers)):
        next(it)  # start-up (worker fork, first shard) is not throughput
    main, worker_pids = [os.getpid()], [w.pid for w in getattr(it, "_workers", [])]
    m0, w0, t0 = _cpu_seconds(main), _cpu_seconds(worker_pids), time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        for name in ("waveform", "iv"):  # a consumer touches every page (mapping shared memory costs CPU)
            batch[name].reshape(-1)[::512].sum()
    wall, m_cpu, w_cpu = time.perf_counter() - t0, _cpu_seconds(main) - m0, _cpu_seconds(worker_pids) - w0
    del it
    n = batches * batch_size
    cpu = m_cpu + w_cpu
    return n / wall, (n / cpu if cpu > 0 else float("nan")), 1e3 * m_cpu / n, 1e3 * w_cpu / n


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


def _best_ms(fn, items, repeats: int = 3) -> float:
    """Best-of-``repeats`` milliseconds per item of ``fn(item)`` for each item (one thread)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best / len(items)


def _wav(x: np.ndarray, rate: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.ascontiguousarray(x.T), rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    return sf.read(io.BytesIO(data), dtype="int16", always_2d=True)[0]


def official_costs(urls: list[str], n: int = 8) -> list[tuple[str, float, float]]:
    """The official preset's front end on CPU, per sample: ``(what, ms, MB per sample or nan)`` rows.

    Its model reads all four channels (the 16 kHz intensity features) and W at 48 kHz (HTSAT). Rows:
    decoding what the shard carries today, computing the features in torch, the CLAP extractor of W, and
    the layouts a shard could carry instead, each with its bytes and decode cost on these samples.
    """
    import dataclasses

    # the release's front end lives with synthesis (pipeline/official_features.py); the benchmark may import it
    from disse.pipeline.official_features import official_intensity, resample_torchaudio
    from disse.schemas.features import OfficialFeatureParams
    from disse.trainer.model.official import official_htsat_inputs

    full = [s for s in read_tar_samples(urls[0]) if "yzx.flac" in s][:n]
    if not full:
        return []
    foas = [decode_foa_sample(s, decode_meta(s["json"]))[0] for s in full]
    p48 = OfficialFeatureParams()
    p16 = dataclasses.replace(p48, sample_rate=p48.feature_sample_rate)
    with torch.no_grad():
        foa16 = [resample_torchaudio(torch.from_numpy(f), 48000, 16000).numpy().clip(-1, 1) for f in foas]
    rows = [
        ("decode FOA 48 kHz, 4 ch (w.wav + yzx.flac, now)",
         _best_ms(lambda s: decode_foa_sample(s, decode_meta(s["json"])), full),
         float(np.mean([len(s["w.wav"]) + len(s["yzx.flac"]) for s in full]) / 1e6)),
        ("features in torch from 48 kHz (resample + STFT + IV)", _best_ms(lambda f: official_intensity(f, p48), foas),
         float("nan")),
        ("features in torch from 16 kHz (STFT + IV)", _best_ms(lambda f: official_intensity(f, p16), foa16),
         float("nan")),
        ("CLAP extractor of W (numpy, the release's call)", _best_ms(lambda f: official_htsat_inputs(f[0]), foas),
         float("nan")),
    ]
    for fmt, name in (("WAV", "16-bit WAV"), ("FLAC", "FLAC")):
        yzx16 = [_wav(f[1:], 16000, fmt) for f in foa16]
        w16_needed = _best_ms(lambda f: resample_torchaudio(torch.from_numpy(f[0]), 48000, 16000), foas)
        rows.append((f"option: w.wav 48 kHz + yzx 16 kHz {name} (decode; + W resampled {w16_needed:.1f} ms)",
                     _best_ms(lambda i: (decode_w_wav(full[i]["w.wav"], pcm16=True), _decode(yzx16[i])),
                              range(len(full))),
                     float(np.mean([len(s["w.wav"]) + len(y) for s, y in zip(full, yzx16)]) / 1e6)))
    iv_bytes = 2 * int(np.prod(p48.iv_shape))
    rows.append(("option: precomputed features, float16 (6, 201, 1601)", float("nan"), iv_bytes / 1e6 + 0.96))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default="", help="shard folder or brace pattern (default: render a small demo)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=40, help="batches timed per pipeline run (and per worker)")
    ap.add_argument("--goal", type=float, default=400.0, help="samples per CPU-second the worker rows should reach")
    ap.add_argument("--quick", action="store_true", help="2 batches of 4 per row: checks the script, not figures")
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.batch_size = 2, 4
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
          f"batch {args.batch_size}; load average {os.getloadavg()[0]:.1f} (a shared machine inflates CPU time)")
    costs = parts(shards.urls, n=4 if args.quick else 16)
    for name, value in costs.items():
        print(f"  {name:24s} {value:8.2f}" + ("" if "MB" in name else " ms/sample"))
    r_naive = naive(shards.urls, min(n, 32))
    print(f"{'reader':48s} {'samples/s':>10s} {'per CPU-s':>10s} {'main ms':>8s} {'workers ms':>10s}")
    print(f"{'plain reference: tarfile + decode_sample':48s} {r_naive:10.1f} {r_naive:10.1f}")
    rows = [("pipeline, in-process (num_workers=0)", 0, args.batches, False)]
    for w in sorted({1, args.workers}):
        rows.append((f"pipeline, {w} DataLoader worker(s)", w, args.batches * max(1, w), False))
    rows.append((f"  same, {args.workers} worker(s), DataLoader defaults", args.workers,
                 args.batches * max(1, args.workers), True))
    results = {}
    for label, workers, batches, defaults in rows:
        with dataloader_defaults() if defaults else contextlib.nullcontext():
            wall, per_cpu, main_ms, workers_ms = pipeline(shards, workers, args.batch_size, batches)
        results[(workers, defaults)] = per_cpu
        verdict = f"; {'meets' if per_cpu >= args.goal else 'below'} {args.goal:.0f}/CPU-s" if workers else ""
        print(f"{label:48s} {wall:10.1f} {per_cpu:10.1f} {main_ms:8.2f} {workers_ms:10.2f}   "
              f"({per_cpu / r_naive:.1f}x reference{verdict})")
    # per CPU-second counts the main process too (it maps the workers' shared-memory batches)
    hand_over = 1e3 / results[(1, False)] - 1e3 / results[(0, False)]
    first = decode_raw(next(_raw_samples(shards.urls[0], ErrorLog())))
    mb = (first["waveform"].nbytes + first["iv"].nbytes) / 1e6  # int16 W + int8 (v3, v4) or float16 iv
    print(f"hand-over from a worker (both processes): {hand_over:.2f} ms/sample for {mb:.2f} MB; a fresh 4 kB "
          f"page of shared memory costs {fresh_page_cost_us():.2f} us here")
    if args.workers + 1 > (os.cpu_count() or 1):
        print(f"note: {args.workers} workers + the main process share {os.cpu_count()} cores here")
    official = official_costs(shards.urls, n=2 if args.quick else 8)
    if official:
        print("official preset front end on CPU (one thread), per sample:")
        for what, ms, mb in official:
            print(f"  {what:78s} {ms:7.2f} ms" + (f"  {mb:5.2f} MB" if mb == mb else ""))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
