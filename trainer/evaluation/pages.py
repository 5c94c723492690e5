"""``disse-eval --html``: pages to listen to what the model retrieves (``{out}/html/``).

For a reproducible set of query items (a seeded draw): the top-k clips each caption retrieves (text → audio,
source and spatial embeddings; each marked positive or not, with its captions and a binaural player), the
top-k captions each clip retrieves (audio → text), and the direction-error distribution with the worst items
and their players. The clips' audio is re-read from the evaluated shards by the embeddings' keys (only the
clips shown), decoded with :func:`disse.pipeline.foa.binaural_decode` and written once per clip; the page
machinery is :mod:`disse.pipeline.listen`, which synthesis' ``inspect --html`` uses too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from disse.pipeline.foa import direction_of
from disse.pipeline.listen import (audio_tag, decode_shown, direction_png, discard_site, esc, finish_site, fmt,
                                   image_tag, page, read_samples, slug, start_site, table, write_previews)
from disse.schemas import SchemaError, ShardMeta
from disse.trainer.evaluation.evaluate import Embeddings, per_item_direction_error
from disse.trainer.evaluation.report import fmt as fmt_metric
from disse.trainer.evaluation.report import plot_direction_error

DEFAULT_QUERIES = 12
TOP_K = 5
WORST = 10
TASKS = (  # (name, text/audio embedding attribute suffix, id array, what the query reads)
    ("SRC", "source", "source_id", "source caption"),
    ("SPA", "space", "space_id", "spatial caption"),
)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def choose_queries(n: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` item indices out of ``n`` (all when fewer), drawn with ``seed``, in item order."""
    if count >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, count, replace=False))


