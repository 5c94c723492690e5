"""Small real shards for the trainer's data tests: real FLAC + npy + json in real tar files.

Written with ``disse.schemas.encode_sample`` so they follow the shard contract exactly; clips are
short (``clip_seconds``) to keep tests fast. Not a substitute for the demo renderer: the
waveforms are tones and noise, not room renders.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np

from disse.schemas import SCHEMA_VERSION, ShardMeta, encode_sample
from disse.schemas.features import FeatureParams

DIRS = {"front": 0.0, "left": 90.0, "behind": 180.0, "right": -90.0}


def make_meta(key: str, split: str, i: int, params: FeatureParams, schema_version: int = SCHEMA_VERSION) -> ShardMeta:
    src = f"clip{i % 7}"
    direction = list(DIRS)[i % 4]
    return ShardMeta(
        key=key, split=split, source_id=src, space_id=direction, rir_id=f"rir{i % 5}",
        source_caption=f"sound number {i % 7}", spatial_caption=f"from the {direction}",
        caption=f"sound number {i % 7} from the {direction}",
        azimuth_deg=DIRS[direction], elevation_deg=float(i % 3 * 10 - 10), source_distance_m=1.0 + i % 3,
        area_m2=30.0 + 10 * (i % 4), t30_ms=200.0 + 100 * (i % 5),
        descriptors={"direction": direction}, features=params.to_dict(), render={"seed": i},
        schema_version=schema_version)


def write_shards(root: Path, split: str, sizes: list[int], *, clip_seconds: float = 0.25,
                 seed: int = 0, schema_version: int = SCHEMA_VERSION) -> list[Path]:
    """Write ``len(sizes)`` shards ``{split}-{k:06d}.tar`` and ``sizes.json`` under ``root/split``.

    ``schema_version=1`` / ``2`` write the older layouts (no W member / ``w.wav``), for the readers' fallback.
    """
    params = FeatureParams(clip_seconds=clip_seconds)
    rng = np.random.default_rng(seed)
    out = root / split
    out.mkdir(parents=True, exist_ok=True)
    paths, i = [], 0
    for k, n in enumerate(sizes):
        path = out / f"{split}-{k:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for _ in range(n):
                meta = make_meta(f"{split}_{i:06d}", split, i, params, schema_version)
                foa = (0.1 * rng.standard_normal((4, params.clip_samples))).clip(-1, 1).astype(np.float32)
                foa[0, :10] = i / 1000.0  # W carries the sample index: order checks can read it back
                # bounded by 1 like real intensity features (schema v3 stores them as int8)
                iv = rng.uniform(-1, 1, (6, params.n_frames, params.n_mels)).astype(np.float16)
                for name, data in encode_sample(foa, iv, meta).items():
                    if name == "__key__":
                        continue
                    info = tarfile.TarInfo(f"{meta.key}.{name}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                i += 1
        paths.append(path)
    (out / "sizes.json").write_text(json.dumps({p.name: n for p, n in zip(paths, sizes)}))
    return paths
