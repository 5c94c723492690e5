"""``disse-embed``: embed FOA recordings and/or captions into the ``.npz`` layout ``disse-eval --embeddings`` reads.

The library side is :mod:`disse.trainer.evaluation.embedder` (``Embedder``).
"""
from __future__ import annotations

import contextlib
import sys
import warnings

import click
import numpy as np

from disse.pipeline.cli import PresetOrFile
from disse.schemas import SchemaError
from disse.schemas.captions import RULE_SETS
from disse.schemas.features import FEATURE_PRESETS
from disse.trainer.model.device import resolve_device
from disse.trainer.evaluation.embedder import FOA_FORMATS, SEGMENTS, TARGETS, Embedder, FoaFormatWarning, \
    read_manifest
from disse.trainer.model.official import load_official_config


def _device(name: str) -> str:
    return str(resolve_device(name, field="--device"))


@contextlib.contextmanager
def _format_warnings_as_lines():
    """The library's :class:`FoaFormatWarning` (a recording whose levels contradict its --format) -> one
    ``warning: ...`` line on stderr each, as it happens, once per message; other warnings as usual."""
    shown: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("always", FoaFormatWarning)
        default = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if not issubclass(category, FoaFormatWarning):
                return default(message, category, filename, lineno, file, line)
            if str(message) not in shown:
                shown.add(str(message))
                click.echo(f"warning: {message}", err=True)

        warnings.showwarning = show
        yield


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="A disse-train checkpoint or the released disse_epoch20.pt (told apart by its keys).")
@click.option("--config", "config", type=click.Path(dir_okay=False),
              help="configs/official.yaml-style file: model.official.{checkpoint, roberta_dir, modalities, "
                   "text_max_length, strict}; command-line options win.")
@click.option("--audio", "audio", multiple=True, type=click.Path(dir_okay=False),
              help="FOA recording (4 channels; WAV, FLAC, ...; any rate and length). Repeatable.")
@click.option("--caption", "captions", multiple=True, help="Caption to embed. Repeatable; with --audio, one per file.")
@click.option("--manifest", type=click.Path(dir_okay=False),
              help="CSV: audio_path and/or caption, optional source_id, space_id, format (ambix/fuma).")
@click.option("--format", "foa_format", type=click.Choice(FOA_FORMATS), default="ambix", show_default=True,
              help="Channel convention of the --audio files (FuMa is converted to AmbiX on read).")
@click.option("--segments", type=click.Choice(SEGMENTS), default="first", show_default=True,
              help="Audio without captions: embed the first 10 s, or every 10 s window (rows key#k).")
@click.option("--source-id", "source_ids", multiple=True, help="Ids of the items (default: the file path).")
@click.option("--space-id", "space_ids", multiple=True, help="Spatial ids of the items (default: the file path).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npz.")
@click.option("--roberta-dir", type=click.Path(file_okay=False),
              help="Official checkpoint: local roberta-base folder (needed for captions and zero-shot).")
@click.option("--features", type=PresetOrFile(FEATURE_PRESETS),
              help="Project checkpoint: feature-parameter YAML of its shards (default: packaged).")
@click.option("--rules", type=PresetOrFile(RULE_SETS),
              help="Caption rule table for zero-shot prompts: a preset (v1, official) or a YAML file (default: the model's).")
@click.option("--zero-shot-prompts", type=click.Choice(["ensemble", "single"]), default=None,
              help="Default: ensemble for project models, single for the official one.")
@click.option("--mirror-left-right", is_flag=True,
              help="Negate Y before featurising (real AmbiX into the release's mirrored frame; docs/official.md).")
@click.option("--no-strict", is_flag=True, help="Official checkpoint: load even if keys do not match.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--device", default="auto", show_default=True)
def command(checkpoint, config, audio, captions, manifest, foa_format, segments, source_ids, space_ids, out,
            roberta_dir, features, rules, zero_shot_prompts, mirror_left_right, no_strict, batch_size, device):
    """Embed FOA recordings and/or captions into the .npz layout disse-eval --embeddings reads."""
    with _format_warnings_as_lines():
        _embed(checkpoint, config, audio, captions, manifest, foa_format, segments, source_ids, space_ids, out,
               roberta_dir, features, rules, zero_shot_prompts, mirror_left_right, no_strict, batch_size, device)


def _embed(checkpoint, config, audio, captions, manifest, foa_format, segments, source_ids, space_ids, out,
           roberta_dir, features, rules, zero_shot_prompts, mirror_left_right, no_strict, batch_size, device):
    try:
        modalities, text_max_length, strict = None, 512, not no_strict
        if config:
            oc = load_official_config(config)
            checkpoint = checkpoint or oc.checkpoint
            roberta_dir = roberta_dir or oc.roberta_dir
            modalities, text_max_length, strict = oc.modalities, oc.text_max_length, oc.strict and not no_strict
        if not checkpoint:
            raise SchemaError("give --checkpoint (or model.official.checkpoint in --config)", field="--checkpoint")
        fmts: str | list[str] = foa_format
        targets: dict[str, list[float]] = {}
        if manifest:
            if audio or captions:
                raise SchemaError("give --manifest or --audio / --caption, not both", field="--manifest")
            rows = read_manifest(manifest)
            audio = tuple(r["audio"] for r in rows if r["audio"])
            captions = tuple(r["caption"] for r in rows if r["caption"])
            fmts = [r["format"] for r in rows if r["audio"]]
            source_ids = tuple(r["source_id"] for r in rows) if all(r["source_id"] for r in rows) else ()
            space_ids = tuple(r["space_id"] for r in rows) if all(r["space_id"] for r in rows) else ()
            targets = {t: [r[t] for r in rows] for t in TARGETS if all(t in r for r in rows)}
        emb = Embedder.load(checkpoint, device=_device(device), roberta_dir=roberta_dir, features=features,
                            rules=rules, zero_shot=zero_shot_prompts, strict=strict, modalities=modalities,
                            text_max_length=text_max_length)
        if audio and not captions and segments == "all":
            if source_ids or space_ids:
                raise SchemaError("--segments all names its rows itself (key#k); drop the ids",
                                  field="--segments")
            arrays = emb.embed_audio(audio, foa_format=fmts, segments="all",
                                     mirror_left_right=mirror_left_right, batch_size=batch_size)
            arrays["source_id"] = arrays["space_id"] = arrays["key"]
            arrays["format_version"], arrays["model_kind"] = np.array(1), np.array(emb.kind)
        else:
            arrays = emb.embed(audio, captions, source_ids=source_ids or None, space_ids=space_ids or None,
                               foa_format=fmts, mirror_left_right=mirror_left_right, targets=targets,
                               batch_size=batch_size)
        path = Embedder.save(out, arrays)
    except SchemaError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    n = len(arrays["key"])
    click.echo(f"{n} item(s) embedded with the {emb.kind} model -> {path}")
    for k in sorted(a for a in arrays if a.startswith("zs_"))[:5]:
        click.echo(f"  {k[3:]}: {', '.join(map(str, arrays[k][:8]))}{' ...' if n > 8 else ''}")


def _cli() -> click.Command:
    """The click command (what tests invoke with CliRunner)."""
    return command


def main() -> None:
    """Console script ``disse-embed``."""
    command()


if __name__ == "__main__":
    main()
