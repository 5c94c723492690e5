"""Bytes per sample of the same renders written as shard schema version 2, 3 and 4.

    python benchmarks/shard_size.py --demo demo/                 # the README demo's inputs
    python benchmarks/shard_size.py --clips clips.csv --rirs rirs.csv --audio-dir audio/ --samples 200
    python benchmarks/shard_size.py --demo demo/ --clip-audio 'speech/*.wav' --samples 40

Renders ``--samples`` samples of the plan that ``disse-synth render`` would make from the CSVs with
K x L pairing (a seeded random choice across all splits; ``--samples 0`` renders every one), encodes each render
with ``encode_sample`` once per schema version, and prints the mean size of every member and of
the tar entry (members + 512-byte headers and padding), and each version's ratio to version 2.
``--clip-audio GLOB`` swaps the plan's dry clips for these files (each used for 5 samples with
random RIRs of the plan): the sizes of real recordings through the same rooms. docs/synthesis.md
("Shard size") gives the figures measured with it.
"""
from __future__ import annotations

import argparse
import glob
import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from disse.pipeline.render import Renderer, RenderOptions, plan_from_files
from disse.schemas import load_caption_rules, load_feature_params
from disse.schemas.shard import encode_sample

VERSIONS = (2, 3, 4)


def tar_entry_bytes(members: dict) -> int:
    """Bytes the sample's members take in a tar: a 512-byte header each, data padded to 512."""
    return sum(512 + -(-len(data) // 512) * 512 for name, data in members.items() if not name.startswith("__"))


def measure(specs, renderer: Renderer, label: str) -> dict[str, float]:
    """Mean MB per sample of every version's tar entry and members over ``specs``."""
    sums: dict[str, list[int]] = {}
    for spec in tqdm(specs, desc=label, unit="sample"):
        foa, iv, meta = renderer.render(spec)
        for v in VERSIONS:
            members = encode_sample(foa, iv, replace(meta, schema_version=v))
            sums.setdefault(f"v{v}", []).append(tar_entry_bytes(members))
            for name, data in members.items():
                if not name.startswith("__"):
                    sums.setdefault(f"v{v} {name}", []).append(len(data))
    return {k: float(np.mean(v)) / 1e6 for k, v in sums.items()}


def report(label: str, n: int, mb: dict[str, float]) -> None:
    print(f"== {label}: {n} samples (MB per sample)")
    for v in VERSIONS:
        parts = ", ".join(f"{k.split(' ', 1)[1]} {x:.3f}" for k, x in mb.items() if k.startswith(f"v{v} "))
        ratio = mb[f"v{v}"] / mb["v2"]
        print(f"  version {v}: {mb[f'v{v}']:.3f} MB = {100 * ratio:.1f} % of version 2   ({parts})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", help="a `disse-synth demo` output folder (reads its inputs/ CSVs)")
    ap.add_argument("--clips", help="dry-clip CSV (instead of --demo)")
    ap.add_argument("--rirs", help="RIR CSV (instead of --demo)")
    ap.add_argument("--audio-dir", help="folder the clip CSV's relative paths start from")
    ap.add_argument("--samples", type=int, default=200, help="renders to measure (0: the whole plan)")
    ap.add_argument("--clip-audio", help="glob of recordings to render instead of the plan's clips")
    ap.add_argument("--rirs-per-clip", type=int, help="K (default: the demo's with --demo, else 4)")
    ap.add_argument("--clips-per-rir", type=int, help="L (default: the demo's with --demo, else 4)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from disse.pipeline.demo import DemoConfig

    demo_cfg = DemoConfig()
    if args.demo:
        root = Path(args.demo) / "inputs"
        clips, rirs = root / "dry" / "clips.csv", root / "rirs" / "rirs.csv"
    elif args.clips and args.rirs:
        clips, rirs = Path(args.clips), Path(args.rirs)
    else:
        sys.exit("error: give --demo DIR, or --clips and --rirs")
    for path in (clips, rirs):
        if not path.is_file():
            sys.exit(f"error: {path} not found")
    options = RenderOptions(seed=args.seed, rirs_per_clip=args.rirs_per_clip or demo_cfg.rirs_per_clip,
                            clips_per_rir=args.clips_per_rir or demo_cfg.clips_per_rir)
    plan = plan_from_files(clips, rirs, options, audio_dir=args.audio_dir)
    specs = [s for task in plan.shards for s in task.samples]
    if not specs:
        sys.exit("error: the plan has no samples")
    rng = random.Random(args.seed)
    renderer = Renderer(load_feature_params(), load_caption_rules(), options)
    if args.clip_audio:
        files = sorted(glob.glob(args.clip_audio))
        if not files:
            sys.exit(f"error: --clip-audio {args.clip_audio!r} matches no file")
        chosen = []
        for i, path in enumerate(files):
            for j in range(5):
                spec = rng.choice(specs)
                clip = replace(spec.clip, path=Path(path), source_id=f"audio{i}")
                chosen.append(replace(spec, clip=clip, key=f"audio{i}_{j}"))
        label = f"{len(files)} recordings x 5 RIRs"
    else:
        chosen = specs if args.samples <= 0 or args.samples >= len(specs) else rng.sample(specs, args.samples)
        label = f"plan of {clips}"
    report(label, len(chosen), measure(chosen, renderer, "render"))


if __name__ == "__main__":
    main()