def retrieve(emb: Embeddings, queries: np.ndarray, k: int = TOP_K) -> dict[str, dict[str, np.ndarray]]:
    """Top-``k`` gallery indices ``(Q, k)`` per task (``SRC``, ``SPA``) and direction (``t2a``: caption →
    clips, ``a2t``: clip → captions) for the ``queries`` rows, by cosine similarity, with the scores."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for task, side, _, _ in TASKS:
        text, audio = _unit(getattr(emb, f"text_{side}")), _unit(getattr(emb, f"audio_{side}"))
        for d, q, g in (("t2a", text, audio), ("a2t", audio, text)):
            sims = q[queries] @ g.T                                  # (Q, N)
            top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            out[f"{task}/{d}"] = {"index": top, "score": np.take_along_axis(sims, top, axis=1)}
    return out


def write_pages(emb: Embeddings, shards: list[str], out_dir: str | Path, metrics: dict, *,
                queries: int = DEFAULT_QUERIES, seed: int = 0, k: int = TOP_K, worst: int = WORST) -> dict:
    """Write ``{out_dir}/html/`` (replacing the one a previous run wrote); returns ``{"out", "queries",
    "clips", "missing": [keys not found or not readable in the shards], "bytes"}``."""
    if emb.keys is None:
        raise SchemaError("the embeddings carry no sample keys, so their clips cannot be found in the shards "
                          "(embed them again with this version)", field="--html")
    keys = [str(x) for x in np.asarray(emb.keys)]
    out = Path(out_dir) / "html"
    q_idx = choose_queries(len(emb), queries, seed)
    ranked = retrieve(emb, q_idx, k)
    err, base = per_item_direction_error(emb), per_item_direction_error(emb, "iv_direction")
    worst_idx = np.argsort(-err, kind="stable")[:worst] if err is not None else np.array([], dtype=int)
    worst_set = set(worst_idx.tolist())
    shown = set(q_idx.tolist()) | worst_set
    for r in ranked.values():
        shown |= set(r["index"].ravel().tolist())
    stage = start_site(out, True, "disse-eval --html", field="--html")
    try:
        media = stage / "media"
        raw = read_samples(shards, {keys[i] for i in shown})
        clips: dict[int, dict] = {}
        missing: list[str] = []
        for i in sorted(shown):
            found = raw.get(keys[i])
            try:
                if found is None:
                    raise SchemaError("not found in the shards")
                meta, foa, sr, iv = decode_shown(*found)
            except SchemaError as exc:
                missing.append(f"{keys[i]}: {exc}")
                continue
            name = slug(keys[i])
            files = write_previews(foa, sr, media, name, stereo=False)
            clips[i] = {"meta": meta, "name": name, "audio": f"media/{files['binaural']}", "seconds": foa.shape[1] / sr}
            if i in worst_set:
                marks = [(label, *direction_of(emb.physical[arr][i]), marker)
                         for label, arr, marker in (("model", "pred_direction", "o"),
                                                    ("IV baseline", "iv_direction", "s"))
                         if arr in emb.physical]
                png = direction_png(iv, meta.features, (meta.azimuth_deg, meta.elevation_deg), foa.shape[1] / sr,
                                    media / f"{name}.direction.png", marks)
                clips[i]["direction"] = f"media/{png.name}"
        nav = [("index.html", "overview"), ("text.html", "caption queries"), ("audio.html", "audio queries"),
               ("direction.html", "direction")]
        (stage / "text.html").write_text(_query_page(emb, keys, q_idx, ranked, clips, "t2a", nav))
        (stage / "audio.html").write_text(_query_page(emb, keys, q_idx, ranked, clips, "a2t", nav))
        (stage / "direction.html").write_text(_direction_page(emb, keys, err, base, worst_idx, clips, stage, nav))
        (stage / "index.html").write_text(_overview(metrics, len(emb), len(q_idx), seed, k, missing, nav))
    except BaseException:
        discard_site(stage)
        raise
    n_bytes = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
    finish_site(stage, out, {"written_by": "disse-eval --html", "queries": len(q_idx), "seed": seed,
                             "clips": len(clips), "missing": len(missing), "bytes": n_bytes})
    return {"out": str(out), "queries": len(q_idx), "clips": len(clips), "missing": missing, "bytes": n_bytes}


def _clip(i: int, keys: list[str], clips: dict[int, dict], caption: str = "caption") -> str:
    """One clip's caption and player (or why there is none)."""
    c = clips.get(i)
    if c is None:
        return f'<div class="clip">{esc(keys[i])}: <i>audio not available</i></div>'
    m: ShardMeta = c["meta"]
    text = {"caption": m.caption, "source caption": m.source_caption, "spatial caption": m.spatial_caption}[caption]
    return (f'<div class="clip"><span class="small">{esc(m.key)}</span><br>{esc(text)}<br>'
            + audio_tag(c["audio"], c["seconds"], "binaural") + "</div>")


def _query_page(emb: Embeddings, keys: list[str], q_idx: np.ndarray, ranked: dict, clips: dict, direction: str,
                nav: list) -> str:
    t2a = direction == "t2a"
    intro = ("Each caption (a test item's) retrieves the clips whose audio embedding is closest to its text embedding"
             if t2a else "Each clip (a test item's audio) retrieves the captions whose text embedding is closest")
    blocks = [f"<p>{intro}: top {ranked['SRC/' + direction]['index'].shape[1]} by cosine similarity, in the source "
              "embeddings (SRC: a positive shares the query's source_id, the sound) and in the spatial ones (SPA: a "
              "positive shares its space_id, the spatial descriptors).</p>"]
    for row, q in enumerate(q_idx):
        blocks.append(f"<h2>Query {row + 1}: item {esc(keys[q])}</h2>")
        blocks.append(_clip(q, keys, clips))
        for task, side, id_name, reads in TASKS:
            ids = np.asarray(getattr(emb, id_name)).astype(str)
            r = ranked[f"{task}/{direction}"]
            rows = []
            for rank, (j, score) in enumerate(zip(r["index"][row], r["score"][row]), start=1):
                positive = ids[j] == ids[q]
                flag = '<span class="pos">positive</span>' if positive else '<span class="neg">negative</span>'
                rows.append([str(rank), flag, esc(ids[j]), f"{score:.3f}",
                             _clip(int(j), keys, clips, "caption" if t2a else reads)])
            n_pos = int((ids == ids[q]).sum())
            qm = clips[q]["meta"] if q in clips else None
            said = f" “{getattr(qm, reads.replace(' ', '_'))}”" if qm is not None else ""
            what = (f"{task}: the query's {reads}{said} → clips" if t2a else f"{task}: the clip → {reads}s")
            blocks.append(f"<h3>{esc(what)} ({n_pos} positive(s) among {len(ids)})</h3>"
                          + table(["rank", "", id_name, "similarity", "retrieved"], rows))
    title = "Caption queries: top clips" if t2a else "Audio queries: top captions"
    return page(title, "\n".join(blocks), "", nav)


