"""`disse-synth`: the synthesis command group and all its subcommands.

This is the only module of :mod:`disse.pipeline` that imports click: the library modules
(rirs, render, captions, demo, inspect, upgrade, official_grid) take plain arguments, and each
command here parses options, calls them and prints the outcome.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from click.shell_completion import CompletionItem

from disse.pipeline.aformat import regenerate_catalogue_rirs
from disse.pipeline.captions import make_captions
from disse.pipeline.demo import SOUND_TYPES, DemoConfig, run_demo
from disse.pipeline.inspect import (collect_metas, dataset_stats, export_wav, find_sample, find_shards,
                                    format_bytes, format_sample, format_stats, format_summary, plot_sample,
                                    plot_stats, summarise)
from disse.pipeline.inspect_site import DEFAULT_LIMIT, build_site
from disse.pipeline.official_grid import GRID_SIZE, build_grid, plan_grid
from disse.pipeline.render import (CAPTION_CONFLICT_POLICIES, RenderOptions, RirCheckFailed, parse_shard_range,
                                   plan_from_files, run_plan, select_shards, skip_report, worst_failure)
from disse.pipeline.rir_checks import AZIMUTH_CONVENTIONS
from disse.pipeline.rirs import SimParams, simulate_bank
from disse.pipeline.shards import write_json_atomic
from disse.pipeline.splits import SPLITS, per_sample_rng
from disse.pipeline.upgrade import upgrade_tree
from disse.configs import config_path
from disse.schemas import SchemaError, load_caption_rules, load_feature_params, read_rirs_csv
from disse.schemas.captions import RULE_SETS
from disse.schemas.features import FEATURE_PRESETS
from disse.schemas.shard import SCHEMA_VERSION


class _Group(click.Group):
    """Bad input (:class:`SchemaError`) from any subcommand -> one line ``error: ...``, status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SchemaError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="disse")
def main() -> None:
    """Render spatial audio-text datasets: RIR banks, FOA mixtures, intensity features, captions, shards."""


class PresetOrFile(click.ParamType):
    """A packaged preset's name or the path of a YAML file.

    A preset name is resolved first, to the packaged file's path, before any path check: ``official``
    means the preset even where the working folder holds a file or folder of that name (write
    ``./official`` for such a file). Any other value is checked as a file path (``click.Path``)."""

    name = "preset or file"

    def __init__(self, presets: dict[str, str]) -> None:
        self.presets = dict(presets)
        self._path = click.Path(dir_okay=False)

    def get_metavar(self, param, ctx=None) -> str:  # ctx: click >= 8.2
        return "[" + "|".join(self.presets) + "|FILE.yaml]"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value in self.presets:
            return str(config_path(self.presets[value]))
        return self._path.convert(value, param, ctx)

    def shell_complete(self, ctx, param, incomplete):
        return ([CompletionItem(n) for n in self.presets if n.startswith(incomplete)]
                + [CompletionItem(incomplete, type="file")])


FEATURES_OPTION_HELP = ("Feature parameters: a preset or a YAML file. Presets: project (configs/features.yaml, "
                        "the default), official (the DISSE release's 16 kHz intensity vectors; docs/official.md).")
RULES_OPTION_HELP = ("Caption rule table: a preset or a YAML file. Presets: project = v1 (configs/caption_rules_v1.yaml, "
                     "the default), official (the DISSE release's rule set, +azimuth = right; docs/official.md).")


# ---------------------------------------------------------------------------------------------
# disse-synth rirs
# ---------------------------------------------------------------------------------------------

_OPTION_NAMES = {"area_range": "--area-range", "t30_range": "--t30-range",
                 "distance_range": "--distance-range", "max_rir_s": "--max-rir-seconds",
                 "max_order": "--max-order", "early_ms": "--early-ms", "file_format": "--format"}


def _range(name):
    return click.option(f"--{name}", type=(float, float), default=None, metavar="MIN MAX")


