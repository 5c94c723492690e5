"""`disse-eval`: score a checkpoint on fixed shards, or precomputed embeddings, and write a report.

    disse-eval --checkpoint runs/demo/checkpoints/best.pt --shards 'demo/test/test-{000000..000001}.tar' --out eval/
    disse-eval --embeddings emb.npz --out eval/
    disse-eval --checkpoint disse_epoch20.pt --roberta-dir roberta-base/ --shards official_grid/test --metrics official
    disse-eval --compare runA/metrics.json runB/metrics.json

Bad input is reported as one ``error: ...`` line naming the file and field, with exit status 2.
"""
from __future__ import annotations

import json
import sys
import time
from importlib import metadata
from pathlib import Path

import click
import numpy as np
import torch

from disse.schemas import SchemaError, load_caption_rules
from disse.schemas.atomic import atomic_write
from disse.pipeline.cli import PresetOrFile
from disse.schemas.captions import RULE_SETS
from disse.trainer.data.loader import (check_shard_rules, eval_loader, keep_freed_memory, resolve_shards, shard_features,
                                       shard_rules)
from disse.trainer.evaluation import pages, report
from disse.trainer.evaluation.embedder import Embedder
from disse.trainer.evaluation.evaluate import (embed, embed_official, evaluate_embeddings, load_embeddings_any,
                                               to_official_arrays)
from disse.trainer.evaluation.metrics import DEFAULT_CHUNK
from disse.trainer.evaluation.official_metrics import evaluate_official, flatten, json_safe, save_npz
from disse.trainer.evaluation.report import fmt
from disse.trainer.model.device import resolve_device
from disse.trainer.model.factory import load_delsa
from disse.trainer.model.official import OfficialConfig, load_official_config
from disse.trainer.model.weights import Checkpoint, read_checkpoint


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _version() -> str:
    try:
        return metadata.version("disse")
    except metadata.PackageNotFoundError:  # running from a plain checkout
        return "unknown"


def _device(name: str) -> str:
    return str(resolve_device(name, field="--device"))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Training checkpoint (.pt) to embed the shards with.")
@click.option("--shards", help="Shards to embed: brace pattern ('val/val-{000000..000009}.tar'), a directory, or a "
              "brace pattern of http(s):// URLs or pipe:COMMAND entries (docs/training.md, 'Shards from anywhere').")
@click.option("--embeddings", type=click.Path(dir_okay=False), help="Precomputed embeddings (.npz; see docs/evaluation.md).")
@click.option("--compare", nargs=2, type=click.Path(dir_okay=False), metavar="A.json B.json",
              help="Print two metrics.json side by side (with differences) and exit.")
@click.option("--out", type=click.Path(file_okay=False), default="eval_report", show_default=True,
              help="Folder for metrics.json, report.md and the plots.")
@click.option("--save-embeddings", type=click.Path(dir_okay=False), help="Also write the embeddings (.npz).")
@click.option("--metrics", "metric_set", type=click.Choice(["project", "official", "both"]), default="project",
              show_default=True, help="This project's metrics, the DISSE release's semantics (keys 'official/...', "
                                      "official_metrics.json; docs/official.md), or both.")
@click.option("--save-official-embeddings", type=click.Path(dir_okay=False),
              help="Also write the embeddings in the release's .npz layout (audio_spatial, spatial_id, ...).")
@click.option("--rules", type=PresetOrFile(RULE_SETS), help="Caption rule table for descriptors and zero-shot "
              "prompts: a preset (v1, official) or a YAML file. Default: the checkpoint's (what it was trained with), "
              "else the one the shards were captioned with, else v1.")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--num-workers", type=click.IntRange(0), default=0, show_default=True, help="Data loader workers.")
