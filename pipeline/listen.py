"""The static "listen and look" sites: what ``disse-synth inspect --html`` and ``disse-eval --html`` share.

A site is a folder of plain HTML pages that opens from disk: no server, nothing loaded from the network
(each page's Content-Security-Policy allows only files of the site itself), one stylesheet and one script
(``assets/``), and per shown sample its headphone previews (Ogg Opus through libsndfile, written once per
sample) and PNGs (``media/``). Every caption, id and file name is escaped where it enters a page
(:func:`esc`); file names are derived from keys by :func:`slug`, never used as given.

This module holds no click and imports no trainer code, so both CLIs use it (pyproject.toml's import
contracts). The FOA decoders themselves live in :mod:`disse.pipeline.foa`.
"""
from __future__ import annotations

import hashlib
import html
import io
import json
import math
import re
import shutil
import tarfile
from pathlib import Path
from typing import Iterable

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly, stft

from disse.pipeline.features import direction_track
from disse.pipeline.foa import binaural_decode, stereo_decode
from disse.schemas import SchemaError, ShardMeta
from disse.schemas.shard import decode_foa_sample, decode_iv, decode_meta, group_tar_members, iv_member

SITE_MARKER = ".disse-site.json"  # in every site folder: what wrote it (a folder without it is never replaced)
AUDIO_FORMAT = ("OGG", "OPUS")    # libsndfile >= 1.1 writes Ogg Opus; every current browser plays it
OPUS_LEVEL = 0.93                 # libsndfile's compression level: ~49 kbit/s stereo (~61 kB per 10 s)
PREVIEW_PEAK = 0.98               # previews are scaled down (never up) to stay below this peak
CSP = ("default-src 'none'; img-src 'self'; media-src 'self'; style-src 'self'; script-src 'self'; "
       "base-uri 'none'; form-action 'none'")

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; padding: 0 1em; color: #222; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.filters label { margin-right: 1em; white-space: nowrap; }
.notice { background: #fff3cd; border: 1px solid #e0c36a; padding: 4px 8px; }
.caption { font-size: 17px; }
.small { color: #555; font-size: 13px; }
.pos { color: #116611; font-weight: bold; }
.neg { color: #aa2222; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; }
img { max-width: 100%; }
audio { vertical-align: middle; }
.clip { border: 1px solid #ddd; padding: 6px; margin: 4px 0; }
"""

# Filters of an item table: every <select class="filter" name=N data-field=F> keeps the rows whose data-F
# equals its value ("" = any). The page's query string (?split=test&direction=left) presets them; a name or
# value the page does not know is reported in #filter-notice and otherwise ignored. Text goes in as text.
JS = """"use strict";
(function () {
  const table = document.querySelector("table.items");
  const selects = Array.from(document.querySelectorAll("select.filter"));
  if (!table || !selects.length) { return; }
  const rows = Array.from(table.tBodies[0].rows);
  const count = document.getElementById("filter-count");
  const notice = document.getElementById("filter-notice");
  function apply() {
    let shown = 0;
    for (const row of rows) {
      const ok = selects.every(function (s) {
        return s.value === "" || row.getAttribute("data-" + s.dataset.field) === s.value;
      });
      row.hidden = !ok;
      if (ok) { shown += 1; }
    }
    count.textContent = shown + " of " + rows.length + " samples shown";
  }
  const params = new URLSearchParams(window.location.search);
  const unknown = [];
  params.forEach(function (value, name) {
    const select = selects.find(function (s) { return s.name === name; });
    if (!select) { unknown.push(name + " (no such filter)"); return; }
    if (Array.from(select.options).some(function (o) { return o.value === value; })) { select.value = value; }
    else { unknown.push(name + "=" + value + " (no such value)"); }
  });
  if (unknown.length) { notice.textContent = "ignored: " + unknown.join(", "); notice.hidden = false; }
  selects.forEach(function (s) { s.addEventListener("change", apply); });
  apply();
})();
"""


def esc(value: object) -> str:
    """``value`` as HTML text or attribute value (``& < > " '`` escaped)."""
    return html.escape(str(value), quote=True)


def slug(key: str) -> str:
    """A file-name-safe, unique stand-in for a sample key: its ``[A-Za-z0-9_-]`` characters (at most 60)
    and 8 hex digits of its hash, so keys that differ only in other characters never share a file."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", key)[:60].strip("_") or "sample"
    return f"{safe}-{hashlib.blake2b(key.encode('utf-8'), digest_size=4).hexdigest()}"


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}f}"


# ---------------------------------------------------------------------------------------------
# Folders and pages
# ---------------------------------------------------------------------------------------------

def start_site(out: str | Path, force: bool, what: str, field: str = "--html") -> Path:
    """A fresh, empty staging folder next to ``out`` (``{out}.partial``) to build the site in.

    An existing ``out`` is refused unless ``force``; even then it is replaced only if it is a site this
    project wrote (it holds ``SITE_MARKER``) or an empty folder, never a folder of other files."""
    out = Path(out)
    if out.exists():
        if not force:
            raise SchemaError("exists; pass --force to replace it", file=str(out), field=field)
        if not out.is_dir() or (any(out.iterdir()) and not (out / SITE_MARKER).is_file()):
            raise SchemaError(f"exists and is not a site written by {what} (no {SITE_MARKER}); not replaced, even "
                              "with --force: choose another folder", file=str(out), field=field)
    stage = out.with_name(out.name + ".partial")
    if stage.exists():
        shutil.rmtree(stage)
    (stage / "assets").mkdir(parents=True)
    (stage / "media").mkdir()
    (stage / "assets" / "site.css").write_text(CSS.lstrip())
    (stage / "assets" / "site.js").write_text(JS)
    return stage


def discard_site(stage: Path) -> None:
    """Remove a staging folder after a failure, so no half-written site is left behind."""
    shutil.rmtree(stage, ignore_errors=True)


def finish_site(stage: Path, out: str | Path, record: dict) -> Path:
    """Write the marker (``record``: what wrote the site and its counts) and move the staged site to ``out``
    (replacing a previous one, see :func:`start_site`)."""
    out = Path(out)
    (stage / SITE_MARKER).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    if out.exists():
        shutil.rmtree(out)
    stage.rename(out)
    return out


def page(title: str, body: str, root: str = "", nav: Iterable[tuple[str, str]] = ()) -> str:
    """A complete HTML document: ``body`` (already escaped HTML), the site's stylesheet and script (``root``:
    the relative path from the page to the site's top, "" or "../"), ``nav`` links ``(href, text)``."""
    links = "".join(f'<a href="{esc(href)}">{esc(text)}</a>' for href, text in nav)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{esc(title)}</title><link rel="stylesheet" href="{esc(root)}assets/site.css">'
            f'<script src="{esc(root)}assets/site.js" defer></script></head>\n<body>'
            f'{"<nav>" + links + "</nav>" if links else ""}<h1>{esc(title)}</h1>\n{body}\n</body></html>\n')


def table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; ``header`` is plain text (escaped here), ``rows`` cells are HTML already."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def audio_tag(src: str, seconds: float, label: str) -> str:
    """A labelled player for one preview file (``data-seconds``: the clip's length, for checks)."""
    return (f'<figure><figcaption class="small">{esc(label)}</figcaption><audio controls preload="metadata" '
            f'data-seconds="{seconds:.3f}"><source src="{esc(src)}" type="audio/ogg; codecs=opus"></audio></figure>')


def image_tag(src: str, alt: str) -> str:
    return f'<figure><img src="{esc(src)}" alt="{esc(alt)}"></figure>'


# ---------------------------------------------------------------------------------------------
# Reading the shown samples
# ---------------------------------------------------------------------------------------------

def read_samples(shards: Iterable[str | Path], keys: set[str]) -> dict[str, tuple[dict[str, bytes], str]]:
    """The members of the samples named in ``keys`` (bytes by extension) and where each was found
    (``shard:key``), reading only those samples' members; the first sample of a repeated key wins."""
    found: dict[str, tuple[dict[str, bytes], str]] = {}
    for shard in shards:
        try:
            with tarfile.open(shard, mode="r:") as tar:
                for key, group in group_tar_members(tar):
                    if key in keys and key not in found:
                        found[key] = ({ext: tar.extractfile(info).read() for ext, info in group.items()},
                                      f"{shard}:{key}")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise SchemaError(f"cannot read tar ({exc})", file=str(shard)) from None
        if len(found) == len(keys):
            break
    return found


def decode_shown(members: dict[str, bytes], where: str) -> tuple[ShardMeta, np.ndarray, int, np.ndarray]:
    """``(meta, foa (4, T) float32, sample_rate, iv)`` of a raw sample of any schema version, as the loader
    reads it; a missing or unreadable member is a :class:`SchemaError` naming it."""
    if "json" not in members:
        raise SchemaError("missing member 'json'", file=where, field="json")
    meta = decode_meta(members["json"], where=where)
    foa, sr = decode_foa_sample(members, meta, where=where)
    iv = decode_iv(members[iv_member(members, where=where)], where=where)
    return meta, foa, sr, iv


# ---------------------------------------------------------------------------------------------
# Media: previews and pictures
# ---------------------------------------------------------------------------------------------

def write_previews(foa: np.ndarray, sample_rate: int, media: Path, name: str, stereo: bool = True) -> dict[str, str]:
    """Write the binaural (and plain stereo) decode of AmbiX ``foa`` ``(4, T)`` as Ogg Opus files
    ``{media}/{name}.binaural.ogg`` (``.stereo.ogg``); returns ``{kind: file name}``. One gain for both,
    below 1 only where a decode would clip, so loudness compares across samples as in the shards."""
    decodes = {"binaural": binaural_decode(foa, sample_rate)}
    if stereo:
        decodes["stereo"] = stereo_decode(foa)
    peak = max(float(np.abs(d).max()) for d in decodes.values())
    gain = min(1.0, PREVIEW_PEAK / peak) if peak > 0 else 1.0
    names = {}
    for kind, data in decodes.items():
        rate = sample_rate
        if rate not in (8000, 12000, 16000, 24000, 48000):  # Opus runs at 48 kHz and a few lower rates only
            data, rate = resample_poly(data, 48000, sample_rate, axis=1), 48000
        names[kind] = f"{name}.{kind}.ogg"
        sf.write(media / names[kind], (data * gain).T, rate, format=AUDIO_FORMAT[0], subtype=AUDIO_FORMAT[1],
                 compression_level=OPUS_LEVEL)
    return names


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # local: plotting only (~0.3 s to import)
    from matplotlib.figure import Figure  # local: as above; no pyplot state, so figures are cheap to make

    fig = Figure(figsize=(width, height), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: Path) -> Path:
    """Save ``fig`` as a palette PNG (256 colours, Pillow's median cut): a noise spectrogram shrinks from
    ~170 kB to about a third, with no visible change at this size."""
    from PIL import Image  # local: Pillow comes with matplotlib, needed only for the pictures

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors=256, dither=Image.Dither.NONE).save(path, optimize=True)
    return path


def spectrogram_png(w: np.ndarray, sample_rate: int, path: Path, title: str = "W (omni) spectrogram") -> Path:
    """The W channel's spectrogram (``w`` ``(T,)``; 1024-point frames, 80 dB range) as a small PNG."""
    n_fft, hop = 1024, 512
    _, _, z = stft(np.asarray(w, dtype=np.float32), fs=sample_rate, nperseg=n_fft, noverlap=n_fft - hop,
                   boundary=None)
    db = 20 * np.log10(np.abs(z) + 1e-10)
    fig = _figure(7.5, 2.6)
    ax = fig.add_subplot()
    top = float(db.max())
    im = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
                   extent=(0, len(w) / sample_rate, 0, sample_rate / 2000))
    ax.set(title=title, xlabel="time (s)", ylabel="kHz")
    fig.colorbar(im, ax=ax, label="dB")
    return _save_png(fig, path)


def direction_png(iv: np.ndarray, features: dict | None, meta_direction: tuple[float, float], seconds: float,
                  path: Path, others: Iterable[tuple[str, float, float, str]] = ()) -> Path:
    """The direction the active intensity gives frame by frame (:func:`direction_track`; colour = time, size
    and opacity = directivity) on an azimuth / elevation map, with the metadata's direction (a star) and
    ``others`` ``(label, az, el, marker)``. Azimuth runs from +180 on the left to -180 on the right, as a
    listener facing 0° sees it (+90 = left)."""
    az, el, d = direction_track(iv, features)
    fig = _figure(7.5, 3.6)
    ax = fig.add_subplot()
    keep = np.isfinite(az) & (d > 0.02)
    t = np.linspace(0, seconds, len(az))
    sc = ax.scatter(az[keep], el[keep], c=t[keep], s=4 + 40 * d[keep], alpha=np.clip(0.2 + d[keep], 0, 1),
                    cmap="viridis", linewidths=0, label="intensity, per frame")
    fig.colorbar(sc, ax=ax, label="time (s)")
    ax.scatter([meta_direction[0]], [meta_direction[1]], marker="*", s=260, c="red", edgecolors="k",
               label="metadata direction", zorder=5)
    for label, a, e, marker in others:
        if math.isfinite(a) and math.isfinite(e):
            ax.scatter([a], [e], marker=marker, s=120, c="none", edgecolors="k", linewidths=1.8, label=label, zorder=6)
    ax.set(xlim=(180, -180), ylim=(-90, 90), xticks=range(180, -181, -45), yticks=range(-90, 91, 30),
           xlabel="azimuth (°): + = left, 0 = front", ylabel="elevation (°)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", framealpha=0.8)
    return _save_png(fig, path)
