"""``disse-synth inspect SHARDS --html OUT``: a static site to listen to and look at rendered shards.

``OUT/index.html`` lists the chosen samples with filters (split, room, each caption descriptor, source);
``OUT/samples/*.html`` is one page per sample: its captions and metadata, a binaural (headphone) and a plain
stereo decode of its FOA, the W spectrogram and the intensity direction over time beside the metadata's;
``OUT/summary.html`` holds the distributions ``inspect --stats`` prints (as plots, over every readable
sample) and the render manifest's skipped inputs with their reasons. The page machinery is
:mod:`disse.pipeline.listen`.
"""
from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from disse.pipeline.inspect import QUANTITIES, dataset_stats, format_stats, iter_samples, iv_direction, plot_stats
from disse.pipeline.listen import (audio_tag, decode_shown, direction_png, discard_site, esc, finish_site, fmt,
                                   image_tag, page, read_samples, slug, spectrogram_png, start_site, table,
                                   write_previews)
from disse.pipeline.render import skip_report
from disse.schemas import SchemaError, ShardMeta

DEFAULT_LIMIT = 200
FILTERS = ("split", "room", "source", "descriptor")  # what --split / --room / --source / --descriptor select on
UNKNOWN_ROOM = "unknown"


@dataclass
class Candidate:
    shard: Path
    key: str
    meta: ShardMeta
    room: str


def find_manifest(shards: list[Path]) -> Path | None:
    """The render manifest of these shards: ``manifest.json`` in a split folder's parent (the dataset root)
    or beside the shards."""
    for shard in shards:
        for folder in (shard.parent.parent, shard.parent):
            if (folder / "manifest.json").is_file():
                return folder / "manifest.json"
    return None