@click.command("rirs")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder: audio/*.flac and rirs.csv.")
@click.option("--rooms", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--positions-per-room", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@_range("area-range")
@_range("t30-range")
@_range("distance-range")
@click.option("--early-ms", type=float, default=None, help="Image-source part length (ms).")
@click.option("--max-order", type=int, default=None, help="Cap on the image-source order.")
@click.option("--max-rir-seconds", type=float, default=None, help="Cap on the RIR length (s).")
@click.option("--format", "file_format", type=click.Choice(["flac", "wav"]), default="flac",
              show_default=True, help="flac: 24-bit; wav: 32-bit float.")
@click.option("--fast", is_flag=True, help="Small fast bank (T30 <= 1 s, RIRs <= 1.3 s, low order).")
@click.option("--no-progress", is_flag=True)
def rirs_command(out_dir, rooms, positions_per_room, workers, seed, area_range, t30_range,
                 distance_range, early_ms, max_order, max_rir_seconds, file_format, fast,
                 no_progress):
    """Simulate shoebox rooms and write 4-channel AmbiX FOA RIRs plus rirs.csv.

    Ranges: --area-range in m² (default 10 300), --t30-range in s (default 0.15 2.5),
    --distance-range in m (default 0.5 6).
    """
    options = {"file_format": file_format}
    for key, value in (("distance_range", distance_range), ("early_ms", early_ms),
                       ("max_order", max_order), ("max_rir_s", max_rir_seconds)):
        if value is not None:
            options[key] = value
    try:
        csv_path = simulate_bank(
            out_dir, rooms, positions_per_room, seed=seed, workers=workers,
            area_range=area_range or SimParams.area_range,
            t30_range=t30_range, fast=fast, progress=not no_progress, **options)
    except ValueError as exc:
        message = str(exc)
        for name, opt in _OPTION_NAMES.items():  # speak the CLI's language
            message = message.replace(name, opt)
        raise click.UsageError(message) from None
    click.echo(f"wrote {rooms * positions_per_room} RIRs and {csv_path}")


# ---------------------------------------------------------------------------------------------
# disse-synth render
# ---------------------------------------------------------------------------------------------

@click.command("render")
@click.option("--clips", "clips_csv", required=True, type=click.Path(dir_okay=False),
              help="Dry-clip CSV: audiocap_id, caption [, path] [, split].")
@click.option("--audio-dir", type=click.Path(file_okay=False), default=None,
              help="Folder of {audiocap_id}.{flac,wav,mp3,ogg} (or base of relative paths).")
@click.option("--rirs", "rirs_csv", required=True, type=click.Path(dir_okay=False),
              help="RIR CSV (disse-synth rirs writes one) [, split].")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Render seed: phrasings, gains, pairing order (never the splits).")
@click.option("--split-seed", type=int, default=0, show_default=True,
              help="Seed of the train/val/test assignment (by recording and by room).")
@click.option("--room-column", default="room_index", show_default=True,
              help="RIR CSV column naming each RIR's room: all positions of a room share a split. "
                   "Without it every RIR is its own group (a warning says so).")
@click.option("--shard-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Samples per shard.")
@click.option("--rirs-per-clip", type=click.IntRange(min=1), default=1, show_default=True,
              help="K: every clip is rendered with at least K RIRs of its split. Use 2 or more: "
                   "K = 1 leaves X-SRC, IR_space and the source loss's positives undefined (a warning says so).")
@click.option("--clips-per-rir", type=click.IntRange(min=1), default=1, show_default=True,
              help="L: every RIR is used with at least L clips of its split.")
@click.option("--val-fraction", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--test-fraction", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--target-rms-dbfs", type=float, default=-26.0, show_default=True)
@click.option("--max-failure-rate", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="Exit with status 1 if a larger share of rows or samples failed.")
@click.option("--azimuth-convention", type=click.Choice(AZIMUTH_CONVENTIONS), default="ccw", show_default=True,
              help="How the RIR CSV's azimuth_deg turns: ccw (the project's: positive = left) or cw "
                   "(positive = right; negated on read). Recorded in the manifest.")
@click.option("--rir-tolerance-deg", type=click.FloatRange(0, 180, min_open=True), default=20.0,
              show_default=True, help="Skip a RIR whose first arrival is further than this from its metadata.")
@click.option("--no-rir-check", is_flag=True,
              help="Do not check RIRs against their metadata at plan time (docs/synthesis.md).")
@click.option("--caption-conflicts", type=click.Choice(CAPTION_CONFLICT_POLICIES), default="keep",
              show_default=True, help="Source captions that already carry spatial words: keep them "
              "(flagged per sample and counted) or skip those clips.")
@click.option("--job-index", type=int, default=None, help="0-based index of this job in an array.")
@click.option("--num-jobs", type=int, default=None, help="Number of jobs in the array.")
@click.option("--shard-range", default=None, metavar="A:B",
              help="Render global shards A..B-1 only (see --plan-only for the numbering).")
@click.option("--plan-only", is_flag=True, help="Print the plan (shards per split) and exit.")
@click.option("--features", "features_yaml", type=PresetOrFile(FEATURE_PRESETS), default=None,
              help=FEATURES_OPTION_HELP)
@click.option("--rules", "rules_yaml", type=PresetOrFile(RULE_SETS), default=None, help=RULES_OPTION_HELP)
@click.option("--no-progress", is_flag=True)
def render_command(clips_csv, audio_dir, rirs_csv, out_dir, workers, seed, split_seed, room_column, shard_size,
                   rirs_per_clip, clips_per_rir, val_fraction, test_fraction, target_rms_dbfs,
                   max_failure_rate, azimuth_convention, rir_tolerance_deg, no_rir_check,
                   caption_conflicts, job_index, num_jobs, shard_range, plan_only,
                   features_yaml, rules_yaml, no_progress):
    """Render dry clips x FOA RIRs into train/val/test WebDataset shards.

    Re-running the same command skips complete shards and redoes partial ones. For a job
    array, give every job the same arguments plus --job-index/--num-jobs (or --shard-range);
    the union of their outputs equals a single run's, byte for byte.
    """
    if (job_index is None) != (num_jobs is None):
        raise click.UsageError("--job-index and --num-jobs go together")
    options = RenderOptions(seed=seed, split_seed=split_seed, room_column=room_column,
                            shard_size=shard_size, rirs_per_clip=rirs_per_clip,
                            clips_per_rir=clips_per_rir, val_fraction=val_fraction,
                            test_fraction=test_fraction, target_rms_dbfs=target_rms_dbfs,
                            max_failure_rate=max_failure_rate, azimuth_convention=azimuth_convention,
                            rir_check=not no_rir_check, rir_tolerance_deg=rir_tolerance_deg,
                            caption_conflicts=caption_conflicts)
    try:
        plan = plan_from_files(clips_csv, rirs_csv, options, audio_dir=audio_dir,
                               params=load_feature_params(features_yaml),
                               rules=load_caption_rules(rules_yaml), workers=workers)
    except RirCheckFailed as err:  # a bad bank is known before any rendering: stop here
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        report = Path(out_dir) / "rir_check.json"
        write_json_atomic(report, {"rirs_csv": str(rirs_csv), "checked": err.checked,
                                   "options": options.plan_dict(), "rejected": err.rejected})
        click.echo(f"error: {err}", err=True)
        click.echo(f"error: nothing rendered; reasons per RIR in {report}. Fix the bank (a foa_format "
                   f"column, --azimuth-convention cw), or use --rir-tolerance-deg / --no-rir-check if "
                   f"the check is wrong for it (docs/synthesis.md)", err=True)
        raise SystemExit(1)
    for line in plan.warnings:
        click.echo(f"warning: {line}", err=True)
    check = plan.inputs.get("rir_check")
    if isinstance(check, dict) and check["rejected"]:
        rejected = [r for r in plan.skipped_rows if r.get("field") == "rir_check"]
        click.echo(f"warning: {check['rejected']} of {check['checked']} RIRs fail the sanity check "
                   f"({', '.join(f'{k} {v}' for k, v in check['by_kind'].items())}) and are skipped; "
                   f"e.g. {rejected[0]['file']}: {rejected[0]['reason']}", err=True)
    if plan.caption_conflicts.get("clips_flagged"):
        cc = plan.caption_conflicts
        click.echo(f"note: {cc['clips_flagged']} source captions already carry spatial words "
                   f"({', '.join(list(cc['words'])[:5])}, ...): "
                   + ("skipped (--caption-conflicts skip)" if cc["policy"] == "skip" else
                      f"kept and flagged in {cc['samples_flagged']} samples (--caption-conflicts keep)"),
                   err=True)
    if not plan.inputs["rir_split_groups"].startswith("room"):
        click.echo(f"warning: {rirs_csv} has no {room_column!r} column: RIRs are split one by one, so "
                   "positions of one room can land in train and test; add a room column "
                   "(or --room-column NAME) for held-out rooms", err=True)
    job = None if job_index is None else (job_index, num_jobs)
    selected = select_shards(len(plan.shards), parse_shard_range(shard_range), job)
    if plan_only:
        for split in SPLITS:
            c = plan.counts[split]
            first = next((t.index for t in plan.shards if t.split == split), None)
            click.echo(f"{split:5s}: {c['samples']} samples in {c['shards']} shards"
                       + (f" (global {first}..{first + c['shards'] - 1})" if c["shards"] else "")
                       + f", {c['clips']} clips, {c['rirs']} RIRs")
        click.echo(f"total: {plan.n_samples} samples, {len(plan.shards)} shards; "
                   f"this job: shards {selected.start}..{selected.stop - 1}")
        return
    manifest = run_plan(plan, out_dir, workers=workers, shard_range=parse_shard_range(shard_range),
                        job=job, progress=not no_progress)
    done = "complete" if manifest["complete"] else f"{len(manifest['missing_shards'])} shards still missing"
    click.echo(f"{out_dir}: {manifest['rendered_samples']} samples rendered, "
               f"{manifest['skipped_samples']} skipped, {len(manifest['skipped_rows'])} bad rows "
               f"({done}); manifest: {Path(out_dir) / 'manifest.json'}")
    for line in skip_report(manifest):
        click.echo(f"skipped: {line}", err=True)
    if manifest["failure_rate"] > max_failure_rate:
        click.echo(f"error: failure rate {worst_failure(manifest)} exceeds --max-failure-rate "
                   f"{max_failure_rate:.1%}; reasons above, every skipped sample in "
                   f"{Path(out_dir) / 'manifest.json'} ('skipped')", err=True)
        raise SystemExit(1)


# ---------------------------------------------------------------------------------------------
# disse-synth captions
# ---------------------------------------------------------------------------------------------

@click.command("captions")
@click.option("--rirs", "rirs_csv", required=True, type=click.Path(dir_okay=False),
              help="RIR CSV whose metadata to describe.")
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--source-caption", default="A dog barks.", show_default=True,
              help="Source caption to merge into the full caption.")
@click.option("--rules", "rules_yaml", type=PresetOrFile(RULE_SETS), default=None, help=RULES_OPTION_HELP)
def captions_command(rirs_csv, limit, seed, source_caption, rules_yaml):
    """Preview metadata -> language: descriptors, space_id and captions of the first RIRs."""
    rules = load_caption_rules(rules_yaml)
    for rir in read_rirs_csv(rirs_csv)[:limit]:
        values = {"azimuth_deg": rir.azimuth_deg, "elevation_deg": rir.elevation_deg,
                  "source_distance_m": rir.source_distance_m, "area_m2": rir.area_m2,
                  "t30_ms": rir.t30_ms}
        descriptors = rules.describe(values)
        caps = make_captions(rules, descriptors, source_caption, per_sample_rng(seed, rir.rir_id))
        click.echo(f"{rir.rir_id}: az {rir.azimuth_deg:.1f} deg, el {rir.elevation_deg:.1f} deg, "
                   f"{rir.source_distance_m:.2f} m, {rir.area_m2:.1f} m2, T30 {rir.t30_ms:.0f} ms")
        click.echo(f"  space_id: {rules.space_id(descriptors)}")
        click.echo(f"  spatial:  {caps.spatial_caption}")
        click.echo(f"  caption:  {caps.caption}")


# ---------------------------------------------------------------------------------------------
# disse-synth demo
# ---------------------------------------------------------------------------------------------

_DEMO = DemoConfig()  # the defaults --help shows


@click.command("demo")
@click.option("--out", "out_dir", default="demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--types", type=click.IntRange(1, len(SOUND_TYPES)), default=_DEMO.types, show_default=True,
              help="Number of sound types (the first N of the built-in list).")
@click.option("--clips-per-type", type=click.IntRange(min=3), default=_DEMO.clips_per_type, show_default=True,
              help="Variants per type: the last goes to test, the one before to val.")
@click.option("--rooms", type=click.IntRange(min=3), default=_DEMO.rooms, show_default=True,
              help="Simulated rooms: a quarter are held out for test, an eighth for validation.")
@click.option("--positions-per-room", type=click.IntRange(min=1), default=_DEMO.positions_per_room,
              show_default=True, help="Source/receiver positions per room.")
@click.option("--rirs-per-clip", type=click.IntRange(min=1), default=_DEMO.rirs_per_clip, show_default=True)
@click.option("--clips-per-rir", type=click.IntRange(min=1), default=_DEMO.clips_per_rir, show_default=True)
@click.option("--shard-size", type=click.IntRange(min=1), default=_DEMO.shard_size, show_default=True)
@click.option("--seed", type=int, default=_DEMO.seed, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=os.cpu_count() or 1,
              show_default="all cores")
@click.option("--no-progress", is_flag=True)
def demo_command(out_dir, types, clips_per_type, rooms, positions_per_room, rirs_per_clip,
                 clips_per_rir, shard_size, seed, workers, no_progress):
    """Build the embedded demo: synthetic sounds x simulated rooms -> train/val/test shards."""
    cfg = DemoConfig(types, clips_per_type, rooms, positions_per_room, rirs_per_clip,
                     clips_per_rir, shard_size, seed)
    m = run_demo(out_dir, cfg, workers=workers, progress=not no_progress)
    s = m["splits"]
    click.echo(f"{out_dir}: train {s['train']['rendered']}, val {s['val']['rendered']}, "
               f"test {s['test']['rendered']} samples; shards in {out_dir}/{{train,val,test}}/")
    if m["failure_rate"] > 0:
        click.echo(f"error: {m['skipped_samples']} samples failed; see {out_dir}/manifest.json", err=True)
        raise SystemExit(1)


# ---------------------------------------------------------------------------------------------
# disse-synth inspect
# ---------------------------------------------------------------------------------------------

@click.command("inspect")
@click.argument("target")
@click.option("--show", "show_key", metavar="KEY", help="Print one sample's metadata and captions.")
@click.option("--stats", is_flag=True, help="Distributions over all samples (a table).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), metavar="OUT.png",
              help="With --stats (implied): histograms as a PNG.")
@click.option("--export", nargs=2, metavar="KEY OUT.wav", default=None,
              help="Write a sample's 4-channel AmbiX FOA as a WAV.")
@click.option("--plot-sample", "sample_plot", nargs=2, metavar="KEY OUT.png", default=None,
              help="Draw a sample's W spectrogram and intensity features.")
@click.option("--html", "html_out", type=click.Path(file_okay=False), metavar="OUT",
              help="Write a static site to OUT: an index with filters, a page per sample (captions, metadata, "
                   "binaural and stereo previews, spectrogram, direction map) and a summary page.")
@click.option("--limit", type=click.IntRange(1), default=DEFAULT_LIMIT, show_default=True,
              help="With --html: at most this many samples, drawn reproducibly (--seed).")
@click.option("--seed", type=int, default=0, show_default=True, help="With --html: the draw of the samples.")
@click.option("--force", is_flag=True, help="With --html: replace OUT if it holds a site written before.")
@click.option("--split", "split_filter", help="With --html: only samples of this split.")
@click.option("--room", "room_filter", help="With --html: only samples of this room (the RIR CSV's room column).")
@click.option("--source", "source_filter", metavar="SOURCE_ID", help="With --html: only samples of this dry clip.")
@click.option("--descriptor", "descriptor_filter", multiple=True, metavar="ATTR=LABEL",
              help="With --html: only samples with this caption descriptor (e.g. direction=left); repeatable.")
def inspect_command(target, show_key, stats, plot_path, export, sample_plot, html_out, limit, seed, force,
                    split_filter, room_filter, source_filter, descriptor_filter):
    """Summarise shards: TARGET is a folder (all *.tar below), a brace pattern
    ('shards/train/train-{000000..000003}.tar') or one tar."""
    try:
        shards = find_shards(target)
        if show_key:
            click.echo(format_sample(find_sample(shards, show_key)))
        if export:
            out = export_wav(find_sample(shards, export[0]), export[1])
            click.echo(f"wrote {out} (4-channel AmbiX W, Y, Z, X)")
        if sample_plot:
            out = plot_sample(find_sample(shards, sample_plot[0]), sample_plot[1])
            click.echo(f"wrote {out}")
        if stats or plot_path:
            metas, bad = collect_metas(shards)
            click.echo(format_stats(dataset_stats(metas)))
            click.echo(format_bytes(summarise(shards)))
            if bad:
                click.echo(f"skipped {len(bad)} unreadable sample(s), e.g. {bad[0]}")
            if plot_path:
                click.echo(f"wrote {plot_stats(metas, plot_path, title=str(target))}")
        site_options = {"--split": split_filter, "--room": room_filter, "--source": source_filter,
                        "--descriptor": descriptor_filter, "--force": force}
        if not html_out and any(site_options.values()):
            raise SchemaError("applies only with --html OUT", field=next(k for k, v in site_options.items() if v))
        if html_out:
            site = build_site(shards, html_out, limit=limit, seed=seed, force=force, title=str(target),
                              filters={"split": split_filter, "room": room_filter, "source": source_filter,
                                       "descriptor": descriptor_filter})
            click.echo(f"wrote {site['out']}/index.html: {site['samples']} sample page(s) of {site['candidates']} "
                       f"readable, {site['bytes'] / 1e6:.1f} MB, {site['seconds']} s")
            if site["skipped"]:
                click.echo(f"skipped {len(site['skipped'])} sample(s), e.g. {site['skipped'][0]['where']}: "
                           f"{site['skipped'][0]['reason']} (all listed in {site['out']}/summary.html)")
        if not (show_key or export or sample_plot or stats or plot_path or html_out):
            click.echo(format_summary(summarise(shards), str(target)))
    except SchemaError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)


# ---------------------------------------------------------------------------------------------
# disse-synth upgrade
# ---------------------------------------------------------------------------------------------

@click.command("upgrade")
@click.argument("src")
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--workers", type=int, default=1, show_default=True, help="processes (one shard each at a time)")
@click.option("--no-progress", is_flag=True, help="no progress bar")
def upgrade_command(src: str, dst: str, workers: int, no_progress: bool) -> None:
    """Rewrite the shards under SRC (a folder, brace pattern or tar) as schema v3 into DST.

    Each FOA channel once at 16 bits (W as w.wav, Y, Z, X as yzx.flac), int8 intensity features:
    about half of a v2 sample. Samples that cannot be read are left out and listed;
    DST's sizes.json counts what was written. Exit status 1 if any was left out.
    """
    report = upgrade_tree(src, dst, workers=workers, progress=not no_progress)
    click.echo(f"{report['shards']} shard(s), {report['samples']} sample(s) written to {dst}; "
               f"{report['upgraded']} upgraded to v{SCHEMA_VERSION}, "
               f"{report['samples'] - report['upgraded']} already v{SCHEMA_VERSION}")
    for s in report["skipped"]:
        click.echo(f"left out: {s['shard']}:{s['key']}, field '{s['field']}': {s['reason']}", err=True)
    if report["skipped"]:
        click.echo(f"{len(report['skipped'])} sample(s) left out", err=True)
        raise SystemExit(1)


# ---------------------------------------------------------------------------------------------
# disse-synth official-rirs, official-grid
# ---------------------------------------------------------------------------------------------

@click.command("official-rirs")
@click.option("--catalogue", "catalogue", required=True, type=click.Path(dir_okay=False),
              help="The release's evaluation/rir_fixed.csv.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Regenerate files that exist.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="First N rows only.")
def official_rirs_command(catalogue, out_dir, force, limit):
    """Regenerate the release's A-format evaluation RIRs from rir_fixed.csv with pyroomacoustics.

    The catalogue (the release's evaluation/rir_fixed.csv) needs the columns rir_path (output file
    name: its base name), dims (room size [x, y, z] in m), alpha (wall absorption), fs (Hz),
    source_distance_m, azimuth_deg, elevation_deg (the source seen from the array at the room
    centre) and source_pos_xyz ([x, y, z] in m, checked against the polar position); other
    columns are ignored. Rows whose file exists in --out are kept unless --force.
    """
    paths = regenerate_catalogue_rirs(catalogue, out_dir, force=force, limit=limit, progress=True)
    click.echo(f"{len(paths)} A-format RIRs in {out_dir} (foa_format: aformat)")

@click.command("official-grid")
@click.option("--audio-catalogue", required=True, type=click.Path(dir_okay=False),
              help="The release's evaluation/audio_fixed.csv.")
@click.option("--rir-catalogue", required=True, type=click.Path(dir_okay=False),
              help="The release's evaluation/rir_fixed.csv.")
@click.option("--dry-root", required=True, type=click.Path(file_okay=False),
              help="Folder of the downloaded AudioCaps test clips ({audiocap_id}.mp3, also in test/ or val/).")
@click.option("--rir-root", type=click.Path(file_okay=False), default=None,
              help="Folder of the A-format RIRs (default: {out}/rirs, regenerated if missing).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=42, show_default=True, help="The release's caption seed.")
@click.option("--shard-size", type=click.IntRange(min=1), default=GRID_SIZE, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--any-size", is_flag=True, help="Accept catalogues other than 96 x 96 (subsets, tests).")
@click.option("--no-progress", is_flag=True)
def official_grid_command(audio_catalogue, rir_catalogue, dry_root, rir_root, out_dir, seed, shard_size,
                          workers, any_size, no_progress):
    """Build the release's 96 x 96 evaluation grid as test shards (official features and captions)."""
    rir_root = Path(rir_root) if rir_root else Path(out_dir) / "rirs"
    regenerate_catalogue_rirs(rir_catalogue, rir_root, progress=not no_progress)  # keeps existing files
    items = plan_grid(audio_catalogue, rir_catalogue, dry_root, rir_root, seed=seed, any_size=any_size)
    summary = build_grid(items, out_dir, seed=seed, shard_size=shard_size, workers=workers,
                         progress=not no_progress)
    click.echo(f"{out_dir}: {summary['samples']} samples ({summary['sources']} sources x "
               f"{summary['spatial']} RIRs) in {summary['shards']} shards; "
               f"evaluate with disse-eval --metrics official (docs/official.md)")


for _command in (rirs_command, render_command, captions_command, demo_command, inspect_command,
                 upgrade_command, official_rirs_command, official_grid_command):
    main.add_command(_command)


if __name__ == "__main__":  # python -m disse.pipeline.cli
    main()
