"""The DISSE release's 96 x 96 evaluation grid as shards (reference §4.1, §2.2): `disse-synth official-grid`.

Inputs: the release's catalogues (``evaluation/audio_fixed.csv``: ``audiocap_id, youtube_id, start_time,
caption``; ``evaluation/rir_fixed.csv``), a folder of the AudioCaps test clips the user downloaded
(``{audiocap_id}.{wav,flac,mp3,ogg,m4a}`` in the folder, ``test/`` or ``val/``, tried in that order),
and a folder of A-format RIRs (regenerated with :mod:`disse.pipeline.aformat` when absent).

Order and text exactly as the release's ``make-evaluation-manifest``: audio rows in catalogue order
(source-major), RIR rows sorted by the ``rir_path`` string, ``spatial_id`` = stem of ``rir_path``,
``source_id`` = ``audiocap_id``, and the caption of every row drawn by the release's rule set with ONE
``random.Random(seed)`` (seed 42) advancing over all rows in that order.

Audio exactly as the release's evaluation path: the dry clip channel-averaged to mono, resampled to
48 kHz (torchaudio's default kernel), tiled / cropped to 480000 samples; full linear convolution with
the A-format RIR, first 480000 samples kept; A -> B with the release's matrix; features of the
``official`` preset computed from that float32 FOA. The FOA is then scaled so its peak is 0.99 (shards
hold 16-bit audio; the gain is in ``render.gain``): the release's ``omni_48k`` = stored W / gain.

Each sample: ``space_id`` = ``rir_id`` = the release's ``spatial_id`` (``auto_000000``...), captions from
the official rules (``caption`` = ``spatial_caption`` = the release's text), split ``test``. Shards of
``--shard-size`` samples (default 96: one source each) in ``{out}/test/``; ``{out}/manifest.csv`` holds
the release's manifest columns (``dry_path, rir_path, text, source_id, spatial_id``) for cross-checking.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from disse.pipeline.aformat import aformat_to_ambix, read_catalogue
from disse.pipeline.audio_io import read_audio
from disse.pipeline.official_features import fit_repeat, official_iv, resample_torchaudio
from disse.pipeline.render import pool_context
from disse.pipeline.shards import shard_name, write_json_atomic, write_tar_atomic
from disse.pipeline.splits import sample_key
from disse.schemas import SchemaError, ShardMeta, encode_sample, load_caption_rules
from disse.schemas.features import OfficialFeatureParams

DRY_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".m4a")
GRID_SIZE = 96
MAX_PEAK = 0.99
SPLIT = "test"


@dataclass(frozen=True)
class GridItem:
    """One (source, RIR) row of the grid, in the release's manifest order."""

    index: int
    source_id: str
    spatial_id: str
    source_caption: str
    text: str
    dry_path: Path
    rir_path: Path
    values: dict
    descriptors: dict

    @property
    def key(self) -> str:
        return sample_key(self.source_id, self.spatial_id)


def find_dry(root: Path, source_id: str) -> Path | None:
    """The release's look-up: ``root``, ``root/test``, ``root/val`` x ``.wav .flac .mp3 .ogg .m4a``."""
    for folder in (root, root / "test", root / "val"):
        for ext in DRY_EXTENSIONS:
            if (folder / f"{source_id}{ext}").is_file():
                return folder / f"{source_id}{ext}"
    return None


def _values(row: dict, where: str) -> dict:
    try:
        return {"azimuth_deg": float(row["azimuth_deg"]), "elevation_deg": float(row["elevation_deg"]),
                "source_distance_m": float(row["source_distance_m"]), "area_m2": float(row["area_m2"]),
                "t30_ms": float(row["fullband_T30_ms"])}
    except KeyError as exc:
        raise SchemaError(f"missing column {exc}", file=where) from None
    except ValueError as exc:
        raise SchemaError(f"not a number ({exc})", file=where) from None


