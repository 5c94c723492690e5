"""``disse-synth inspect``: look inside rendered WebDataset shards.

``inspect TARGET`` accepts a dataset root or split folder (every ``*.tar`` below it), a brace
pattern (``shards/train/train-{000000..000003}.tar``) or one tar, and prints a summary; ``--show``,
``--stats`` (+ ``--plot``), ``--export`` and ``--plot-sample`` look closer. Shards are read with
plain :mod:`tarfile` and decoded with :mod:`disse.schemas.shard`; only the members a view needs
are read (summary and statistics read just the ``json`` members).
"""
from __future__ import annotations

import functools
import json
import math
import tarfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf
from braceexpand import braceexpand
from scipy.signal import stft

from disse.pipeline.features import direction_from_iv
from disse.schemas import SchemaError, ShardMeta, load_caption_rules
from disse.schemas.shard import (IV_CHANNELS, decode_foa_sample, decode_iv, decode_meta, decode_w_wav,
                                 group_tar_members, iv_member)

QUANTITIES = (  # (json field, label with unit)
    ("azimuth_deg", "azimuth (°)"),
    ("elevation_deg", "elevation (°)"),
    ("source_distance_m", "source distance (m)"),
    ("area_m2", "floor area (m²)"),
    ("t30_ms", "T30 (ms)"),
)


# ---------------------------------------------------------------------------------------------
# Finding and reading shards
# ---------------------------------------------------------------------------------------------

def find_shards(target: str | Path) -> list[Path]:
    """Shard paths for a folder (recursive ``*.tar``, hidden files skipped), a brace pattern, or a
    tar. Raises :class:`SchemaError` when nothing matches or a listed shard is missing."""
    text = str(target)
    if "{" in text:
        paths = [Path(p) for p in braceexpand(text)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise SchemaError(f"shard not found{more}", file=str(missing[0]))
    else:
        path = Path(text)
        if path.is_dir():
            paths = sorted(p for p in path.rglob("*.tar")
                           if p.is_file() and not any(part.startswith(".") for part in
                                                      p.relative_to(path).parts))
        elif path.is_file():
            paths = [path]
        else:
            raise SchemaError("no such file or folder", file=text)
    if not paths:
        raise SchemaError("no shards (*.tar) found", file=text)
    return paths


@dataclass
class RawSample:
    """One sample's tar members: ``sizes`` (ext -> bytes) of all, ``data`` of those read."""

    key: str
    shard: Path
    sizes: dict[str, int] = field(default_factory=dict)
    data: dict[str, bytes] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.shard}:{self.key}"

    def meta(self) -> ShardMeta:
        if "json" not in self.data:
            raise SchemaError("missing member 'json'", file=self.where, field="json")
        return decode_meta(self.data["json"], where=self.where)


def iter_shard(path: Path, read: Iterable[str] | None = ("json",)) -> Iterator[RawSample]:
    """Samples of one tar in order, grouped the WebDataset way (key = name up to the first dot of
    the basename, members consecutive). ``read``: extensions whose bytes are loaded (None: all)."""
    wanted = None if read is None else set(read)
    try:
        with tarfile.open(path, mode="r:") as tar:
            for key, group in group_tar_members(tar):
                sample = RawSample(key=key, shard=path, sizes={ext: info.size for ext, info in group.items()})
                for ext, info in group.items():
                    if wanted is None or ext in wanted:
                        sample.data[ext] = tar.extractfile(info).read()
                yield sample
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise SchemaError(f"cannot read tar ({exc})", file=str(path)) from None


def iter_samples(shards: Iterable[Path], read: Iterable[str] | None = ("json",)) -> Iterator[RawSample]:
    for shard in shards:
        yield from iter_shard(shard, read)