@click.option("--max-items", type=click.IntRange(1), help="Embed only the first N items of the shards.")
@click.option("--shard-retries", type=click.IntRange(0), default=2, show_default=True,
              help="Times a remote shard (URL, pipe:) whose stream breaks is opened again before it is skipped "
                   "and counted.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--chunk-size", type=click.IntRange(1), default=DEFAULT_CHUNK, show_default=True,
              help="Rows per similarity block (memory ~ 4 * chunk^2 bytes).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--html", "html", is_flag=True,
              help="Also write OUT/html/: for a reproducible set of test items, the top-5 clips each caption "
                   "retrieves and the top-5 captions each clip retrieves (binaural players, positives marked), and "
                   "the direction errors with the worst items. Needs --shards (the clips' audio).")
@click.option("--html-queries", type=click.IntRange(1), default=pages.DEFAULT_QUERIES, show_default=True,
              help="With --html: how many query items (drawn with seed 0).")
@click.option("--zero-shot-prompts", type=click.Choice(["ensemble", "single"]), default=None,
              help="Zero-shot class prototypes: mean text embedding of every spatial caption with the label, "
                   "or one 'A sound {phrase}.' prompt per label. Default: ensemble; single for the released model.")
@click.option("--roberta-dir", type=click.Path(file_okay=False),
              help="Released checkpoint: a local roberta-base folder (config.json, vocab.json, merges.txt) for the "
                   "text side. Without it only the audio side is embedded (--metrics official only).")
@click.option("--official-config", type=click.Path(dir_okay=False),
              help="Released checkpoint: a configs/official.yaml-style file (model.official.{checkpoint, roberta_dir, "
                   "modalities, text_max_length, strict}); command-line options win.")
@click.version_option(package_name="disse")
def main(checkpoint: str | None, shards: str | None, embeddings: str | None, compare: tuple[str, str] | None,
         out: str, save_embeddings: str | None, rules: str | None, batch_size: int, num_workers: int,
         max_items: int | None, device: str, chunk_size: int, no_plots: bool, zero_shot_prompts: str,
         metric_set: str = "project", save_official_embeddings: str | None = None, roberta_dir: str | None = None,
         official_config: str | None = None, shard_retries: int = 2, html: bool = False,
         html_queries: int = pages.DEFAULT_QUERIES) -> None:
    """Score retrieval (SRC, SPA), leakage (X-SRC, X-SPA, audio-side AX-SRC, AX-SPA), invariance ratios,
    physical errors (direction next to the intensity-vector physics baseline) and zero-shot descriptors,
    each next to its chance level; write metrics.json, report.md and PNG plots."""
    keep_freed_memory()  # the model's large CPU temporaries are reused batch after batch (loader.py)
    try:
        _run(checkpoint, shards, embeddings, compare, out, save_embeddings, rules, batch_size, num_workers,
             max_items, device, chunk_size, no_plots, zero_shot_prompts, metric_set, save_official_embeddings,
             roberta_dir, official_config, shard_retries, html, html_queries)
    except SchemaError as exc:
        _fail(str(exc))
    except MemoryError:
        _fail(f"out of memory; try a smaller --chunk-size (now {chunk_size})")


