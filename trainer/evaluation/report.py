"""disse-eval's outputs: metrics.json, report.md, PNG plots, and the side-by-side comparison of two runs.

Plots use matplotlib's Agg backend (no display). Projections are a plain SVD PCA of a fixed,
seeded subsample, so the same embeddings always give the same pictures.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from disse.schemas import CaptionRules, SchemaError
from disse.schemas.atomic import atomic_write
from disse.schemas.display import display_labels
from disse.trainer.evaluation.evaluate import (IR_MIN, IV_MIN_DIRECTIVITY, LEAK_FACTOR, Embeddings, chance_tail,
                                              disentanglement, finite_or_none, per_item_direction_error)
from disse.trainer.evaluation.metrics import RANDOM_DIRECTION_ERROR_DEG

METRICS_FORMAT = "disse-eval metrics"
METRICS_VERSION = 1
RETRIEVAL = (("SRC", "source embeddings, positives share source_id", "higher is better"),
             ("SPA", "spatial embeddings, positives share space_id", "higher is better"))
LEAKAGE = (("X-SRC", "text spatial ↔ audio spatial, scored by source_id (own pair left out)",
            "lower is better; chance = no leakage"),
           ("X-SPA", "text source ↔ audio source, scored by space_id (own pair left out)",
            "lower is better; chance = no leakage"),
           ("AX-SRC", "audio spatial → audio spatial, scored by source_id (query left out): does the spatial "
            "audio embedding know the sound?", "lower is better; chance = no leakage"),
           ("AX-SPA", "audio source → audio source, scored by space_id (query left out): does the source "
            "audio embedding know the space?", "lower is better; chance = no leakage"))
TASKS = RETRIEVAL + LEAKAGE
DIRECTIONS = (("t2a", "text → audio"), ("a2t", "audio → text"), ("a2a", "audio → audio"))
MAX_PLOT_POINTS = 4000
MAX_COLOURS = 10


# ----------------------------------------------------------------------------------------------
# metrics.json

def write_metrics_json(metrics: dict[str, float], meta: dict[str, Any], path: str | Path) -> Path:
    """``{"format", "version", "meta", "metrics"}``; non-finite values are written as null."""
    doc = {"format": METRICS_FORMAT, "version": METRICS_VERSION, "meta": meta,
           "metrics": {k: finite_or_none(v) for k, v in metrics.items()}}
    with atomic_write(path, "w") as f:
        f.write(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    return Path(path)


def read_metrics_json(path: str | Path) -> dict[str, Any]:
    """Load a metrics.json written by disse-eval (SchemaError naming the file otherwise)."""
    where = str(path)
    if not Path(path).is_file():
        raise SchemaError("metrics file not found", file=where)
    try:
        doc = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SchemaError(f"not JSON ({exc})", file=where) from None
    if not isinstance(doc, dict) or doc.get("format") != METRICS_FORMAT or not isinstance(doc.get("metrics"), dict):
        raise SchemaError(f"not a disse-eval metrics.json (expected \"format\": \"{METRICS_FORMAT}\")", file=where)
    return doc


# ----------------------------------------------------------------------------------------------
# formatting

def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    value = float(value)
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.{digits}f}"


def _with_chance(m: dict, key: str, digits: int = 3) -> str:
    if key not in m:
        return "–"
    chance = m.get(f"{key}/chance")
    return f"{fmt(m[key], digits)} ({fmt(chance, digits)})" if f"{key}/chance" in m else fmt(m[key], digits)


def retrieval_rows(m: dict, tasks: tuple[tuple[str, str, str], ...] = TASKS) -> list[list[str]]:
    """One row per task and direction present in ``m``: R@k and mAP cells as "value (chance)"."""
    rows = []
    for task, _, _ in tasks:
        for d, _ in DIRECTIONS:
            p = f"{task}/{d}"
            if f"{p}/R@1" not in m:
                continue
            ks = sorted({int(k.split("@")[1]) for k in m if k.startswith(f"{p}/R@") and not k.endswith("/chance")})
            maps = [k for k in m if k.startswith(f"{p}/mAP@") and not k.endswith("/chance")]
            rows.append([task, d] + [_with_chance(m, f"{p}/R@{k}") for k in ks]
                        + [_with_chance(m, k) for k in maps] + [fmt(m.get(f"{p}/n_queries"))])
    return rows


def _retrieval_table(m: dict, tasks: tuple[tuple[str, str, str], ...]) -> list[str]:
    """Markdown lines: one table of ``tasks`` (value (chance) cells), then what each task is; [] if absent."""
    rows = retrieval_rows(m, tasks)
    if not rows:
        return []
    names = {t for t, _, _ in tasks}
    scored = [k for k in m if k.split("/")[0] in names and not k.endswith("/chance")]
    ks = sorted({int(k.split("@")[1]) for k in scored if "/R@" in k})
    maps = list(dict.fromkeys(k.split("/")[-1] for k in scored if "/mAP@" in k))
    header = ["task", "direction"] + [f"R@{k}" for k in ks] + maps + ["queries"]
    present = {r[0] for r in rows}
    return [_table(header, rows), "", "| task | what | reading |", "| --- | --- | --- |",
            *[f"| {t} | {w} | {r} |" for t, w, r in tasks if t in present], ""]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def console_summary(m: dict) -> str:
    """A compact plain-text table for the terminal: each figure next to its chance level."""
    lines = [f"{'metric':<34} {'value':>10} {'chance':>10}"]

    def add(name: str, key: str, digits: int = 3) -> None:
        if key in m:
            ck = f"{key}/chance"
            chance = fmt(m[ck], digits) if ck in m else ""
            lines.append(f"{name:<34} {fmt(m[key], digits):>10} {chance:>10}")

    for task, _, _ in TASKS:
        for d, _ in DIRECTIONS:
            for k in ("R@1", "R@10", "mAP@10"):
                add(f"{task} {d} {k}", f"{task}/{d}/{k}")
    add("IR_space", "IR_space")
    add("IR_source", "IR_source")
    add("direction error mean (deg)", "phys/direction_err_deg/mean", 1)
    add("  IV baseline (physics) mean", "phys/direction_err_deg/iv_baseline/mean", 1)
    add("direction error median (deg)", "phys/direction_err_deg/median", 1)
    add("  IV baseline (physics) median", "phys/direction_err_deg/iv_baseline/median", 1)
    add("direction mean model / IV baseline", "phys/direction_err_deg/vs_iv_baseline", 2)
    add("distance MAE (m)", "phys/distance_m/mae", 2)
    add("area MAE (m²)", "phys/area_m2/mae", 1)
    add("T30 MAE (ms)", "phys/t30_ms/mae", 0)
    for key in sorted(k for k in m if k.startswith("zeroshot/") and k.endswith("/acc")):
        add(f"zero-shot {key.split('/')[1]} acc", key)
    if any(k in m for k in ("IR_space", "IR_source")):
        lines += ["", *(verdict_line(emb, v) for emb, v in disentanglement(m).items())]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# report.md

_EMBEDDING_NAMES = {"space": "spatial embedding", "source": "source embedding"}


def verdict_line(emb: str, verdict: dict[str, Any]) -> str:
    """One sentence: is this embedding disentangled by the rule, and which figures fail it."""
    name = _EMBEDDING_NAMES[emb]
    if verdict["disentangled"] is None:
        return f"{name}: undefined (a figure is missing, e.g. one RIR per clip)"
    if verdict["disentangled"]:
        return f"{name}: disentangled"
    failed = [f"{k} {fmt(v, 4)} {'>' if kind == 'leak' else '<'} {fmt(limit, 4)}"
              for k, v, limit, ok, kind in verdict["checks"] if ok is False]
    return f"{name}: not disentangled ({'; '.join(failed)})"


def disentanglement_markdown(m: dict) -> list[str]:
    """The verdict of DESIGN.md's rule per embedding, with the figures that decide it."""
    verdicts = disentanglement(m)
    lines = ["## Disentanglement", "",
             f"An embedding is disentangled when every leakage check's R@1 is within {LEAK_FACTOR}× its chance "
             f"level and its invariance ratio is at least {IR_MIN}.", ""]
    lines += [f"- **{verdict_line(emb, v)}**" for emb, v in verdicts.items()] + [""]
    rows = [[_EMBEDDING_NAMES[emb], key, fmt(value, 4), ("≤ " if kind == "leak" else "≥ ") + fmt(limit, 4),
             {True: "yes", False: "**no**", None: "—"}[ok], fmt(chance_tail(m, key), 3) if kind == "leak" else "—"]
            for emb, v in verdicts.items() for key, value, limit, ok, kind in v["checks"]]
    return lines + [_table(["embedding", "figure", "value", "needs", "met", "P at chance"], rows), "",
                    "*P at chance*: the probability that a model exactly at chance scores at least this R@1 on "
                    "these queries (binomial). A failed check with P well above 0.05 is within this test set's "
                    "noise; more test items tell it apart from a real leak.", ""]