def plan_grid(audio_catalogue: str | Path, rir_catalogue: str | Path, dry_root: str | Path,
              rir_root: str | Path, *, seed: int = 42, any_size: bool = False,
              check_files: bool = True) -> list[GridItem]:
    """The grid's rows in the release's order, with its texts (one ``random.Random(seed)``)."""
    audio_rows = read_catalogue(audio_catalogue)
    rir_rows = sorted(read_catalogue(rir_catalogue), key=lambda r: str(r.get("rir_path", "")))
    if not any_size and (len(audio_rows), len(rir_rows)) != (GRID_SIZE, GRID_SIZE):
        raise SchemaError(f"the official grid needs {GRID_SIZE} audio rows and {GRID_SIZE} RIR rows, got "
                          f"{len(audio_rows)} and {len(rir_rows)} (--any-size for a subset)", file=str(audio_catalogue))
    rules = load_caption_rules("official")
    rng = random.Random(seed)
    dry_root, rir_root = Path(dry_root), Path(rir_root)
    missing: list[str] = []
    dry: dict[str, Path] = {}
    for i, row in enumerate(audio_rows, start=1):
        for col in ("audiocap_id", "caption"):
            if not str(row.get(col) or "").strip():
                raise SchemaError("empty or missing", file=f"{audio_catalogue} row {i}", field=col)
        sid = str(row["audiocap_id"]).strip()
        found = find_dry(dry_root, sid)
        if found is None:
            missing.append(str(dry_root / f"{sid}.wav"))
            found = dry_root / f"{sid}.wav"
        dry[sid] = found
    rirs = []
    for i, row in enumerate(rir_rows, start=1):
        name = Path(str(row.get("rir_path") or "").strip())
        if not name.name:
            raise SchemaError("empty or missing", file=f"{rir_catalogue} (sorted) row {i}", field="rir_path")
        path = rir_root / name.name
        if not path.is_file():
            missing.append(str(path))
        values = _values(row, f"{rir_catalogue} {name.name}")
        rirs.append((name.stem, path, values, rules.describe(values)))
    if check_files and missing:
        more = f" ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise SchemaError(f"missing inputs: {', '.join(missing[:10])}{more}", file=str(dry_root))
    items = []
    for row in audio_rows:
        sid = str(row["audiocap_id"]).strip()
        for spatial_id, path, values, desc in rirs:
            text, _ = rules.caption(str(row["caption"]), desc, rng)
            items.append(GridItem(len(items), sid, spatial_id, str(row["caption"]), text, dry[sid], path, values, desc))
    return items


# --------------------------------------------------------------------------- audio, as the release does it

def load_dry_official(path: str | Path, sample_rate: int = 48000, n_samples: int = 480000) -> np.ndarray:
    """Dry clip -> mono (channel mean) -> 48 kHz (torchaudio's kernel) -> tiled / cropped, ``(n_samples,)``."""
    data, sr = read_audio(path)
    mono = data.astype(np.float32).mean(axis=0)
    x = resample_torchaudio(torch.from_numpy(np.ascontiguousarray(mono)), sr, sample_rate).numpy()
    if x.size == 0:
        raise SchemaError("clip holds no samples", file=str(path))
    return np.ascontiguousarray(fit_repeat(x, n_samples), dtype=np.float32)


def load_aformat_rir(path: str | Path, sample_rate: int = 48000) -> np.ndarray:
    """A-format RIR WAV -> ``(4, L)`` float32 at ``sample_rate`` (resampled with torchaudio's kernel if needed)."""
    data, sr = read_audio(path)
    if data.shape[0] != 4:
        raise SchemaError(f"A-format RIR must have 4 channels, got {data.shape[0]}", file=str(path), field="channels")
    if sr != sample_rate:
        data = resample_torchaudio(torch.from_numpy(np.ascontiguousarray(data)), sr, sample_rate).numpy()
    return np.ascontiguousarray(data, dtype=np.float32)


def spatialise_official(dry: np.ndarray, rir_a: np.ndarray, n_out: int = 480000) -> np.ndarray:
    """Full linear convolution of mono ``(T,)`` with A-format ``(4, L)``, first ``n_out`` samples, then
    A -> B: ``(4, n_out)`` float32 [W, Y, Z, X]."""
    n = dry.shape[-1] + rir_a.shape[-1] - 1
    conv = np.fft.irfft(np.fft.rfft(rir_a.astype(np.float64), n) * np.fft.rfft(dry.astype(np.float64), n)[None], n)
    return aformat_to_ambix(conv[:, :n_out], sn3d=False).astype(np.float32)  # the release's matrix exactly


