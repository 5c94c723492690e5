"""Throughput of the simulated FOA RIR bank (`disse-synth rirs`): RIRs per second, per worker.

    .venv/bin/python benchmarks/rirs.py [--rooms 8] [--positions 4] [--workers 1 2]

Prints, for the default settings and the fast demo preset, RIRs/s with each worker count, the
speed-up over one worker, the mean RIR length and the bank's size on disk.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from disse.pipeline.rirs import simulate_bank


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rooms", type=int, default=8)
    ap.add_argument("--positions", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    import pyroomacoustics  # noqa: F401  (import cost out of the timings)

    n = args.rooms * args.positions
    for label, fast in (("default", False), ("fast preset", True)):
        base = None
        for workers in args.workers:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                csv_path = simulate_bank(tmp, args.rooms, args.positions, seed=0, workers=workers, fast=fast)
                dt = time.perf_counter() - t0
                df = pd.read_csv(csv_path)
                size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
            rate = n / dt
            base = base or rate
            print(f"{label:<12} workers={workers}: {n} RIRs in {dt:6.2f} s = {rate:6.1f} RIR/s "
                  f"({rate / workers:5.1f} per worker, x{rate / base:.2f} vs 1 worker); mean length "
                  f"{df.rir_seconds.mean():.2f} s, mean order {df.ism_max_order.mean():.1f}, "
                  f"{size / n / 1e6:.2f} MB/RIR")


if __name__ == "__main__":
    main()