def render_markdown(m: dict, meta: dict[str, Any], plots: dict[str, str]) -> str:
    out = ["# disse-eval report", ""]
    src = meta.get("checkpoint") or meta.get("embeddings") or "?"
    out += [f"- input: `{src}`" + (f" on `{meta['shards']}`" if meta.get("shards") else ""),
            f"- items: {fmt(m.get('n_items'))}; source ids: {fmt(meta.get('n_source_ids'))}; "
            f"space ids: {fmt(meta.get('n_space_ids'))}",
            *([f"- **{meta['skipped_samples']} unreadable sample(s) skipped**"] if meta.get("skipped_samples") else []),
            f"- scored in {fmt(meta.get('seconds'), 1)} s (chunk {meta.get('chunk_size', '?')}); "
            f"disse {meta.get('disse_version', '?')}", ""]
    out += ["## Retrieval (multi-positive)", "",
            "A query hits at K when any gallery item sharing its id is in its top K. Each cell is "
            "**value (chance)**: chance is the exact expectation under a random ranking given the id "
            "frequencies. Higher is better.", ""]
    out += _retrieval_table(m, RETRIEVAL)
    out += ["## Leakage checks (near chance is better)", "",
            "The same retrieval, scored by the *other* id: anything well above chance means one embedding "
            "carries the other factor. X-SRC / X-SPA are cross-modal (text ↔ audio) and leave the query's "
            "own pair out of the gallery (it shares both ids by construction). AX-SRC / AX-SPA are "
            "audio → audio, the query itself left out: the captions of one factor carry nothing of the "
            "other, so a leak that only the audio embedding holds is invisible to the X-checks and shows "
            "here. A perfectly disentangled model sits at chance when sources are spread over spaces "
            "independently, and at or below it on balanced designs (each source in each space at most "
            "once).", ""]
    out += _retrieval_table(m, LEAKAGE)
    out += disentanglement_markdown(m)
    out += ["## Invariance ratios", "",
            "Mean cosine distance (1 − cos) over pairs of audio embeddings. IR_space = d(same source, "
            "different space) / d(same space, different source) in the spatial embedding; IR_source is the "
            "inverse pairing in the source embedding. Larger is better; 1 = no preference (chance).", ""]
    ir_rows = []
    for name, num, den in (("IR_space", "same_source_diff_space", "same_space_diff_source"),
                           ("IR_source", "same_space_diff_source", "same_source_diff_space")):
        if name in m:
            ir_rows.append([name, fmt(m[name]), fmt(m.get(f"{name}/chance")),
                            f"{fmt(m.get(f'{name}/dist_{num}'), 4)} over {fmt(m.get(f'{name}/pairs_{num}'))} pairs",
                            f"{fmt(m.get(f'{name}/dist_{den}'), 4)} over {fmt(m.get(f'{name}/pairs_{den}'))} pairs"])
    if ir_rows:
        out += [_table(["ratio", "value", "chance", "numerator: mean distance", "denominator: mean distance"],
                       ir_rows), ""]
    base = "phys/direction_err_deg/iv_baseline"
    phys = [("direction error, mean — model", "phys/direction_err_deg/mean", "°", 1),
            ("direction error, mean — IV baseline (physics)", f"{base}/mean", "°", 1),
            ("direction error, median — model", "phys/direction_err_deg/median", "°", 1),
            ("direction error, median — IV baseline (physics)", f"{base}/median", "°", 1),
            ("direction error, model mean / IV baseline mean", "phys/direction_err_deg/vs_iv_baseline", "ratio", 2),
            ("distance MAE", "phys/distance_m/mae", "m", 2),
            ("floor area MAE", "phys/area_m2/mae", "m²", 1),
            ("T30 MAE", "phys/t30_ms/mae", "ms", 0)]
    phys_rows = [[name, fmt(m[k], d), unit, fmt(m[f"{k}/chance"], d) if f"{k}/chance" in m else "–"]
                 for name, k, unit, d in phys if k in m]
    if phys_rows:
        out += ["## Physical attributes", "",
                f"Predictions from the spatial embedding, in real units, over {fmt(m.get('phys/n'))} items. "
                "Chance: a uniformly random direction is 90° off on average (and in median); for the MAEs, "
                "the best constant guess (the median of the targets).", ""]
        if f"{base}/mean" in m:
            out += ["The **IV baseline** (`iv_direction`) is physics without learning, scored on the same items: "
                    "the sum of the active intensity vectors over the time-frequency cells with directivity "
                    f"|I_act| ≥ {IV_MIN_DIRECTIVITY} (near-plane-wave cells: the direct sound). "
                    "*model mean / IV baseline mean* below 1 means the model beats physics.", ""]
        out += [_table(["quantity", "error", "unit", "chance"], phys_rows), ""]
    zs = sorted({k.split("/")[1] for k in m if k.startswith("zeroshot/")})
    if zs:
        out += ["## Zero-shot spatial descriptors", "",
                "Each audio spatial embedding is given the descriptor whose caption-rule prompt "
                "(text spatial embedding) is closest. Chance: the majority-class frequency (always "
                "answering the commonest label); 1/classes shown too. Balanced accuracy (mean recall per "
                "label) is not fooled by unbalanced labels: its chance is 1 / labels present.", "",
                _table(["attribute", "accuracy", "chance (majority)", "1 / classes", "balanced accuracy (chance)",
                        "items"],
                       [[a, fmt(m.get(f"zeroshot/{a}/acc")), fmt(m.get(f"zeroshot/{a}/acc/chance")),
                         fmt(m.get(f"zeroshot/{a}/acc/chance_uniform")), _with_chance(m, f"zeroshot/{a}/balanced_acc"),
                         fmt(m.get(f"zeroshot/{a}/n"))] for a in zs]), ""]
    if plots:
        out += ["## Plots", ""]
        for title, name in plots.items():
            out += [f"### {title}", "", f"![{title}]({name})", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# plots

def _subsample(n: int, k: int = MAX_PLOT_POINTS, seed: int = 0) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows projected on the first two principal axes -> ``((n, 2), explained variance fractions (2,))``."""
    x = np.asarray(x, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # cosine geometry
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    var = s ** 2
    frac = var[:2] / max(var.sum(), 1e-300)
    # fix the sign of each axis so reruns and other platforms give the same picture
    signs = np.sign(vt[:2, np.argmax(np.abs(vt[:2]), axis=1)].diagonal())
    proj = xc @ (vt[:2].T * signs)
    if proj.shape[1] < 2:
        proj = np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))
        frac = np.pad(frac, (0, 2 - len(frac)))
    return proj, frac


def _scatter_by(ax, xy: np.ndarray, labels: np.ndarray, title: str, legend_title: str,
                order: list[str] | None = None, ids: bool = False) -> None:
    """One panel, coloured by ``labels`` (the ``MAX_COLOURS`` commonest, or ``order``). ``ids``: the
    labels are ids (source paths, ...): the legend shows them by :func:`display_labels`, distinct."""
    import matplotlib.pyplot as plt  # local: plotting is optional (--no-plots); the callers chose Agg first

    labels = np.asarray(labels).astype(str)
    uniq, counts = np.unique(labels, return_counts=True)
    if order is not None:
        shown = [u for u in order if u in set(uniq)]
    else:
        shown = [str(u) for u in uniq[np.argsort(-counts, kind="stable")]]
    other = len(shown) > MAX_COLOURS
    shown = shown[:MAX_COLOURS]
    names = dict(zip(shown, display_labels(shown))) if ids else {
        u: u if len(u) <= 28 else u[:25] + "…" for u in shown}
    cmap = plt.get_cmap("tab10")
    size = float(np.clip(6000.0 / max(len(xy), 1), 5.0, 40.0))  # big dots for small sets, small for large
    rest = ~np.isin(labels, shown)
    if rest.any():
        ax.scatter(xy[rest, 0], xy[rest, 1], s=0.7 * size, c="0.8", label=f"other ({len(uniq) - len(shown)} ids)",
                   linewidths=0)
    for i, u in enumerate(shown):
        sel = labels == u
        ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=cmap(i % 10), label=names[u],
                   linewidths=0, alpha=0.85)
    ax.set_title(title, fontsize=10)
    ax.legend(title=legend_title + (f" ({MAX_COLOURS} most frequent)" if other else ""), fontsize=7,
              title_fontsize=7, markerscale=max(1.0, 15.0 / size), loc="best", framealpha=0.8)


def plot_projections(emb: Embeddings, rules: CaptionRules | None, path: Path, which: str) -> Path:
    """PCA of the audio ``which`` ("space" or "source") embeddings, one panel per colouring:
    every spatial descriptor available, and the source id."""
    import matplotlib  # local: plotting is optional; pyplot (~0.35 s to import) stays out of the CLI start-up
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # local: only after matplotlib.use("Agg")

    idx = _subsample(len(emb))
    x = (emb.audio_space if which == "space" else emb.audio_source)[idx]
    xy, frac = pca_2d(x)
    attrs = list(rules.attributes) if rules is not None else sorted(emb.descriptors)
    panels: list[tuple[str, np.ndarray, str, list[str] | None]] = []
    for a in attrs:
        labels = emb.descriptor_labels(a, rules)
        if labels is not None:
            order = rules.attributes[a].labels if rules is not None and a in rules.attributes else None
            panels.append((f"by {a}", labels[idx], a, order))
    if not panels:
        panels.append(("by space_id", np.asarray(emb.space_id)[idx], "space_id", None))
    panels.append(("by source", np.asarray(emb.source_id)[idx], "source_id", None))
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.6 * rows), squeeze=False)
    for ax, (title, labels, legend_title, order) in zip(axes.flat, panels):
        _scatter_by(ax, xy, labels, title, legend_title, order, ids=legend_title.endswith("_id"))
        ax.set_xlabel(f"PC1 ({100 * frac[0]:.1f}% of variance)", fontsize=8)
        ax.set_ylabel(f"PC2 ({100 * frac[1]:.1f}% of variance)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    name = "spatial" if which == "space" else "source"
    shown = f"all {len(emb):,} items" if len(idx) == len(emb) else f"{len(idx):,} of {len(emb):,} items (random subset)"
    fig.suptitle(f"Audio {name} embeddings: 2-D PCA of {shown}, dim {x.shape[1]}, cosine geometry", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_direction_error(err: np.ndarray | None, path: Path, baseline: np.ndarray | None = None) -> Path:
    """Angular errors (degrees, ``(N,)``) of the model and of the intensity-vector baseline on the same
    items, against a random guess: histograms (left) and cumulative distributions (right), medians marked."""
    import matplotlib  # local: plotting is optional; pyplot (~0.35 s to import) stays out of the CLI start-up
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # local: only after matplotlib.use("Agg")

    series = [(name, np.asarray(e, np.float64), colour) for name, e, colour in
              (("model", err, "tab:blue"), ("IV baseline (physics)", baseline, "tab:green")) if e is not None]
    if not series:
        raise ValueError("no direction errors to plot")
    fig, (ax_h, ax_c) = plt.subplots(1, 2, figsize=(12, 4.4))
    bins = np.linspace(0, 180, 37)
    t = np.linspace(0, 180, 361)
    for i, (name, e, colour) in enumerate(series):
        label = f"{name}: mean {e.mean():.1f}°, median {np.median(e):.1f}° ({len(e):,} items)"
        if i == 0:
            ax_h.hist(e, bins=bins, density=True, color=colour, alpha=0.55, label=label)
        else:  # outlined, so both distributions stay visible where they overlap
            ax_h.hist(e, bins=bins, density=True, histtype="step", lw=2.0, color=colour, label=label)
        xs = np.sort(e)
        ax_c.plot(np.r_[0.0, xs], np.r_[0.0, np.arange(1, len(xs) + 1) / len(xs)], color=colour, lw=1.8,
                  drawstyle="steps-post", label=name)
        med = float(np.median(e))
        for ax in (ax_h, ax_c):
            ax.axvline(med, color=colour, ls=":", lw=1.5)
        ax_c.annotate(f"median {med:.1f}°", (med, 0.5), xytext=(4, -14 - 14 * i), textcoords="offset points",
                      color=colour, fontsize=8)
    # a uniformly random direction: angle density sin(theta)/2 per radian, CDF (1 - cos theta)/2
    ax_h.plot(t, np.sin(np.deg2rad(t)) / 2 * np.pi / 180, color="0.3", ls="--", label="random direction (chance)")
    ax_c.plot(t, (1 - np.cos(np.deg2rad(t))) / 2, color="0.3", ls="--", label="random direction (chance)")
    for ax in (ax_h, ax_c):
        ax.axvline(RANDOM_DIRECTION_ERROR_DEG, color="0.5", lw=0.8, ls="-.")
        ax.set_xlim(0, 180)
        ax.set_xticks(range(0, 181, 30))
        ax.set_xlabel("angular error between estimated and true direction (degrees)")
    ax_c.axhline(0.5, color="0.7", lw=0.6)
    ax_c.set_ylim(0, 1)
    ax_h.set_ylabel("density (fraction of items per degree)")
    ax_c.set_ylabel("fraction of items with error ≤ x")
    ax_h.set_title("Distribution (dotted lines: medians; dash-dot: chance 90°)", fontsize=10)
    ax_c.set_title("Cumulative distribution (higher and further left is better)", fontsize=10)
    ax_h.legend(fontsize=7.5)
    ax_c.legend(fontsize=8, loc="lower right")
    fig.suptitle("Direction error: " + " vs ".join(name for name, _, _ in series) + ", same items", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(emb: Embeddings, rules: CaptionRules | None, out_dir: Path) -> dict[str, str]:
    """All PNGs -> ``{title: file name}`` (names relative to ``out_dir``, for report.md)."""
    plots = {}
    plot_projections(emb, rules, out_dir / "projection_spatial.png", "space")
    plots["Spatial embeddings (2-D PCA)"] = "projection_spatial.png"
    plot_projections(emb, rules, out_dir / "projection_source.png", "source")
    plots["Source embeddings (2-D PCA)"] = "projection_source.png"
    err, baseline = per_item_direction_error(emb), per_item_direction_error(emb, "iv_direction")
    if err is not None or baseline is not None:
        plot_direction_error(err, out_dir / "direction_error.png", baseline)
        plots["Direction error"] = "direction_error.png"
    return plots


def write_report(metrics: dict[str, float], emb: Embeddings | None, out_dir: str | Path, meta: dict[str, Any],
                 rules: CaptionRules | None = None, plots: bool = True) -> dict[str, Path]:
    """metrics.json, report.md and (with ``emb`` and ``plots``) the PNGs in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": write_metrics_json(metrics, meta, out_dir / "metrics.json")}
    made = write_plots(emb, rules, out_dir) if (plots and emb is not None) else {}
    paths.update({name: out_dir / name for name in made.values()})
    report = out_dir / "report.md"
    with atomic_write(report, "w") as f:
        f.write(render_markdown(metrics, meta, made) + "\n")
    paths["report"] = report
    return paths


# ----------------------------------------------------------------------------------------------
# comparison

def compare(a: dict[str, Any], b: dict[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    """Two metrics.json documents side by side: value A, value B, B − A, and the chance level(s)."""
    ma, mb = a["metrics"], b["metrics"]
    def is_chance(k: str) -> bool:
        return k.endswith("/chance") or k.endswith("/chance_uniform")

    keys = [k for k in ma if not is_chance(k)] + [k for k in mb if k not in ma and not is_chance(k)]
    w = max([len(k) for k in keys] + [6])
    lines = [f"A: {name_a}", f"B: {name_b}", "",
             f"{'metric':<{w}} {'A':>10} {'B':>10} {'B - A':>10} {'chance':>14}"]
    for k in keys:
        va, vb = ma.get(k), mb.get(k)
        diff = fmt(vb - va) if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else ""
        if diff and not diff.startswith("-") and diff != "n/a":
            diff = "+" + diff
        ca, cb = ma.get(f"{k}/chance"), mb.get(f"{k}/chance")
        if f"{k}/chance" not in ma and f"{k}/chance" not in mb:
            chance = ""
        elif ca is not None and cb is not None and abs(ca - cb) < 5e-4:
            chance = fmt(ca)
        else:
            chance = f"{fmt(ca)}|{fmt(cb)}"
        lines.append(f"{k:<{w}} {fmt(va) if k in ma else '–':>10} {fmt(vb) if k in mb else '–':>10} "
                     f"{diff:>10} {chance:>14}")
    return "\n".join(lines)