def encode_item(item: GridItem, dry: np.ndarray, rir_a: np.ndarray, seed: int) -> dict:
    """One grid row -> a shard sample (official features from the unscaled FOA; FOA stored at peak 0.99)."""
    params = OfficialFeatureParams()
    foa = spatialise_official(dry, rir_a, params.clip_samples)
    iv = official_iv(foa, params)
    peak = float(np.abs(foa).max())
    if not peak > 0:
        raise SchemaError("spatialised clip is silent", file=str(item.dry_path))
    gain = MAX_PEAK / peak
    meta = ShardMeta(
        key=item.key, split=SPLIT, source_id=item.source_id, space_id=item.spatial_id, rir_id=item.spatial_id,
        source_caption=item.source_caption, spatial_caption=item.text, caption=item.text,
        descriptors=item.descriptors, features=params.to_dict(),
        render={"grid": "official", "row": item.index, "seed": seed, "gain": round(gain, 12),
                "gain_db": round(20 * math.log10(gain), 6), "max_peak": MAX_PEAK, "rules_version": "official-1",
                "omni_48k": "W / gain", "source_file": item.dry_path.name, "rir_file": item.rir_path.name},
        **item.values)
    return encode_sample(foa * np.float32(gain), iv, meta, params.sample_rate)


# --------------------------------------------------------------------------- running

def _shard_task(args: tuple[list[GridItem], str, int]) -> tuple[str, int]:
    items, path, seed = args
    cache: dict[str, np.ndarray] = {}

    def samples():
        for it in items:
            if str(it.dry_path) not in cache:
                cache.clear()  # rows are source-major: one dry clip at a time
                cache[str(it.dry_path)] = load_dry_official(it.dry_path)
            yield encode_item(it, cache[str(it.dry_path)], load_aformat_rir(it.rir_path), seed)

    return path, write_tar_atomic(path, samples())


def write_release_manifest(items: list[GridItem], path: Path) -> None:
    """The release's manifest CSV (paths relative to its folder) for cross-checking."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["dry_path", "rir_path", "text", "source_id", "spatial_id"])
        for it in items:
            w.writerow([Path(os.path.relpath(it.dry_path.resolve(), path.parent.resolve())).as_posix(),
                        Path(os.path.relpath(it.rir_path.resolve(), path.parent.resolve())).as_posix(),
                        it.text, it.source_id, it.spatial_id])


def build_grid(items: list[GridItem], out: str | Path, *, seed: int = 42, shard_size: int = GRID_SIZE,
               workers: int = 1, progress: bool = True) -> dict:
    """Write the grid's shards (complete ones are kept), ``test/sizes.json``, ``manifest.csv`` and
    ``grid.json``; returns the summary."""
    out = Path(out)
    chunks = [items[i:i + shard_size] for i in range(0, len(items), shard_size)]
    tasks = [(c, str(out / SPLIT / shard_name(SPLIT, k)), seed) for k, c in enumerate(chunks)]
    todo = [t for t in tasks if not Path(t[1]).is_file()]
    bar = tqdm(total=len(todo), unit="shard", desc="official grid", disable=not progress)
    if workers <= 1 or len(todo) <= 1:
        for t in todo:
            _shard_task(t)
            bar.update()
    else:
        with pool_context().Pool(min(workers, len(todo))) as pool:
            for _ in pool.imap_unordered(_shard_task, todo):
                bar.update()
            pool.close()
            pool.join()
    bar.close()
    write_json_atomic(out / SPLIT / "sizes.json", {Path(p).name: len(c) for c, p, _ in tasks})
    write_release_manifest(items, out / "manifest.csv")
    summary = {"grid": "official", "samples": len(items), "shards": len(tasks), "seed": seed,
               "sources": len({i.source_id for i in items}), "spatial": len({i.spatial_id for i in items}),
               "features": OfficialFeatureParams().to_dict(), "rules_version": "official-1"}
    write_json_atomic(out / "grid.json", summary)
    return summary


def read_grid_summary(out: str | Path) -> dict:
    """``grid.json`` of a built grid."""
    return json.loads((Path(out) / "grid.json").read_text())
