"""Render throughput and memory: the project's renderer vs a plain reference, worker scaling.

    .venv/bin/python benchmarks/render.py [--samples 32] [--rirs-per-clip 4] [--clips-per-rir 4]

Inputs (made in a temporary folder): 10 s dry clips as 44.1 kHz MP3 (like AudioCaps downloads)
and 0.8 s synthetic 4-channel FOA RIRs as 24-bit FLAC; N samples = clips x RIRs pairs in blocks
of L clips x K RIRs (the renderer's pairing). Both renderers produce the same thing per sample:
a 48 kHz 16-bit FOA FLAC, intensity features, JSON with captions, into a tar (the project also
writes W as ``w.wav`` and Y, Z, X as ``yzx.flac`` instead of one FLAC, and its features as int8
deflated in ``iv.npz``: schema v4, schemas/shard.py).

* reference: per sample, decode + resample the clip, read the RIR, ``scipy.signal.fftconvolve``
  per channel (float64), ``scipy.signal.stft`` per channel, intensity + mel pooling, soundfile
  FLAC, tarfile.
* project: ``disse.pipeline.render`` (batched float32 rFFT of the 4 RIR channels, the clip's
  spectrum reused across its K RIRs and each RIR's across its L clips, one STFT for all channels,
  bins above fmax skipped), via ``run_plan`` exactly as ``disse-synth render`` runs it.

Each measurement runs in a fresh child process so peak RSS (``ru_maxrss``) is per process; for
2 workers it is the largest worker's. Memory is measured at two dataset sizes (N and 3N samples)
to show it does not grow with the dataset. Timings on a shared machine are noisy: run it twice.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from math import gcd
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per process, for both renderers
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

SR = 48000
CLIP_SR = 44100
# The FOA bit depth of the current shard schema (v3, v4: 16-bit), so both renderers write the same FOA.
# (Until schema v2 both wrote 24-bit FLAC: 4.28x was measured against that reference.)
REFERENCE_FLAC = "PCM_16"


def make_inputs(root: Path, n_clips: int, n_rirs: int) -> tuple[Path, Path]:
    """MP3 clips (tone + noise) and FOA RIRs (direct path + decaying diffuse tail), CSVs with splits."""
    from disse.pipeline.foa import plane_wave_gains

    rng = np.random.default_rng(0)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "rirs").mkdir(exist_ok=True)
    t = np.arange(CLIP_SR * 10) / CLIP_SR
    with open(root / "clips.csv", "w") as f:
        f.write("audiocap_id,caption,split\n")
        for i in range(n_clips):
            x = 0.2 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(root / "audio" / f"c{i}.mp3", x.astype(np.float32), CLIP_SR, format="MP3")
            f.write(f"c{i},A tone number {i} with hiss.,train\n")
    n = int(0.8 * SR)
    with open(root / "rirs.csv", "w") as f:
        f.write("rir_path,azimuth_deg,elevation_deg,source_distance_m,area_m2,fullband_T30_ms,split\n")
        for j in range(n_rirs):
            az, el = rng.uniform(-180, 180), rng.uniform(-60, 60)
            ir = np.zeros((4, n))
            ir[:, 100] = 0.5 * plane_wave_gains(az, el)
            tail = rng.standard_normal((4, n - 200)) * np.exp(-np.arange(n - 200) / SR * 6.9 / 0.6) * 0.02
            tail[1:] *= 0.5
            ir[:, 200:] += tail
            sf.write(root / "rirs" / f"r{j}.flac", ir.T, SR, subtype="PCM_24")
            f.write(f"rirs/r{j}.flac,{az:.2f},{el:.2f},2.0,60,600,train\n")
    return root / "clips.csv", root / "rirs.csv"


def make_plan(root: Path, samples: int, k: int, l_: int, shard_size: int):
    from disse.pipeline.render import RenderOptions, plan_from_files

    n_clips = max(l_, math.ceil(samples / k))
    n_rirs = max(k, math.ceil(samples / l_))
    clips_csv, rirs_csv = make_inputs(root, n_clips, n_rirs)
    opts = RenderOptions(shard_size=shard_size, rirs_per_clip=k, clips_per_rir=l_)
    return plan_from_files(clips_csv, rirs_csv, opts, audio_dir=root / "audio")


# ---------------------------------------------------------------------------------------------
# The plain reference
# ---------------------------------------------------------------------------------------------

def reference_render(plan, out_tar: Path) -> int:
    from scipy.signal import fftconvolve, resample_poly, stft

    from disse.pipeline.captions import make_captions
    from disse.pipeline.features import mel_filterbank
    from disse.pipeline.splits import per_sample_rng

    params, rules = plan.params, plan.rules
    fb = mel_filterbank(params).astype(np.float64)
    n_out = params.clip_samples
    count = 0
    with tarfile.open(out_tar, "w") as tar:
        for task in plan.shards:
            for spec in task.samples:
                x, sr = sf.read(spec.clip.path, dtype="float64")
                if x.ndim > 1:
                    x = x.mean(axis=1)
                g = gcd(sr, SR)
                x = resample_poly(x, SR // g, sr // g)
                x = np.pad(x, (0, max(0, n_out - x.size)))[:n_out]
                h, _ = sf.read(spec.rir.rir_path, dtype="float64")
                y = np.stack([fftconvolve(x, h[:, c])[:n_out] for c in range(4)])
                rms = np.sqrt(np.mean(y[0] ** 2))
                gain = min(10 ** (-26 / 20) / rms, 0.99 / np.abs(y).max())
                y *= gain
                S = [stft(y[c], fs=SR, window="hann", nperseg=params.win_length,
                          noverlap=params.win_length - params.hop_length, nfft=params.n_fft)[2]
                     for c in range(4)]
                W, Y, Z, X = S
                cross = [np.conj(W) * X, np.conj(W) * Y, np.conj(W) * Z]
                energy = 0.5 * sum(np.abs(s) ** 2 for s in S)
                e_mel = fb.T @ energy
                iv = np.stack([fb.T @ c.real / (e_mel + params.eps) for c in cross]
                              + [fb.T @ c.imag / (e_mel + params.eps) for c in cross])
                iv = iv.transpose(0, 2, 1).astype(np.float16)
                values = {"azimuth_deg": spec.rir.azimuth_deg, "elevation_deg": spec.rir.elevation_deg,
                          "source_distance_m": spec.rir.source_distance_m, "area_m2": spec.rir.area_m2,
                          "t30_ms": spec.rir.t30_ms}
                desc = rules.describe(values)
                caps = make_captions(rules, desc, spec.clip.caption, per_sample_rng(0, spec.key))
                meta = json.dumps({"key": spec.key, "caption": caps.caption, "gain": gain, **values,
                                   "descriptors": desc}).encode()
                flac = io.BytesIO()
                sf.write(flac, y.T, SR, format="FLAC", subtype=REFERENCE_FLAC)
                npy = io.BytesIO()
                np.save(npy, iv)
                for ext, data in (("foa.flac", flac.getvalue()), ("iv.npy", npy.getvalue()), ("json", meta)):
                    info = tarfile.TarInfo(f"{spec.key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                count += 1
    return count


# ---------------------------------------------------------------------------------------------
# Child process: one measurement
# ---------------------------------------------------------------------------------------------

def child(mode: str, samples: int, k: int, l_: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plan = make_plan(root / "in", samples, k, l_, shard_size=max(1, samples // 4))
        from disse.pipeline.render import run_plan

        t0 = time.perf_counter()
        cpu0 = _cpu_seconds()
        if mode == "reference":
            n = reference_render(plan, root / "ref.tar")
            workers = 1
        else:
            workers = int(mode.split("-w")[1])
            m = run_plan(plan, root / "out", workers=workers, progress=False)
            n = m["rendered_samples"]
        dt = time.perf_counter() - t0
        cpu = _cpu_seconds() - cpu0
        who = resource.RUSAGE_CHILDREN if workers > 1 else resource.RUSAGE_SELF
        rss_mb = resource.getrusage(who).ru_maxrss / 1024
        print(json.dumps({"mode": mode, "samples": n, "seconds": dt, "cpu_seconds": cpu,
                          "workers": workers, "peak_rss_mb": rss_mb}))


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (pool workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def measure(mode: str, samples: int, k: int, l_: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--_child", mode, "--samples", str(samples),
                          "--rirs-per-clip", str(k), "--clips-per-rir", str(l_)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_same_output(k: int, l_: int) -> float:
    """Max |FOA difference| between the two renderers on one sample (sanity: same work done)."""
    from disse.pipeline.render import Renderer

    with tempfile.TemporaryDirectory() as tmp:
        import dataclasses

        plan = make_plan(Path(tmp), 2, k, l_, 2)
        plan.shards = [dataclasses.replace(plan.shards[0], samples=plan.shards[0].samples[:1])]
        reference_render(plan, Path(tmp) / "r.tar")
        with tarfile.open(Path(tmp) / "r.tar") as tar:
            ref_foa, _ = sf.read(io.BytesIO(tar.extractfile(tar.getmembers()[0]).read()), dtype="float32")
        spec = plan.shards[0].samples[0]
        foa, _, _ = Renderer(plan.params, plan.rules, plan.options).render(spec)
        return float(np.abs(foa - ref_foa.T).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--rirs-per-clip", type=int, default=4)
    ap.add_argument("--clips-per-rir", type=int, default=4)
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        child(a._child, a.samples, a.rirs_per_clip, a.clips_per_rir)
        return
    k, l_, n = a.rirs_per_clip, a.clips_per_rir, a.samples
    print(f"render benchmark: {n} samples, K={k} RIRs per clip, L={l_} clips per RIR, "
          f"{os.cpu_count()} cores visible")
    print(f"sanity: max |FOA project - FOA reference| on one sample = {check_same_output(k, l_):.2e} "
          f"(the reference's {REFERENCE_FLAC} FLAC rounds to 2**-16 = 1.5e-05)")
    ref = measure("reference", n, k, l_)
    w1 = measure("project-w1", n, k, l_)
    w2 = measure("project-w2", n, k, l_)
    big = measure("project-w1", 3 * n, k, l_)
    big2 = measure("project-w2", 3 * n, k, l_)
    rate = lambda r: r["samples"] / r["seconds"]  # noqa: E731
    cpu_rate = lambda r: r["samples"] / r["cpu_seconds"]  # noqa: E731
    print(f"load average now: {os.getloadavg()[0]:.1f} (wall-clock figures need an idle machine)")
    print(f"{'renderer':22s} {'samples':>7s} {'wall s':>7s} {'samples/s':>10s} {'per core':>9s} "
          f"{'CPU s':>7s} {'samples/CPU-s':>14s} {'peak RSS/worker':>16s}")
    for name, r in (("reference (1 core)", ref), ("project, 1 worker", w1), ("project, 2 workers", w2),
                    ("project, 1 worker", big), ("project, 2 workers", big2)):
        print(f"{name:22s} {r['samples']:7d} {r['seconds']:7.2f} {rate(r):10.2f} "
              f"{rate(r) / r['workers']:9.2f} {r['cpu_seconds']:7.2f} {cpu_rate(r):14.2f} "
              f"{r['peak_rss_mb']:13.0f} MB")
    print(f"speed-up per core, project vs reference: {rate(w1) / rate(ref):.2f}x wall-clock, "
          f"{cpu_rate(w1) / cpu_rate(ref):.2f}x per CPU-second (goal >= 4x)")
    print(f"worker scaling, 2 vs 1 workers (wall-clock): {rate(w2) / rate(w1):.2f}x at {n} samples, "
          f"{rate(big2) / rate(big):.2f}x at {3 * n} samples (goal >= 1.7x); CPU per sample "
          f"2 vs 1 workers: {cpu_rate(w1) / cpu_rate(w2):.2f}x (1.0 = no parallel overhead)")
    print(f"peak RSS per worker: {w1['peak_rss_mb']:.0f} MB at {n} samples, {big['peak_rss_mb']:.0f} MB "
          f"at {3 * n} samples (1 worker); {w2['peak_rss_mb']:.0f} / {big2['peak_rss_mb']:.0f} MB (2 workers)")


if __name__ == "__main__":
    main()