def find_sample(shards: list[Path], key: str) -> RawSample:
    """The sample with ``__key__ == key`` with all members read; :class:`SchemaError` if absent."""
    for shard in shards:
        for sample in iter_shard(shard, read=()):  # headers only while searching
            if sample.key == key:
                return next(s for s in iter_shard(shard, read=None) if s.key == key)
    where = str(shards[0]) if len(shards) == 1 else f"{len(shards)} shards under {shards[0].parent}"
    raise SchemaError(f"no sample with key {key!r}", file=where, field="__key__")


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------

def _split_of(shard: Path, meta: ShardMeta | None) -> str:
    if meta is not None:
        return meta.split
    return shard.name.rsplit("-", 1)[0] if "-" in shard.name else shard.parent.name


def summarise(shards: list[Path]) -> dict:
    """Counts and sizes per split and per member, schema versions, sizes.json agreement."""
    per_split: dict[str, dict] = defaultdict(lambda: {"shards": set(), "samples": 0, "bytes": 0})
    member_bytes: Counter = Counter()
    member_count: Counter = Counter()
    versions: Counter = Counter()
    per_shard: Counter = Counter()
    bad: list[str] = []
    first_keys: list[str] = []
    for sample in iter_samples(shards):
        try:
            meta = sample.meta()
            versions[meta.schema_version] += 1
        except SchemaError as err:
            meta = None
            bad.append(str(err))
        split = per_split[_split_of(sample.shard, meta)]
        split["shards"].add(sample.shard)
        split["samples"] += 1
        split["bytes"] += sum(sample.sizes.values())
        member_bytes.update(sample.sizes)
        member_count.update(sample.sizes.keys())
        per_shard[sample.shard] += 1
        if len(first_keys) < 3:
            first_keys.append(sample.key)
    sizes_issues = []
    for folder in sorted({s.parent for s in shards}):
        sizes_file = folder / "sizes.json"
        if not sizes_file.is_file():
            continue
        try:
            declared = json.loads(sizes_file.read_text())
        except (OSError, ValueError) as exc:
            sizes_issues.append(f"{sizes_file}: unreadable ({exc})")
            continue
        for shard in shards:
            if shard.parent == folder and declared.get(shard.name) != per_shard[shard]:
                sizes_issues.append(f"{sizes_file}: {shard.name} declares "
                                    f"{declared.get(shard.name)}, holds {per_shard[shard]}")
    n = sum(s["samples"] for s in per_split.values())
    return {
        "shards": len(shards), "samples": n,
        "splits": {k: {"shards": len(v["shards"]), "samples": v["samples"],
                       "mb_per_sample": v["bytes"] / max(v["samples"], 1) / 1e6}
                   for k, v in sorted(per_split.items())},
        "members": {ext: {"samples": member_count[ext], "mean_bytes": member_bytes[ext] / member_count[ext]}
                    for ext in sorted(member_count)},
        "schema_versions": dict(versions), "bad": bad, "sizes_json_issues": sizes_issues,
        "first_keys": first_keys,
    }


def _human(n_bytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.2f} {unit}"
        n_bytes /= 1000
    return ""