def _angles(v: np.ndarray) -> str:
    az, el = direction_of(v)
    return f"{fmt(az)}°, {fmt(el)}°"


def _direction_page(emb: Embeddings, keys: list[str], err, base, worst_idx: np.ndarray, clips: dict, stage: Path,
                    nav: list) -> str:
    if err is None and base is None:
        return page("Direction", "<p>These embeddings carry no direction predictions or targets.</p>", "", nav)
    plot_direction_error(err, stage / "media" / "direction_error.png", base)
    body = ["<p>Angular error between the estimated and the true direction, the model beside the intensity-vector "
            "baseline (physics, no learning) on the same items; a random direction is 90° off on average.</p>",
            image_tag("media/direction_error.png", "direction error distribution")]
    if len(worst_idx):
        true = emb.true_direction()
        rows = []
        for i in worst_idx:
            pred = emb.physical["pred_direction"][i]
            row = [esc(keys[i]), _angles(true[i]), _angles(pred), f"{err[i]:.1f}°"]
            if "iv_direction" in emb.physical:
                row += [_angles(emb.physical["iv_direction"][i]), f"{base[i]:.1f}°"]
            c = clips.get(int(i))
            row.append(_clip(int(i), keys, clips) + (image_tag(c["direction"], "direction map")
                                                     if c and "direction" in c else ""))
            rows.append(row)
        header = ["key", "true (az, el)", "model (az, el)", "model error"]
        header += ["IV baseline (az, el)", "IV error"] if "iv_direction" in emb.physical else []
        body += [f"<h2>The {len(worst_idx)} worst items (model)</h2>",
                 "<p>Azimuth + = left. Each map shows the intensity direction frame by frame, the metadata's "
                 "direction (star), the model's (circle) and the baseline's (square).</p>",
                 table(header + ["clip"], rows)]
    return page("Direction", "\n".join(body), "", nav)


def _overview(metrics: dict, n: int, n_queries: int, seed: int, k: int, missing: list[str], nav: list) -> str:
    rows = []
    for task in ("SRC", "SPA"):
        for d in ("t2a", "a2t"):
            cells = [task, d]
            for m in ("R@1", f"R@{k}"):
                key = f"{task}/{d}/{m}"
                cells.append(f"{fmt_metric(metrics.get(key))} (chance {fmt_metric(metrics.get(key + '/chance'))})")
            rows.append([esc(c) for c in cells])
    body = [f"<p>{n} evaluated items; {n_queries} query items drawn with seed {seed}. Players: binaural decode of "
            "the clip's FOA (headphones).</p>",
            table(["task", "direction", "R@1", f"R@{k}"], rows),
            '<ul><li><a href="text.html">caption queries</a>: top clips per caption</li>'
            '<li><a href="audio.html">audio queries</a>: top captions per clip</li>'
            '<li><a href="direction.html">direction</a>: error distribution and the worst items</li></ul>']
    if missing:
        body.append(f"<p>{len(missing)} clip(s) shown without audio:</p><ul>"
                    + "".join(f"<li>{esc(x)}</li>" for x in missing) + "</ul>")
    return page("Retrieval: listen", "\n".join(body), "", nav)