def read_manifest(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SchemaError(f"unreadable manifest ({exc})", file=str(path)) from None


def room_of_rirs(manifest: dict | None, manifest_path: Path | None) -> dict[str, str]:
    """``rir_id -> room`` from the RIR CSV the manifest names (its ``room_column``, default ``room_index``),
    looked up beside the manifest, then as given; {} when there is none (the rooms show as unknown)."""
    if not manifest:
        return {}
    csv = (manifest.get("inputs") or {}).get("rirs_csv")
    column = (manifest.get("options") or {}).get("room_column", "room_index")
    if not csv:
        return {}
    for path in (manifest_path.parent / csv, Path(csv)):
        if path.is_file():
            try:
                frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            except (OSError, ValueError, pd.errors.ParserError):
                return {}
            if "rir_id" not in frame or column not in frame:
                return {}
            return dict(zip(frame["rir_id"], frame[column]))
    return {}


def _descriptor_filters(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for v in values:
        attr, sep, label = v.partition("=")
        if not sep or not attr or not label:
            raise SchemaError(f"expected ATTRIBUTE=LABEL (e.g. direction=left), got {v!r}", field="--descriptor")
        out[attr] = label
    return out


def select(candidates: list[Candidate], filters: dict, limit: int, seed: int) -> list[Candidate]:
    """The candidates that pass ``filters`` (``split``, ``room``, ``source``: a value; ``descriptor``: {attr: label}),
    then at most ``limit`` of them chosen by a seeded draw, in shard order. A filter value that no sample has
    is a :class:`SchemaError` naming the option and the values present."""
    def present(values, option):
        raise SchemaError(f"no sample has {option} {values[0]!r}; present: {', '.join(sorted(values[1])[:20])}"
                          + (" ..." if len(values[1]) > 20 else ""), field=option)

    keep = candidates
    for name, getter in (("split", lambda c: c.meta.split), ("room", lambda c: c.room),
                         ("source", lambda c: c.meta.source_id)):
        value = filters.get(name)
        if value is not None:
            have = {getter(c) for c in candidates}
            if value not in have:
                present((value, have), f"--{name}")
            keep = [c for c in keep if getter(c) == value]
    for attr, label in (filters.get("descriptor") or {}).items():
        have = {c.meta.descriptors.get(attr) for c in candidates} - {None}
        if not have:
            attrs = sorted({a for c in candidates for a in c.meta.descriptors})
            raise SchemaError(f"no descriptor {attr!r}; the samples have {', '.join(attrs)}", field="--descriptor")
        if label not in have:
            present((label, have), f"--descriptor {attr}=")
        keep = [c for c in keep if c.meta.descriptors.get(attr) == label]
    if not keep:
        raise SchemaError("no sample passes all the filters together", field="--split/--room/--source/--descriptor")
    if len(keep) > limit:
        idx = np.sort(np.random.default_rng(seed).choice(len(keep), limit, replace=False))
        keep = [keep[i] for i in idx]
    return keep


def build_site(shards: list[Path], out: str | Path, *, limit: int = DEFAULT_LIMIT, seed: int = 0, force: bool = False,
               filters: dict | None = None, title: str = "shards") -> dict:
    """Write the site for ``shards`` to ``out``; returns ``{"out", "samples", "skipped": [{"where", "reason"}],
    "candidates", "bytes", "seconds"}``. ``filters``: ``split``, ``room``, ``source`` (values) and ``descriptor``
    (``ATTR=LABEL`` strings). Samples that cannot be shown (unreadable json, no FOA members, a repeated key)
    are skipped and listed on the summary page."""
    t0 = time.perf_counter()
    filters = dict(filters or {})
    if filters.get("descriptor"):
        filters["descriptor"] = _descriptor_filters(tuple(filters["descriptor"]))
    out = Path(out)
    if out.exists() and not force:  # before any reading
        raise SchemaError("exists; pass --force to replace it", file=str(out), field="--html")
    manifest_path = find_manifest(shards)
    manifest = read_manifest(manifest_path)
    rooms = room_of_rirs(manifest, manifest_path)
    candidates, skipped, metas, seen = [], [], [], set()
    for sample in iter_samples(shards):
        try:
            meta = sample.meta()
        except SchemaError as err:
            skipped.append({"where": sample.where, "reason": str(err)})
            continue
        metas.append(meta)
        if sample.key in seen:
            skipped.append({"where": sample.where, "reason": "key repeats an earlier sample's; shown once"})
            continue
        seen.add(sample.key)
        candidates.append(Candidate(sample.shard, sample.key, meta, rooms.get(meta.rir_id, UNKNOWN_ROOM)))
    if not candidates:
        raise SchemaError("no readable samples", file=title)
    chosen = select(candidates, filters, limit, seed)
    stage = start_site(out, force, "disse-synth inspect")
    try:
        (stage / "samples").mkdir()
        shown: list[tuple[Candidate, dict]] = []
        by_shard: dict[Path, set[str]] = defaultdict(set)
        for c in chosen:
            by_shard[c.shard].add(c.key)
        members = {}
        for shard, keys in by_shard.items():
            members.update(read_samples([shard], keys))
        for i, c in enumerate(chosen):
            where = f"{c.shard}:{c.key}"
            try:
                meta, foa, sr, iv = decode_shown(members[c.key][0], where)
                name = slug(c.key)
                media = stage / "media"
                files = write_previews(foa, sr, media, name)
                files["spectrogram"] = spectrogram_png(foa[0], sr, media / f"{name}.spectrogram.png").name
                est = iv_direction(iv, meta.features)
                files["direction"] = direction_png(iv, meta.features, (meta.azimuth_deg, meta.elevation_deg),
                                                   foa.shape[1] / sr, media / f"{name}.direction.png",
                                                   [("whole-clip intensity", est[0], est[1], "o")]).name
            except SchemaError as err:
                skipped.append({"where": where, "reason": str(err)})
                continue
            shown.append((c, {"files": files, "seconds": foa.shape[1] / sr, "name": name, "iv_direction": est}))
        if not shown:
            raise SchemaError(f"none of the {len(chosen)} chosen samples could be shown, e.g. {skipped[-1]['reason']}",
                              file=title)
        for i, (c, info) in enumerate(shown):
            prev = shown[i - 1][1]["name"] if i > 0 else None
            nxt = shown[i + 1][1]["name"] if i + 1 < len(shown) else None
            (stage / "samples" / f"{info['name']}.html").write_text(_sample_page(c, info, prev, nxt))
        (stage / "index.html").write_text(_index_page(shown, title, len(candidates), filters, seed, limit))
        stats_png = plot_stats(metas, stage / "media" / "stats.png", title=title)
        summary = _summary_page(metas, stats_png.name, manifest, manifest_path, skipped, title)
        (stage / "summary.html").write_text(summary)
    except BaseException:
        discard_site(stage)
        raise
    n_bytes = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
    result = {"out": str(out), "samples": len(shown), "skipped": skipped, "candidates": len(candidates),
              "bytes": n_bytes, "seconds": round(time.perf_counter() - t0, 1)}
    finish_site(stage, out, {"written_by": "disse-synth inspect --html", "target": title, "seed": seed,
                             "limit": limit, "samples": len(shown), "skipped": len(skipped), "bytes": n_bytes})
    return result


_NAV = (("../index.html", "index"), ("../summary.html", "summary"))


def _sample_page(c: Candidate, info: dict, prev: str | None, nxt: str | None) -> str:
    m, f = c.meta, info["files"]
    nav = list(_NAV) + ([(f"{prev}.html", "previous")] if prev else []) + ([(f"{nxt}.html", "next")] if nxt else [])
    rows = [["azimuth", f"{fmt(m.azimuth_deg)}° (+ = left)"], ["elevation", f"{fmt(m.elevation_deg)}° (+ = up)"],
            ["distance", f"{fmt(m.source_distance_m, 2)} m"], ["floor area", f"{fmt(m.area_m2)} m²"],
            ["T30", f"{fmt(m.t30_ms, 0)} ms"], ["room", esc(c.room)], ["RIR id", esc(m.rir_id)],
            ["split", esc(m.split)], ["source id", esc(m.source_id)], ["space id", esc(m.space_id)],
            ["key", esc(m.key)], ["shard", esc(c.shard.name)], ["schema version", esc(m.schema_version)],
            ["whole-clip intensity direction", f"azimuth {fmt(info['iv_direction'][0])}°, elevation "
                                               f"{fmt(info['iv_direction'][1])}°"]]
    rows += [[f"descriptor: {esc(a)}", esc(v)] for a, v in m.descriptors.items()]
    body = (f'<p class="caption">{esc(m.caption)}</p>'
            f'<p><b>source caption:</b> {esc(m.source_caption)}<br><b>spatial caption:</b> {esc(m.spatial_caption)}</p>'
            + audio_tag(f"../media/{f['binaural']}", info["seconds"], "headphones: binaural (spherical-head model)")
            + audio_tag(f"../media/{f['stereo']}", info["seconds"], "stereo: cardioids at ±90°")
            + "<h2>Metadata</h2>" + table(["field", "value"], rows)
            + "<h2>W spectrogram</h2>" + image_tag(f"../media/{f['spectrogram']}", "W spectrogram")
            + "<h2>Direction: intensity over time and the metadata</h2>"
            + image_tag(f"../media/{f['direction']}", "intensity direction over time and metadata direction"))
    return page(f"sample {m.key}", body, "../", nav)


def _index_page(shown: list[tuple[Candidate, dict]], title: str, n_candidates: int, filters: dict, seed: int,
                limit: int) -> str:
    attrs = sorted({a for c, _ in shown for a in c.meta.descriptors})
    fields = [("split", lambda c: c.meta.split), ("room", lambda c: c.room)] + \
             [(a, (lambda a: lambda c: c.meta.descriptors.get(a, ""))(a)) for a in attrs] + \
             [("source", lambda c: c.meta.source_id)]
    selects = []
    for i, (name, get) in enumerate(fields):
        values = sorted({str(get(c)) for c, _ in shown})
        options = '<option value="">any</option>' + "".join(f'<option value="{esc(v)}">{esc(v)}</option>'
                                                            for v in values)
        selects.append(f'<label>{esc(name)} <select class="filter" name="{esc(name)}" data-field="f{i}">'
                       f'{options}</select></label>')
    rows = []
    for c, info in shown:
        m = c.meta
        data = " ".join(f'data-f{i}="{esc(get(c))}"' for i, (_, get) in enumerate(fields))
        cells = [f'<a href="samples/{esc(info["name"])}.html">{esc(m.key)}</a>', esc(m.split), esc(c.room),
                 esc(m.source_id), esc(m.caption), fmt(m.azimuth_deg), fmt(m.elevation_deg),
                 fmt(m.source_distance_m, 2), fmt(m.area_m2), fmt(m.t30_ms, 0)]
        rows.append(f"<tr {data}>" + "".join(f'<td{" class=num" if j >= 5 else ""}>{x}</td>'
                                             for j, x in enumerate(cells)) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("key", "split", "room", "source", "caption", "az (°)", "el (°)",
                                             "dist (m)", "area (m²)", "T30 (ms)"))
    chosen = (f"{len(shown)} of {n_candidates} readable samples" + (f" (filters: {esc(_filter_text(filters))})"
                                                                    if filters else "")
              + (f", drawn with seed {seed} (limit {limit})" if n_candidates > len(shown) else ""))
    body = (f'<p>{chosen}. Each sample page has a headphone (binaural) and a stereo preview, the W spectrogram '
            f'and the intensity direction over time. Azimuth: 0° = front, + = left.</p>'
            f'<p class="filters">{"".join(selects)}</p><p id="filter-notice" class="notice" hidden></p>'
            f'<p id="filter-count" class="small"></p>'
            f'<table class="items"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')
    return page(f"Listen: {title}", body, "", [("summary.html", "summary")])


def _filter_text(filters: dict) -> str:
    parts = [f"{k}={v}" for k, v in filters.items() if k != "descriptor" and v is not None]
    parts += [f"{a}={label}" for a, label in (filters.get("descriptor") or {}).items()]
    return ", ".join(parts)


def _summary_page(metas: list[ShardMeta], stats_png: str, manifest: dict | None, manifest_path: Path | None,
                  skipped: list[dict], title: str) -> str:
    stats = dataset_stats(metas)
    body = [f"<p>All {len(metas)} readable samples of {esc(title)} (not only those shown).</p>",
            image_tag(f"media/{stats_png}", "distributions"), f"<pre>{esc(format_stats(stats))}</pre>",
            "<h2>Quantities</h2>",
            table(["quantity", "min", "p10", "median", "mean", "p90", "max"],
                  [[esc(label)] + [fmt(stats["quantities"][name][k]) for k in ("min", "p10", "median", "mean", "p90",
                                                                              "max")] for name, label in QUANTITIES])]
    body.append("<h2>Skipped by the render (manifest)</h2>")
    if manifest is None:
        body.append("<p>No manifest.json beside these shards.</p>")
    else:
        items = [dict(s, kind=s.get("input", "clip")) for s in manifest.get("skipped", [])] + \
                [dict(s, kind="row") for s in manifest.get("skipped_rows", [])]
        body.append(f"<p>{esc(manifest_path)}: {len(items)} skipped input(s).</p>")
        if items:
            try:
                body.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in skip_report(manifest)) + "</ul>")
            except (KeyError, TypeError):  # a manifest of another version: the table below still lists them
                pass
            body.append(table(["input", "file", "row", "field", "reason"],
                              [[esc(s.get("kind")), esc(s.get("file") or ""), esc(s.get("row") or ""),
                                esc(s.get("field") or ""), esc(s.get("reason") or "")] for s in items]))
    body.append("<h2>Skipped by this site</h2>")
    reasons = Counter(s["reason"] for s in skipped)
    body.append(f"<p>{len(skipped)} sample(s).</p>" + (table(["where", "reason"], [[esc(s["where"]), esc(s["reason"])]
                                                                                  for s in skipped]) if skipped else "")
                + ("<ul>" + "".join(f"<li>{n} x {esc(r)}</li>" for r, n in reasons.most_common(5)) + "</ul>"
                   if len(reasons) > 1 else ""))
    return page(f"Summary: {title}", "\n".join(body), "", [("index.html", "index")])