def format_summary(summary: dict, target: str) -> str:
    lines = [f"{target}: {summary['shards']} shard(s), {summary['samples']} sample(s)", "",
             f"{'split':<12}{'shards':>8}{'samples':>10}{'MB/sample':>11}"]
    for split, s in summary["splits"].items():
        lines.append(f"{split:<12}{s['shards']:>8}{s['samples']:>10}{s['mb_per_sample']:>11.2f}")
    lines += ["", "members (mean size): " + ", ".join(
        f"{ext} {_human(m['mean_bytes'])}" + (f" [in {m['samples']}]" if m["samples"] != summary["samples"] else "")
        for ext, m in summary["members"].items())]
    versions = ", ".join(f"{v} ({c} samples)" for v, c in sorted(summary["schema_versions"].items()))
    lines.append(f"schema_version: {versions or 'none readable'}")
    if summary["first_keys"]:
        lines.append("first keys: " + ", ".join(summary["first_keys"]))
    if summary["sizes_json_issues"]:
        lines += ["sizes.json disagrees with the shards:"] + [f"  {x}" for x in summary["sizes_json_issues"]]
    if summary["bad"]:
        lines += [f"{len(summary['bad'])} unreadable sample(s), e.g. {summary['bad'][0]}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# One sample
# ---------------------------------------------------------------------------------------------

def format_sample(sample: RawSample) -> str:
    """Metadata, captions, descriptors and audio / feature shapes of one sample."""
    meta = sample.meta()
    foa, sr = decode_foa_sample(sample.data, meta, where=sample.where)
    member = iv_member(sample.data, where=sample.where)
    iv = decode_iv(sample.data[member], where=sample.where)
    stored = "foa.flac" if "foa.flac" in sample.data else "w.wav + yzx.flac, 16-bit"
    rms = np.sqrt(np.mean(foa.astype(np.float64) ** 2, axis=1))
    lines = [
        f"key: {meta.key}   (shard {sample.shard}, split {meta.split}, schema {meta.schema_version})",
        f"source_id: {meta.source_id}", f"space_id: {meta.space_id}", f"rir_id: {meta.rir_id}", "",
        f"caption:         {meta.caption}", f"source caption:  {meta.source_caption}",
        f"spatial caption: {meta.spatial_caption}", "",
        f"azimuth {meta.azimuth_deg:.1f}°, elevation {meta.elevation_deg:.1f}°, "
        f"distance {meta.source_distance_m:.2f} m, floor area {meta.area_m2:.1f} m², "
        f"T30 {meta.t30_ms:.0f} ms",
        "descriptors: " + ", ".join(f"{k}={v}" for k, v in meta.descriptors.items()),
        f"FOA ({stored}): 4 x {foa.shape[1]} at {sr} Hz ({foa.shape[1] / sr:.2f} s), peak "
        f"{np.abs(foa).max():.3f}, RMS W/Y/Z/X " + "/".join(f"{20 * math.log10(max(r, 1e-12)):.1f}" for r in rms)
        + " dBFS",
        *_w_line(sample, foa, sr),
        f"{member}: {iv.shape} {iv.dtype}" + (" (stored as int8 q / 127)" if meta.schema_version >= 3
                                              and (meta.features or {}).get("preset", "project") == "project" else ""),
        "mean active intensity points to azimuth {:.1f}°, elevation {:.1f}°".format(*iv_direction(iv, meta.features)),
        "render: " + json.dumps(meta.render, sort_keys=True),
        "features: " + json.dumps(meta.features, sort_keys=True),
    ]
    return "\n".join(lines)


def _w_line(sample: RawSample, foa: np.ndarray, sr: int) -> list[str]:
    """``w.wav`` (schema v2): its length and how far it is from W of ``foa.flac``, in 16-bit steps.
    (In v3 ``w.wav`` is the FOA's W channel itself.)"""
    if "w.wav" not in sample.data or "foa.flac" not in sample.data:
        return []
    w, w_sr = decode_w_wav(sample.data["w.wav"], where=sample.where)
    n = min(len(w), foa.shape[1])
    steps = float(np.abs(w[:n].astype(np.float64) - foa[0, :n]).max(initial=0.0)) * 2 ** 15
    same = "matches" if len(w) == foa.shape[1] and w_sr == sr and steps <= 0.51 else "DIFFERS from"
    return [f"w.wav: 1 x {len(w)} at {w_sr} Hz, 16-bit; {same} W of foa.flac (max {steps:.2f} steps)"]


def format_bytes(summary: dict) -> str:
    """One line: mean bytes per sample, in all and per member (from the tar headers)."""
    total = sum(m["mean_bytes"] * m["samples"] for m in summary["members"].values()) / max(summary["samples"], 1)
    return (f"bytes per sample: {_human(total)} ("
            + ", ".join(f"{ext} {_human(m['mean_bytes'])}" for ext, m in summary["members"].items()) + ")")


def export_wav(sample: RawSample, out: str | Path) -> Path:
    """Write the sample's FOA as a 4-channel AmbiX (W, Y, Z, X) 24-bit WAV (lossless: the shard
    stores 16-bit (schema v3) or 24-bit (v1, v2) FLAC)."""
    foa, sr = decode_foa_sample(sample.data, sample.meta(), where=sample.where)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(out, foa.T, sr, subtype="PCM_24")
    return out


def iv_direction(iv: np.ndarray, features: dict | None = None) -> tuple[float, float]:
    """(azimuth, elevation) in degrees of the active intensity summed over time and bands (NaN if zero).

    ``features``: the sample's features block; an ``official`` preset ``iv`` holds [act Y, Z, X] first."""
    if not np.asarray(iv[:3], dtype=np.float64).sum(axis=(1, 2)).any():
        return float("nan"), float("nan")
    return direction_from_iv(iv, features=features)


def plot_sample(sample: RawSample, out: str | Path) -> Path:
    """W-channel spectrogram plus the six intensity-feature channels of one sample, as a PNG."""
    import matplotlib  # local: plotting is optional; pyplot (~0.35 s to import) stays out of the CLI start-up
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # local: only after matplotlib.use("Agg")

    meta = sample.meta()
    foa, sr = decode_foa_sample(sample.data, sample.meta(), where=sample.where)
    iv = decode_iv(sample.data[iv_member(sample.data, where=sample.where)], where=sample.where).astype(np.float32)
    feats = meta.features or {}
    hop = int(feats.get("hop_length", 480))
    n_fft = int(feats.get("n_fft", 1024))
    f, t, z = stft(foa[0], fs=sr, nperseg=n_fft, noverlap=n_fft - hop, boundary=None)
    power_db = 20 * np.log10(np.abs(z) + 1e-10)
    top = power_db.max()

    fig = plt.figure(figsize=(13, 9.5), constrained_layout=True)
    grid = fig.add_gridspec(3, 3, height_ratios=[1.2, 1, 1])
    ax = fig.add_subplot(grid[0, :])
    im = ax.imshow(power_db, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
                   extent=(0, foa.shape[1] / sr, 0, sr / 2000))
    ax.set(title="W (omni) spectrogram", xlabel="time (s)", ylabel="frequency (kHz)")
    fig.colorbar(im, ax=ax, label="level (dB)")
    official = feats.get("preset", "project") == "official"
    if official:  # (6, bins, frames) at 16 kHz, rows [act Y, Z, X, rea Y, Z, X] -> this plot's (6, frames, bands)
        iv = np.ascontiguousarray(iv[[2, 0, 1, 5, 3, 4]].transpose(0, 2, 1))
        duration = iv.shape[1] * hop / float(feats.get("feature_sample_rate", 16000))
        band = f"linear STFT bin (0-{float(feats.get('feature_sample_rate', 16000)) / 2:g} Hz)"
    else:
        duration = iv.shape[1] * hop / sr
        band = f"mel band ({float(feats.get('fmin_hz', 0)):g}-{float(feats.get('fmax_hz', sr / 2)):g} Hz)"
    for i, name in enumerate(IV_CHANNELS):
        kind, axis = name.split("_")
        ax = fig.add_subplot(grid[1 + i // 3, i % 3])
        block = iv[:3] if kind == "act" else iv[3:]
        lim = float(np.percentile(np.abs(block), 99)) or 1.0
        im = ax.imshow(iv[i].T, origin="lower", aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim,
                       extent=(0, duration, 0, iv.shape[2]))
        label = {"x": "x (front +)", "y": "y (left +)", "z": "z (up +)"}[axis]
        ax.set(title=f"I_{'active' if kind == 'act' else 'reactive'} {label}", xlabel="time (s)", ylabel=band)
        fig.colorbar(im, ax=ax, label="normalised intensity")
    az, el = iv_direction(iv)  # rows are x, y, z here for either preset
    caption = meta.caption if len(meta.caption) <= 110 else meta.caption[:107] + "..."
    fig.suptitle(f"{meta.key}: \u201c{caption}\u201d\nmetadata: azimuth {meta.azimuth_deg:.1f}°, "
                 f"elevation {meta.elevation_deg:.1f}°, distance {meta.source_distance_m:.2f} m, "
                 f"area {meta.area_m2:.0f} m², T30 {meta.t30_ms:.0f} ms  |  mean active intensity "
                 f"points to azimuth {az:.1f}°, elevation {el:.1f}°", fontsize=10)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------
# Dataset statistics
# ---------------------------------------------------------------------------------------------

def collect_metas(shards: list[Path]) -> tuple[list[ShardMeta], list[str]]:
    """All readable ``json`` members, plus one line per unreadable sample (skipped, counted)."""
    metas, bad = [], []
    for sample in iter_samples(shards):
        try:
            metas.append(sample.meta())
        except SchemaError as err:
            bad.append(str(err))
    return metas, bad


def dataset_stats(metas: list[ShardMeta]) -> dict:
    """Distributions of the physical quantities, descriptor counts and samples per id."""
    if not metas:
        raise SchemaError("no readable samples")
    stats: dict = {"samples": len(metas), "splits": dict(sorted(Counter(m.split for m in metas).items())),
                   "quantities": {}, "descriptors": {}, "ids": {}}
    for name, _ in QUANTITIES:
        v = np.array([getattr(m, name) for m in metas], dtype=np.float64)
        p10, p50, p90 = np.percentile(v, [10, 50, 90])
        stats["quantities"][name] = {"min": v.min(), "p10": p10, "median": p50, "mean": v.mean(),
                                     "p90": p90, "max": v.max()}
    descriptors: dict[str, Counter] = defaultdict(Counter)
    for m in metas:
        for attr, label in m.descriptors.items():
            descriptors[attr][label] += 1
    stats["descriptors"] = {a: dict(c.most_common()) for a, c in descriptors.items()}
    for id_name in ("source_id", "space_id", "rir_id"):
        counts = np.array(list(Counter(getattr(m, id_name) for m in metas).values()))
        stats["ids"][id_name] = {"distinct": len(counts), "min": int(counts.min()),
                                 "median": float(np.median(counts)), "max": int(counts.max()),
                                 "with_2_or_more": int((counts >= 2).sum())}
    # source captions that already carried spatial words (render["source_spatial_words"]; absent in
    # shards rendered before the flag existed, so those are counted as not recorded)
    recorded = [m.render["source_spatial_words"] for m in metas if "source_spatial_words" in (m.render or {})]
    words = Counter(w for ws in recorded for w in ws)
    stats["caption_conflicts"] = {"recorded": len(recorded), "flagged": sum(1 for ws in recorded if ws),
                                  "words": dict(words.most_common(8))}
    return stats


def format_stats(stats: dict) -> str:
    n = stats["samples"]
    lines = [f"{n} samples; splits: " + ", ".join(f"{k} {v}" for k, v in stats["splits"].items()), "",
             f"{'quantity':<22}{'min':>9}{'p10':>9}{'median':>9}{'mean':>9}{'p90':>9}{'max':>9}"]
    for name, label in QUANTITIES:
        q = stats["quantities"][name]
        lines.append(f"{label:<22}" + "".join(f"{q[k]:>9.1f}" for k in ("min", "p10", "median", "mean", "p90", "max")))
    lines += ["", "descriptors (samples, share):"]
    for attr, counts in stats["descriptors"].items():
        lines.append(f"  {attr + ':':<15}" + ", ".join(f"{lab} {c} ({100 * c / n:.0f}%)" for lab, c in counts.items()))
    lines += ["", f"{'samples per id':<16}{'distinct':>9}{'min':>6}{'median':>8}{'max':>6}{'ids with >=2':>14}"]
    for id_name, s in stats["ids"].items():
        lines.append(f"{id_name:<16}{s['distinct']:>9}{s['min']:>6}{s['median']:>8.1f}{s['max']:>6}"
                     f"{s['with_2_or_more']:>14}")
    cc = stats.get("caption_conflicts")
    if cc is not None:
        lines.append("")
        if cc["recorded"]:
            top = ", ".join(f"{w} {c}" for w, c in cc["words"].items())
            lines.append(f"caption conflicts: {cc['flagged']} of {cc['recorded']} samples "
                         f"({100 * cc['flagged'] / cc['recorded']:.1f}%) have a source caption with spatial words"
                         + (f" ({top})" if top else ""))
        else:
            lines.append("caption conflicts: not recorded in these shards (rendered before the flag existed)")
    return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def _rule_labels() -> dict[str, list[str]]:
    return {name: attr.labels for name, attr in load_caption_rules().attributes.items()}


def _label_rank(attribute: str, label: str) -> tuple[int, str]:
    """Order of a descriptor in the packaged rule table (unknown ones last, alphabetically)."""
    try:
        return _rule_labels()[attribute].index(label), label
    except (KeyError, ValueError):
        return 10 ** 6, label


def plot_stats(metas: list[ShardMeta], out: str | Path, title: str = "") -> Path:
    """Histograms of the physical quantities, the direction scatter, descriptor counts and
    samples per source_id / space_id, as one PNG."""
    import matplotlib  # local: plotting is optional; pyplot (~0.35 s to import) stays out of the CLI start-up
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # local: only after matplotlib.use("Agg")
    from matplotlib.ticker import MaxNLocator  # local: plotting only, as above

    fig, axes = plt.subplots(3, 3, figsize=(14, 11), constrained_layout=True)
    axes = axes.ravel()
    edges = {"azimuth_deg": np.arange(-180, 181, 15), "elevation_deg": np.arange(-90, 91, 10)}
    for ax, (name, label) in zip(axes, QUANTITIES):
        v = np.array([getattr(m, name) for m in metas])
        ax.hist(v, bins=edges.get(name, 30), color="tab:blue", edgecolor="white")
        ax.set(title=label, xlabel=label, ylabel="samples")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if name == "azimuth_deg":
            ax.set_xticks(np.arange(-180, 181, 45))
            ax.set_title("azimuth (°): 0 = front, +90 = left")
        elif name == "elevation_deg":
            ax.set_xticks(np.arange(-90, 91, 30))
            ax.set_title("elevation (°): +90 = up")
    ax = axes[5]
    ax.scatter([m.azimuth_deg for m in metas], [m.elevation_deg for m in metas], s=6, alpha=0.6)
    ax.set(title="source directions", xlabel="azimuth (°)", ylabel="elevation (°)", xlim=(-180, 180),
           ylim=(-90, 90), xticks=np.arange(-180, 181, 45))
    ax.grid(alpha=0.3)
    for ax, id_name in zip(axes[6:8], ("source_id", "space_id")):
        counts = np.array(list(Counter(getattr(m, id_name) for m in metas).values()))
        ax.hist(counts, bins=np.arange(0.5, counts.max() + 1.5, max(1, int(counts.max() // 30) or 1)),
                color="tab:green", edgecolor="white")
        ax.set(title=f"samples per {id_name} ({len(counts)} ids)", xlabel=f"samples with the same {id_name}",
               ylabel=f"{id_name}s")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax = axes[8]
    descriptors: dict[str, Counter] = defaultdict(Counter)
    for m in metas:
        for attr, label in m.descriptors.items():
            descriptors[attr][label] += 1
    labels, values, colours = [], [], []
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (attr, counts) in enumerate(descriptors.items()):
        for lab, c in sorted(counts.items(), key=lambda kv: _label_rank(attr, kv[0])):
            labels.append(f"{attr}: {lab}")
            values.append(c)
            colours.append(palette[i % len(palette)])
    ax.barh(range(len(values)), values, color=colours)
    ax.set_yticks(range(len(values)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set(title="caption descriptors", xlabel="samples")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{title} ({len(metas)} samples)" if title else f"{len(metas)} samples")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