def _run(checkpoint, shards, embeddings, compare, out, save_embeddings, rules_path, batch_size, num_workers,
         max_items, device, chunk_size, no_plots, zero_shot_prompts=None, metric_set="project",
         save_official_embeddings=None, roberta_dir=None, official_config=None, shard_retries=2, html=False,
         html_queries=pages.DEFAULT_QUERIES) -> None:
    if compare:
        if checkpoint or embeddings or shards:
            raise SchemaError("--compare takes two metrics.json files and nothing else", field="--compare")
        a, b = (report.read_metrics_json(p) for p in compare)
        click.echo(report.compare(a, b, compare[0], compare[1]))
        return
    if bool(checkpoint) == bool(embeddings):
        raise SchemaError("give either --checkpoint with --shards, or --embeddings", field="--checkpoint/--embeddings")
    if checkpoint and not shards:
        raise SchemaError("--checkpoint needs --shards (the fixed validation or test shards)", field="--shards")
    if embeddings and (max_items or (shards and not html)):
        raise SchemaError("--shards / --max-items only apply with --checkpoint (or --shards with --embeddings "
                          "and --html: the clips' audio)", field="--shards")
    if html and not shards:
        raise SchemaError("needs --shards (the evaluated shards: the pages play their clips)", field="--html")
    if html and metric_set == "official":
        raise SchemaError("the pages show this project's retrieval: use --metrics project or both", field="--html")
    # the checkpoint is read once, here; its kind picks the model and the preset its shards must carry
    ckpt = read_checkpoint(checkpoint, expect=("project", "official"), what="--checkpoint") if checkpoint else None
    official = _official_options(ckpt, roberta_dir, official_config, metric_set) if ckpt else None
    if (roberta_dir or official_config) and official is None:
        raise SchemaError("only apply to the released checkpoint (the official model)",
                          field="--roberta-dir" if roberta_dir else "--official-config")
    rules_path = rules_path or _default_rules(ckpt, official, shards)
    rules = load_caption_rules(rules_path)
    meta: dict = {"disse_version": _version(), "chunk_size": chunk_size,
                  "caption_rules": rules_path or "packaged v1",
                  "rules_version": rules.version}
    meta["metric_set"] = metric_set
    t0 = time.perf_counter()
    official_data = None
    if embeddings:
        emb, official_data = load_embeddings_any(embeddings)
        meta["embeddings"] = str(embeddings)
        if emb is None and metric_set != "official":
            raise SchemaError("holds the release's layout without all four embeddings: only --metrics official "
                              "applies", file=str(embeddings), field="--metrics")
    elif official is not None:
        emb, official_data, skipped = _embed_official_checkpoint(ckpt, official, shards, device, batch_size,
                                                                 num_workers, max_items, rules_path, zero_shot_prompts,
                                                                 shard_retries)
        meta.update({"checkpoint": str(checkpoint), "model": "official", "shards": shards, "device": _device(device),
                     "embed_seconds": round(time.perf_counter() - t0, 2), "skipped_samples": skipped})
        if skipped:
            click.echo(f"warning: {skipped} sample(s) of the shards could not be read and were skipped", err=True)
    else:
        emb, skipped = _embed_checkpoint(ckpt, shards, device, batch_size, num_workers, max_items, rules,
                                         zero_shot_prompts or "ensemble", shard_retries)
        meta.update({"checkpoint": str(checkpoint), "shards": shards, "device": _device(device),
                     "embed_seconds": round(time.perf_counter() - t0, 2), "skipped_samples": skipped})
        if skipped:  # unreadable samples are skipped by the loader (and logged); say so plainly here
            click.echo(f"warning: {skipped} sample(s) of the shards could not be read and were skipped", err=True)
    if official_data is None:
        official_data = to_official_arrays(emb)
    if save_embeddings:
        if emb is None:
            raise SchemaError("needs all four embeddings", field="--save-embeddings")
        emb.save(save_embeddings)
        meta["saved_embeddings"] = str(save_embeddings)
    if save_official_embeddings:
        save_npz(save_official_embeddings, official_data)
        meta["saved_official_embeddings"] = str(save_official_embeddings)
    t1 = time.perf_counter()
    metrics = evaluate_embeddings(emb, rules, chunk_size=chunk_size) if metric_set != "official" else {}
    if metric_set != "project":
        metrics.update(_official(official_data, out, chunk_size))
    if emb is None or metric_set == "official":
        path = report.write_metrics_json(metrics, meta, Path(out) / "metrics.json")
        summary = {k: v for k, v in metrics.items() if k.endswith("/R@1") or "/IIDR_" in k}
        click.echo("\n".join(f"{k}: {report.fmt(v)}" for k, v in summary.items()))
        click.echo(f"\nmetrics: {path}\nofficial metrics (the release's JSON): {Path(out) / 'official_metrics.json'}")
        return
    meta.update({"seconds": round(time.perf_counter() - t1, 2),
                 "n_source_ids": int(len(np.unique(emb.source_id))), "n_space_ids": int(len(np.unique(emb.space_id))),
                 "dim_source": int(emb.audio_source.shape[1]), "dim_space": int(emb.audio_space.shape[1])})
    paths = report.write_report(metrics, emb, out, meta, rules, plots=not no_plots)
    if html:
        site = pages.write_pages(emb, resolve_shards(shards, what="--shards").urls, out, metrics,
                                 queries=html_queries)
        with open(paths["report"], "a") as f:
            f.write(f"\n## Listen\n\n[html/index.html](html/index.html): {site['queries']} caption and audio "
                    f"queries with their top-{pages.TOP_K}, the direction errors and the worst items, "
                    f"{site['clips']} clips.\n")
    click.echo(report.console_summary(metrics))
    click.echo(f"\nreport: {paths['report']}\nmetrics: {paths['metrics']}")
    if html:
        click.echo(f"pages: {site['out']}/index.html ({site['clips']} clips, {site['bytes'] / 1e6:.1f} MB)")
        if site["missing"]:
            click.echo(f"warning: {len(site['missing'])} clip(s) shown without audio, e.g. {site['missing'][0]}",
                       err=True)
    if metric_set == "both":
        with open(paths["report"], "a") as f:
            f.write("\n" + official_markdown(metrics) + "\n")
        click.echo(f"official metrics (the release's semantics; also under 'official/' in metrics.json): "
                   f"{Path(out) / 'official_metrics.json'}")
    if save_embeddings:
        click.echo(f"embeddings: {save_embeddings}")


def official_markdown(metrics: dict) -> str:
    """The ``official/...`` figures as a markdown section (appended to report.md with --metrics both)."""
    lines = ["## The DISSE release's metrics (its semantics: own pair kept cross-modally, optimistic ties)", "",
             "| task | direction | R@1 | R@5 | R@10 | MedR | MnR | queries |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    rows = sorted({k.rsplit("/", 1)[0] for k in metrics if k.startswith("official/") and "/iidr/" not in k})
    for row in rows:
        parts = row.split("/")  # official/cross_modal/<task>/<direction> or official/intra_modal/<mod>/<task>
        task, direction = (parts[2], parts[3]) if parts[1] == "cross_modal" else (parts[3], f"{parts[2]} → {parts[2]}")
        vals = [fmt(metrics.get(f"{row}/{m}")) for m in ("R@1", "R@5", "R@10", "MedR", "MnR", "queries")]
        lines.append(f"| {task} | {direction.replace('_to_', ' → ')} | " + " | ".join(vals) + " |")
    lines += ["", "| embedding | IIDR_source | IIDR_spatial |", "| --- | --- | --- |"]
    for emb in sorted({k.split("/")[2] for k in metrics if k.startswith("official/iidr/")}):
        lines.append(f"| {emb} | {fmt(metrics.get(f'official/iidr/{emb}/IIDR_source'))} | "
                     f"{fmt(metrics.get(f'official/iidr/{emb}/IIDR_spatial'))} |")
    return "\n".join(lines)


def _official(data: dict, out: str, chunk_size: int) -> dict:
    """The release's metric semantics: ``official_metrics.json`` (its nested JSON, NaN -> null, inf ->
    "Infinity") in ``out``, and the same figures flattened under ``official/`` for metrics.json."""
    try:
        nested = evaluate_official(data, chunk_size=chunk_size)
    except ValueError as exc:
        raise SchemaError(str(exc), field="--metrics official") from None
    with atomic_write(Path(out) / "official_metrics.json", "w") as f:
        f.write(json.dumps(json_safe(nested), indent=2) + "\n")
    return flatten(nested)


def _default_rules(ckpt: Checkpoint | None, official, shards: str | None) -> str | None:
    """The rule table a command can know: the release's for the released model; the one a project checkpoint
    was trained with (its config); else the one the shards were captioned with; else None (packaged v1)."""
    if official is not None:
        return "official"
    if ckpt is not None:
        cfg = ckpt.config
        name = (cfg.get("eval") or {}).get("caption_rules") or (cfg.get("data") or {}).get("caption_rules")
        if name:
            return name
    if shards:
        name, _version, _where = shard_rules(resolve_shards(shards, what="--shards"), what="--shards")
        if name and name != "v1":
            return name
    return None


def _official_options(ckpt: Checkpoint, roberta_dir, official_config, metric_set):
    """The released model's options (``OfficialConfig``) when ``ckpt`` has the release's layout, else
    None. Checked before anything is embedded: the project metrics need the text side (``--roberta-dir``)."""
    if ckpt.kind != "official":
        return None
    cfg = load_official_config(official_config) if official_config else OfficialConfig()
    cfg.checkpoint = str(ckpt.path)
    cfg.roberta_dir = roberta_dir or cfg.roberta_dir
    if not official_config or not cfg.roberta_dir:
        cfg.modalities = ["audio", "text"] if cfg.roberta_dir else ["audio"]
    if "text" in cfg.modalities and not cfg.roberta_dir:
        raise SchemaError("the text side needs a local roberta-base folder", field="--roberta-dir")
    if "text" not in cfg.modalities and metric_set != "official":
        raise SchemaError("without the text side (give a local roberta-base folder) only --metrics official applies",
                          field="--roberta-dir")
    return cfg


def _embed_official_checkpoint(ckpt: Checkpoint, cfg, shards: str, device: str, batch_size: int, num_workers: int,
                               max_items: int | None, rules_path: str | None, zero_shot_prompts: str | None,
                               shard_retries: int = 2):
    """The released checkpoint over official-preset shards -> ``(Embeddings | None, release arrays, skipped)``."""
    shard_list = resolve_shards(shards, what="--shards")
    _check_preset(shard_list, "official")  # before building the model
    dev = _device(device)
    embedder = Embedder.load(ckpt, device=dev, roberta_dir=cfg.roberta_dir, modalities=cfg.modalities,
                             rules=rules_path, zero_shot=zero_shot_prompts, strict=cfg.strict,
                             text_max_length=cfg.text_max_length)
    loader = eval_loader(shard_list, batch_size, num_workers, preset="official", retries=shard_retries)
    torch.manual_seed(0)
    emb, data = embed_official(embedder, loader, max_items=max_items)
    expected = shard_list.total if max_items is None else min(max_items, shard_list.total)
    return emb, data, expected - len(data["source_id"])


def _check_preset(shard_list, want: str) -> None:
    """The shards' feature preset (first sample's ``features`` block) is the one the model reads, else one
    SchemaError naming ``features.preset``."""
    features, where = shard_features(shard_list)
    have = features.get("preset", "project")
    if have != want:
        model = "the released (official) model" if want == "official" else "this project's model (DELSA)"
        hint = ("official-preset shards: disse-synth official-grid, or render --features official" if want == "official"
                else "shards rendered with this project's features, or score the released checkpoint here")
        raise SchemaError(f"the shards carry the {have!r} feature preset, but {model} reads {want!r} ({hint})",
                          file=where, field="features.preset")


def _embed_checkpoint(ckpt: Checkpoint, shards: str, device: str, batch_size: int, num_workers: int,
                      max_items: int | None, rules, zero_shot_prompts: str = "ensemble", shard_retries: int = 2):
    shard_list = resolve_shards(shards, what="--shards")  # fail fast, before building the model
    _check_preset(shard_list, "project")
    check_shard_rules(shard_list, rules, field="--rules", what="--shards")
    dev = _device(device)
    model = load_delsa(ckpt, dev)
    loader = eval_loader(shard_list, batch_size, num_workers, retries=shard_retries)
    torch.manual_seed(0)  # nothing should be random in eval mode; this makes sure of it
    emb = embed(model, loader, dev, rules, max_items=max_items, zero_shot=zero_shot_prompts)
    expected = shard_list.total if max_items is None else min(max_items, shard_list.total)
    return emb, expected - len(emb)


if __name__ == "__main__":
    main()
