"""`disse-synth render`: dry clips x FOA RIRs -> deterministic, resumable WebDataset shards.

Pipeline per sample: load the clip (48 kHz mono, 10 s) -> FFT convolution with the 4-channel RIR
(one batched real FFT of the RIR, the clip's spectrum reused across its RIRs) -> crop to 10 s ->
level normalisation (W at a target RMS, peak <= 0.99 full scale) -> intensity features ->
captions -> ``encode_sample``.

Determinism: the plan (splits, pairs, shard contents) depends only on the inputs, options and
seed; each sample draws from its own RNG seeded by (seed, key); tars have fixed metadata and
member order. So shards are byte-identical for any number of workers or jobs.

Resumability: a shard is complete when its tar and its part record (``_parts/{shard}.json``)
both exist and the record's fingerprint matches the plan; complete shards are skipped,
everything else is (re)rendered under a temporary name and renamed when done.

Output layout::

    {out}/{split}/{split}-{000000..}.tar   shards
    {out}/{split}/sizes.json                samples per shard
    {out}/manifest.json                     counts, skipped items and reasons, config
    {out}/_parts/{split}-{000000}.json      per-shard records (what the manifest is built from)
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import sys
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import scipy.fft
from tqdm import tqdm

from disse.pipeline.audio_io import load_clip, load_rir
from disse.pipeline.captions import SpatialWordMatcher, make_captions
from disse.pipeline.features import intensity_features
from disse.pipeline.frontend import MAX_PEAK, TARGET_RMS_DBFS, normalise_level
from disse.pipeline.lock import REFRESH_EVERY_S, RenderLock
from disse.pipeline.rir_checks import AZIMUTH_CONVENTIONS, RirCheck, check_rir, to_ccw
from disse.pipeline.shards import (shard_name, stale_tmp_files, write_json_atomic,
                                   write_tar_atomic)
from disse.pipeline.splits import (SPLITS, assign_group_splits, pair_blocks, per_sample_rng,
                                   sample_key)
from disse.schemas import (CaptionRules, DryClip, FeatureParams, RirRecord, SchemaError, ShardMeta, encode_sample,
                           load_caption_rules, load_feature_params, read_clips_csv, read_rirs_csv)

MANIFEST_VERSION = 1
CAPTION_CONFLICT_POLICIES = ("keep", "skip")
PARTS_DIR = "_parts"


@dataclass(frozen=True)
class RenderOptions:
    """What to render. Everything here except ``max_failure_rate`` is part of the plan fingerprint."""

    seed: int = 0                    # per-sample RNG (phrasings, gains) and pairing order
    split_seed: int = 0              # split assignment only: --seed never moves an item between splits
    room_column: str = "room_index"  # RIR CSV column that names the room (the RIR split group)
    shard_size: int = 256            # samples per shard
    rirs_per_clip: int = 1           # K: each clip rendered in >= K spaces
    clips_per_rir: int = 1           # L: each RIR holds >= L sources
    val_fraction: float = 0.1        # of clips and of RIRs (hash-assigned)
    test_fraction: float = 0.1
    target_rms_dbfs: float = TARGET_RMS_DBFS  # level of W before the peak limit
    max_peak: float = MAX_PEAK                # of full scale, over all 4 channels
    max_failure_rate: float = 0.05   # exit non-zero above this share of failed items
    azimuth_convention: str = "ccw"  # of the RIR CSV's azimuth_deg: ccw (the project's) or cw (negated on read)
    rir_check: bool = True           # check each RIR's first arrival and channel layout at plan time
    rir_tolerance_deg: float = 20.0  # largest first-arrival vs metadata angle a RIR may show
    caption_conflicts: str = "keep"  # source captions with spatial words: keep (flagged) or skip

    def validate(self) -> None:
        if self.shard_size < 1:
            raise SchemaError("must be >= 1", field="shard_size")
        if self.rirs_per_clip < 1 or self.clips_per_rir < 1:
            raise SchemaError("rirs_per_clip and clips_per_rir must be >= 1", field="pairing")
        if not 0 < self.max_peak <= 1:
            raise SchemaError("must be in (0, 1]", field="max_peak")
        if not 0 <= self.max_failure_rate <= 1:
            raise SchemaError("must be in [0, 1]", field="max_failure_rate")
        if self.azimuth_convention not in AZIMUTH_CONVENTIONS:
            raise SchemaError(f"must be one of {AZIMUTH_CONVENTIONS}, got {self.azimuth_convention!r}",
                              field="azimuth_convention")
        if not 0 < self.rir_tolerance_deg <= 180:
            raise SchemaError(f"must be in (0, 180], got {self.rir_tolerance_deg}", field="rir_tolerance_deg")
        if self.caption_conflicts not in CAPTION_CONFLICT_POLICIES:
            raise SchemaError(f"must be one of {CAPTION_CONFLICT_POLICIES}, got {self.caption_conflicts!r}",
                              field="caption_conflicts")

    def plan_dict(self) -> dict:
        d = asdict(self)
        d.pop("max_failure_rate")
        return d


@dataclass(frozen=True)
class SampleSpec:
    key: str
    split: str
    clip: DryClip
    rir: RirRecord


@dataclass(frozen=True)
class ShardTask:
    """One shard: a global index (across splits, in train/val/test order) and its samples."""

    index: int
    split: str
    split_index: int
    samples: tuple[SampleSpec, ...]
    fingerprint: str

    @property
    def name(self) -> str:
        return shard_name(self.split, self.split_index)


@dataclass
class RenderPlan:
    shards: list[ShardTask]
    options: RenderOptions
    params: FeatureParams
    rules: CaptionRules
    fingerprint: str
    inputs: dict = field(default_factory=dict)         # what was read (for the manifest)
    skipped_rows: list[dict] = field(default_factory=list)
    counts: dict = field(default_factory=dict)         # split -> {"clips", "rirs", "samples", "shards"}
    caption_conflicts: dict = field(default_factory=dict)  # source captions with spatial words
    warnings: list[str] = field(default_factory=list)  # said once by the CLI, kept in the manifest

    @property
    def n_samples(self) -> int:
        return sum(len(t.samples) for t in self.shards)


# ---------------------------------------------------------------------------------------------
# Pure DSP
# ---------------------------------------------------------------------------------------------

def fft_size(n_out: int, rir_length: int) -> int:
    """Smallest fast real-FFT size with no circular wrap into the first ``n_out`` output samples."""
    return scipy.fft.next_fast_len(n_out + rir_length - 1, real=True)


def rir_spectrum(rir: np.ndarray, nfft: int) -> np.ndarray:
    """``(4, L)`` -> ``(4, nfft // 2 + 1)`` complex64 (one batched real FFT)."""
    return scipy.fft.rfft(np.asarray(rir, dtype=np.float32), nfft, axis=-1)


def convolve_spectra(dry_spec: np.ndarray, rir_spec: np.ndarray, nfft: int, n_out: int) -> np.ndarray:
    """Linear convolution by spectra product, cropped to the first ``n_out`` samples -> ``(4, n_out)``."""
    return scipy.fft.irfft(rir_spec * dry_spec[None, :], nfft, axis=-1)[:, :n_out]


def convolve_foa(dry: np.ndarray, rir: np.ndarray, n_out: int | None = None) -> np.ndarray:
    """FFT convolution of mono ``(T,)`` with FOA ``(4, L)`` -> float32 ``(4, n_out)`` (default T)."""
    n_out = dry.shape[-1] if n_out is None else n_out
    nfft = fft_size(dry.shape[-1], rir.shape[-1])
    dry_spec = scipy.fft.rfft(np.asarray(dry, dtype=np.float32), nfft)
    return convolve_spectra(dry_spec, rir_spectrum(rir, nfft), nfft, n_out)


# ---------------------------------------------------------------------------------------------
# Renderer (one per worker process; caches are bounded, so memory does not grow with the data)
# ---------------------------------------------------------------------------------------------

class Renderer:
    """Renders :class:`SampleSpec` s. Caches the current clip (audio and spectra) and the last
    ``rir_cache`` RIR spectra (default K = rirs_per_clip, at least 2): pair blocks walk L clips x
    K RIRs, so K entries get all of a block's RIR reuse. Memory per worker is bounded by
    ``rir_cache`` spectra (about 10 MB each for a 2 s RIR) whatever the dataset size."""

    def __init__(self, params: FeatureParams, rules: CaptionRules, options: RenderOptions,
                 rir_cache: int | None = None) -> None:
        self.params, self.rules, self.options = params, rules, options
        self._clip_key: str | None = None
        self._clip: np.ndarray | SchemaError | None = None
        self._clip_spectra: dict[int, np.ndarray] = {}
        self._rirs: OrderedDict[str, tuple[np.ndarray, int] | SchemaError] = OrderedDict()
        self._rir_cache = rir_cache or max(2, options.rirs_per_clip)
        self._spatial_words = SpatialWordMatcher(rules)

    def _dry(self, clip: DryClip) -> np.ndarray:
        key = str(clip.path)
        if key != self._clip_key:
            self._clip_key, self._clip_spectra = key, {}
            try:
                self._clip = load_clip(clip.path, self.params.sample_rate, self.params.clip_samples)
            except SchemaError as err:
                self._clip = err
        if isinstance(self._clip, SchemaError):
            raise self._clip
        return self._clip

    def _dry_spectrum(self, clip: DryClip, nfft: int) -> np.ndarray:
        dry = self._dry(clip)
        if nfft not in self._clip_spectra:
            self._clip_spectra[nfft] = scipy.fft.rfft(dry, nfft)
        return self._clip_spectra[nfft]

    def _rir_spectrum(self, rir: RirRecord) -> tuple[np.ndarray, int]:
        key = rir.rir_id
        if key in self._rirs:
            self._rirs.move_to_end(key)
        else:
            try:
                ir = load_rir(rir.rir_path, rir.foa_format, self.params.sample_rate)
                nfft = fft_size(self.params.clip_samples, ir.shape[-1])
                self._rirs[key] = (rir_spectrum(ir, nfft), nfft)
            except SchemaError as err:
                self._rirs[key] = err
            while len(self._rirs) > self._rir_cache:
                self._rirs.popitem(last=False)
        entry = self._rirs[key]
        if isinstance(entry, SchemaError):
            raise entry
        return entry

    def render(self, spec: SampleSpec) -> tuple[np.ndarray, np.ndarray, ShardMeta]:
        """-> (FOA ``(4, T)`` float32 within +-max_peak, iv ``(6, F, M)`` float32, metadata)."""
        p, o, rir = self.params, self.options, spec.rir
        values = {"azimuth_deg": rir.azimuth_deg, "elevation_deg": rir.elevation_deg,
                  "source_distance_m": rir.source_distance_m, "area_m2": rir.area_m2,
                  "t30_ms": rir.t30_ms}
        descriptors = self.rules.describe(values)
        rir_spec, nfft = self._rir_spectrum(rir)
        foa = convolve_spectra(self._dry_spectrum(spec.clip, nfft), rir_spec, nfft, p.clip_samples)
        foa, gain = normalise_level(foa, o.target_rms_dbfs, o.max_peak)
        iv = intensity_features(foa, p)
        rng = per_sample_rng(o.seed, spec.key)
        caps = make_captions(self.rules, descriptors, spec.clip.caption, rng)
        meta = ShardMeta(
            key=spec.key, split=spec.split, source_id=spec.clip.source_id,
            space_id=self.rules.space_id(descriptors), rir_id=rir.rir_id,
            source_caption=spec.clip.caption, spatial_caption=caps.spatial_caption,
            caption=caps.caption, descriptors=descriptors, features=p.to_dict(),
            render={"seed": o.seed, "split_seed": o.split_seed, "gain": round(gain, 9), "gain_db": round(20 * math.log10(gain), 4),
                    "target_rms_dbfs": o.target_rms_dbfs, "max_peak": o.max_peak,
                    "rules_version": self.rules.version, "phrases": caps.phrases,
                    "source_file": spec.clip.path.name, "rir_file": rir.rir_path.name,
                    "source_spatial_words": self._spatial_words(spec.clip.caption)},
            **values)
        return foa, iv, meta

    def encode(self, spec: SampleSpec) -> dict:
        foa, iv, meta = self.render(spec)
        return encode_sample(foa, iv, meta, self.params.sample_rate)


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------

def _digest(obj: object) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=12).hexdigest()


def _skip_record(err: SchemaError, **extra) -> dict:
    return {"file": err.file, "row": err.row, "field": err.field, "reason": err.reason, **extra}


def _spec_identity(x: SampleSpec) -> list:
    r = x.rir
    return [x.key, x.clip.audiocap_id, x.clip.source_id, x.clip.caption, x.clip.path.name, r.rir_id, r.rir_path.name,
            r.foa_format, r.azimuth_deg, r.elevation_deg, r.source_distance_m, r.area_m2, r.t30_ms]


def rir_group(rir: RirRecord, room_column: str) -> str:
    """The split group of a RIR: its room (``room_column`` of the CSV) or, without that column, the
    RIR itself (documented: a bank without room information cannot be split by room)."""
    if room_column in rir.extra:
        value = str(rir.extra[room_column]).strip()
        if value == "" or value.lower() in ("nan", "none", "null"):
            raise SchemaError(f"empty room for {rir.rir_id!r}", field=room_column)
        return f"room:{value}"
    return f"rir:{rir.rir_id}"


def make_plan(clips: list[DryClip], rirs: list[RirRecord], options: RenderOptions,
              params: FeatureParams, rules: CaptionRules, *,
              clip_splits: dict[str, str] | None = None, rir_splits: dict[str, str] | None = None,
              skipped_rows: list[dict] | None = None, inputs: dict | None = None) -> RenderPlan:
    """Assign splits, pair clips with RIRs per split, cut the samples into shards.

    ``clip_splits`` / ``rir_splits`` (id -> split) override the seeded hash for the ids they name.
    Source captions that already carry spatial words are counted (``plan.caption_conflicts``) and,
    with ``options.caption_conflicts == "skip"``, left out before the splits are assigned (a
    clip's split never depends on the other clips, so this moves no other clip).
    """
    options.validate()
    conflicts = caption_conflicts(clips, rules)
    n_input_clips = len(clips)
    if options.caption_conflicts == "skip":
        clips = [c for c in clips if c.audiocap_id not in conflicts]
        if clip_splits:
            clip_splits = {i: s for i, s in clip_splits.items() if i not in conflicts}
    if not clips:
        raise SchemaError("no usable dry clips" + (f" ({n_input_clips} read, all skipped by "
                          "--caption-conflicts skip)" if n_input_clips else ""), field="clips")
    if not rirs:
        raise SchemaError("no usable RIRs", field="rirs")
    clip_split = assign_group_splits({c.audiocap_id: c.source_id for c in clips}, options.val_fraction,
                                     options.test_fraction, options.split_seed, clip_splits, kind="recording")
    rir_split = assign_group_splits({r.rir_id: rir_group(r, options.room_column) for r in rirs},
                                    options.val_fraction, options.test_fraction, options.split_seed + 1,
                                    rir_splits, kind="room")
    clip_by_id = {c.audiocap_id: c for c in clips}
    rir_by_id = {r.rir_id: r for r in rirs}
    base = {"options": options.plan_dict(), "features": params.to_dict(), "rules_version": rules.version}
    shards: list[ShardTask] = []
    counts: dict = {}
    keys_seen: set[str] = set()
    for split in SPLITS:
        c_ids = [i for i in clip_by_id if clip_split[i] == split]
        r_ids = [i for i in rir_by_id if rir_split[i] == split]
        pairs = pair_blocks(c_ids, r_ids, options.rirs_per_clip, options.clips_per_rir,
                            options.seed, salt=split)
        specs = []
        for c, r in pairs:
            key = sample_key(c, r)
            if key in keys_seen:
                raise SchemaError(f"ids {c!r} and {r!r} give a sample key that is already used "
                                  f"({key!r}); make ids distinct in [A-Za-z0-9_-]", field="__key__")
            keys_seen.add(key)
            specs.append(SampleSpec(key, split, clip_by_id[c], rir_by_id[r]))
        n_shards = math.ceil(len(specs) / options.shard_size)
        for s in range(n_shards):
            chunk = tuple(specs[s * options.shard_size:(s + 1) * options.shard_size])
            # File names, not full paths: the same inputs elsewhere are the same render.
            fp = _digest({**base, "samples": [_spec_identity(x) for x in chunk]})
            shards.append(ShardTask(len(shards), split, s, chunk, fp))
        counts[split] = {"clips": len(c_ids), "rirs": len(r_ids), "samples": len(specs),
                         "shards": n_shards,
                         "recordings": len({clip_by_id[i].source_id for i in c_ids}),
                         "rooms": len({rir_group(rir_by_id[i], options.room_column) for i in r_ids})}
    fingerprint = _digest({**base, "shards": [t.fingerprint for t in shards]})
    flagged_samples = sum(1 for t in shards for x in t.samples if x.clip.audiocap_id in conflicts)
    words: dict[str, int] = {}
    for ws in conflicts.values():
        for w in ws:
            words[w] = words.get(w, 0) + 1
    summary = {"policy": options.caption_conflicts, "clips_flagged": len(conflicts),
               "clips_skipped": len(conflicts) if options.caption_conflicts == "skip" else 0,
               "samples_flagged": flagged_samples,
               "words": dict(sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[:30]),
               "examples": [{"audiocap_id": i, "words": ws} for i, ws in sorted(conflicts.items())[:10]]}
    return RenderPlan(shards, options, params, rules, fingerprint, inputs or {}, skipped_rows or [], counts,
                      caption_conflicts=summary, warnings=pairing_warnings(options, counts))


def caption_conflicts(clips: list[DryClip], rules: CaptionRules) -> dict[str, list[str]]:
    """``audiocap_id -> spatial words`` for the clips whose source caption already says where the
    sound is or what the room does (:class:`~disse.pipeline.captions.SpatialWordMatcher`)."""
    match = SpatialWordMatcher(rules)
    out = {}
    for c in clips:
        words = match(c.caption)
        if words:
            out[c.audiocap_id] = words
    return out


def pairing_warnings(options: RenderOptions, counts: dict) -> list[str]:
    """What a plan leaves undefined, one line each (``plan.warnings``). With one RIR per clip
    (``--rirs-per-clip 1``, or a split holding a single RIR) no two samples share a source in different
    spaces: X-SRC and AX-SRC (which leave the query's own pair out) have no positives, IR_space has no
    same-source pairs, and the source contrastive loss has no positive beyond the sample's own caption.
    Then one line per split too small to measure (:func:`small_split_warning`)."""
    out = []
    undefined = ("X-SRC and AX-SRC (no other sample of the same source), IR_space (no same-source, "
                 "different-space pairs) and the source loss's multi-positives")
    if options.rirs_per_clip < 2:
        out.append(f"--rirs-per-clip {options.rirs_per_clip}: every clip is heard in one space only, which "
                   f"leaves {undefined} undefined; use --rirs-per-clip 2 or more (4 is the README's choice)")
    else:
        thin = [s for s in SPLITS if counts.get(s, {}).get("samples") and counts[s]["rirs"] < 2]
        if thin:
            out.append(f"split(s) {', '.join(thin)} hold a single RIR: their clips are heard in one space "
                       f"only, which leaves {undefined} undefined there; add RIRs (rooms) to those splits")
    return out + [w for s in SPLITS if (w := small_split_warning(s, counts.get(s, {})))]


#: Below these an evaluation split (val, test) is too small to measure a model (docs/synthesis.md,
#: "Small splits"): each recording or room moves a figure by more than a tenth, and a gallery of
#: ``MAX_K`` samples or fewer makes R@10 1 for any model.
MIN_EVAL_RECORDINGS = 10
MIN_EVAL_ROOMS = 10
MAX_K = 10


def small_split_warning(split: str, c: dict) -> str | None:
    """One line saying what a split is too small to measure, or None. Every split: fewer than 2
    recordings (every item is a positive of every query for SRC, X-SRC and AX-SRC; the source loss has
    no negatives) or fewer than 2 rooms (room figures, or the space loss, see a single room); an item
    assigned to a split that gets no sample. val and test also: at most ``MAX_K`` samples, fewer than
    ``MIN_EVAL_RECORDINGS`` recordings or ``MIN_EVAL_ROOMS`` rooms."""
    if not c or not (c.get("clips") or c.get("rirs")):
        return None
    size = (f"{c['clips']} clip{'s' if c['clips'] != 1 else ''} ({c['recordings']} recording"
            f"{'s' if c['recordings'] != 1 else ''}), {c['rirs']} RIR{'s' if c['rirs'] != 1 else ''} "
            f"({c['rooms']} room{'s' if c['rooms'] != 1 else ''}), {c['samples']} sample{'s' if c['samples'] != 1 else ''}")
    if not c["samples"]:
        return (f"small split {split}: {size}: it holds " + ("clips but no RIR" if c["clips"] else "RIRs but no clip")
                + ", so nothing is rendered for it; add the missing inputs to it (a split column or the fractions)")
    evaluation = split != "train"
    why = []
    if c["recordings"] < 2:
        why.append("with under 2 recordings R@K / mAP of SRC, X-SRC and AX-SRC are undefined (every item is a "
                   "positive)" + ("" if evaluation else " and the source loss has no negatives"))
    if c["rooms"] < 2:
        why.append("with one room its room figures (size, reverberation, held-out rooms) describe that room only")
    if evaluation:
        if c["samples"] <= MAX_K:
            why.append(f"with {MAX_K} samples or fewer R@{MAX_K} is 1 for any model")
        few = [f"{n} {what} (under {lo})" for n, what, lo in ((c["recordings"], "recordings", MIN_EVAL_RECORDINGS),
                                                              (c["rooms"], "rooms", MIN_EVAL_ROOMS)) if 2 <= n < lo]
        if few:
            why.append(f"with {' and '.join(few)} each one moves a figure by over a tenth")
    if not why:
        return None
    fix = (f"add clips / rooms or raise --{split}-fraction" if evaluation else "add clips / rooms")
    return f"small split {split}: {size}, too small to measure: " + "; ".join(why) + f"; {fix}"


def select_shards(n_shards: int, shard_range: tuple[int, int | None] | None = None,
                  job: tuple[int, int] | None = None) -> range:
    """Global shard indices this job renders: an explicit ``[A, B)`` range, or the N-th of M
    contiguous, near-equal blocks (``job = (N, M)``, 0-based), or everything."""
    if shard_range is not None and job is not None:
        raise SchemaError("give either a shard range or a job index/count, not both", field="--shard-range")
    if shard_range is not None:
        a, b = shard_range
        b = n_shards if b is None else min(b, n_shards)
        if a < 0 or a > b:
            raise SchemaError(f"bad shard range {a}:{b} for {n_shards} shards", field="--shard-range")
        return range(a, b)
    if job is not None:
        index, count = job
        if count < 1 or not 0 <= index < count:
            raise SchemaError(f"need 0 <= job index < num jobs, got {index} / {count}", field="--job-index")
        return range(index * n_shards // count, (index + 1) * n_shards // count)
    return range(n_shards)


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

def part_path(out_dir: Path, task: ShardTask) -> Path:
    return out_dir / PARTS_DIR / f"{task.name[:-4]}.json"


def shard_path(out_dir: Path, task: ShardTask) -> Path:
    return out_dir / task.split / task.name


def read_part(out_dir: Path, task: ShardTask) -> dict | None:
    """The shard's part record if the shard is complete for this plan, else None."""
    part, tar = part_path(out_dir, task), shard_path(out_dir, task)
    if not (part.is_file() and tar.is_file()):
        return None
    try:
        record = json.loads(part.read_text())
    except (OSError, ValueError):
        return None
    if record.get("fingerprint") != task.fingerprint:
        raise SchemaError(f"holds shard {task.name} of a different render (other inputs, options "
                          f"or seed); render into a fresh --out folder", file=str(out_dir))
    return record


def render_shard(task: ShardTask, out_dir: Path, renderer: Renderer,
                 on_sample: Callable[[], None] | None = None) -> dict:
    """Render one shard to its final name (atomically) and write its part record; returns it."""
    skipped: list[dict] = []
    keys: list[str] = []

    def samples() -> Iterable[dict]:
        for spec in task.samples:
            try:
                sample = renderer.encode(spec)
            except SchemaError as err:
                skipped.append(_skip_record(err, key=spec.key, source_id=spec.clip.audiocap_id,
                                            rir_id=spec.rir.rir_id))
            else:
                keys.append(spec.key)
                yield sample
            if on_sample is not None:
                on_sample()

    # left by a killed run of this same shard: of its tar, or of its part record (killed between the two)
    for stale in stale_tmp_files(shard_path(out_dir, task)) + stale_tmp_files(part_path(out_dir, task)):
        stale.unlink(missing_ok=True)
    n = write_tar_atomic(shard_path(out_dir, task), samples())
    record = {"shard": task.name, "split": task.split, "index": task.index, "samples": n,
              "planned": len(task.samples), "keys": keys, "skipped": skipped,
              "fingerprint": task.fingerprint}
    write_json_atomic(part_path(out_dir, task), record)
    return record


_WORKER: dict = {}


def pool_context() -> mp.context.BaseContext:
    """fork where it is safe and cheap (Linux, torch not loaded in this process: its native thread
    pools do not survive a fork); spawn otherwise (workers re-import numpy / scipy, ~1-3 s)."""
    if (sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()
            and "torch" not in sys.modules):
        return mp.get_context("fork")
    return mp.get_context("spawn")


def _init_worker(params: FeatureParams, rules: CaptionRules, options: RenderOptions) -> None:
    try:  # one BLAS thread per process: workers, not threads, use the cores
        from threadpoolctl import threadpool_limits  # local: optional, undeclared (scikit-learn brings it)
        threadpool_limits(1)
    except ImportError:
        pass
    _WORKER["renderer"] = Renderer(params, rules, options)


def _worker_task(args: tuple[ShardTask, str]) -> dict:
    task, out_dir = args
    return render_shard(task, Path(out_dir), _WORKER["renderer"])


def run_plan(plan: RenderPlan, out_dir: str | Path, *, workers: int = 1,
             shard_range: tuple[int, int | None] | None = None, job: tuple[int, int] | None = None,
             progress: bool = True, lock: bool = True, on_note: Callable[[str], None] | None = None) -> dict:
    """Render this job's shards that are not complete yet, then write sizes.json and the
    manifest from every complete shard on disk. Returns the manifest.

    With ``lock`` (default) the job's shard range is locked for the run
    (:class:`~disse.pipeline.lock.RenderLock`): a live render writing overlapping shards into
    ``out_dir`` makes this one raise :class:`~disse.pipeline.lock.LockHeld` before anything is
    written; a stale lock is taken over, and ``on_note`` (default: print to stderr) is told so."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    selected = select_shards(len(plan.shards), shard_range, job)
    guard = (RenderLock(out, shards=None if job is None and shard_range is None else (selected.start, selected.stop),
                        job=job, shard_range=shard_range) if lock else None)
    if guard is not None:
        guard.acquire()
        if guard.note:
            (on_note or (lambda s: print(f"note: {s}", file=sys.stderr, flush=True)))(guard.note)
    try:
        chosen = [plan.shards[i] for i in selected]
        todo = [t for t in chosen if read_part(out, t) is None]
        bar = tqdm(total=sum(len(t.samples) for t in todo), unit="sample", desc="render",
                   disable=not progress, dynamic_ncols=True)
        alive = guard.refresh if guard is not None else (lambda force=False: None)
        if workers <= 1 or len(todo) <= 1:
            _init_worker(plan.params, plan.rules, plan.options)
            for task in todo:
                render_shard(task, out, _WORKER["renderer"], on_sample=lambda: (bar.update(), alive()))
        else:
            ctx = pool_context()
            with ctx.Pool(min(workers, len(todo)), initializer=_init_worker,
                          initargs=(plan.params, plan.rules, plan.options), maxtasksperchild=None) as pool:
                results = pool.imap_unordered(_worker_task, [(t, str(out)) for t in todo])
                for _ in range(len(todo)):
                    while True:  # wake up now and then to keep the lock fresh while shards render
                        try:
                            record = results.next(timeout=REFRESH_EVERY_S)
                            break
                        except mp.TimeoutError:
                            alive(force=True)
                    bar.update(record["planned"])
                    alive()
                pool.close()  # let workers exit cleanly (terminate() would leak their semaphores)
                pool.join()
        bar.close()
        return write_summary(plan, out)
    finally:
        if guard is not None:
            guard.release()


def write_summary(plan: RenderPlan, out: Path) -> dict:
    """(Re)write ``{split}/sizes.json`` and ``manifest.json`` from the complete shards on disk.

    The manifest holds no times, hosts or worker counts, so it is identical whichever way the
    shards were rendered."""
    records, missing = [], []
    for task in plan.shards:
        rec = read_part(out, task)
        (records.append(rec) if rec is not None else missing.append(f"{task.split}/{task.name}"))
    sizes: dict[str, dict[str, int]] = {s: {} for s in SPLITS if plan.counts.get(s, {}).get("shards")}
    for rec in records:
        sizes[rec["split"]][rec["shard"]] = rec["samples"]
    for split, table in sizes.items():
        write_json_atomic(out / split / "sizes.json", table)
    done = {r["shard"] for r in records}
    done_specs = [x for t in plan.shards if t.name in done for x in t.samples]
    rir_files = {x.rir.rir_id: str(x.rir.rir_path) for x in done_specs}
    # each failed sample is blamed on the input that failed: its RIR when the error names the RIR's
    # file, else its clip (a missing, corrupt or silent clip, or a silent mixture)
    skipped = [dict(s, split=r["split"], shard=r["shard"],
                    input="rir" if s.get("file") is not None and s["file"] == rir_files.get(s.get("rir_id"))
                    else "clip")
               for r in records for s in r["skipped"]]
    failed_clips = {s["source_id"] for s in skipped if s["input"] == "clip"}
    failed_rirs = {s["rir_id"] for s in skipped if s["input"] == "rir"}
    n_clips = len({x.clip.audiocap_id for x in done_specs})
    # bytes on disk per split (tars are byte-identical however rendered, so this is reproducible too)
    split_bytes = {s: sum((out / s / r["shard"]).stat().st_size for r in records if r["split"] == s)
                   for s in SPLITS}
    planned_done = sum(r["planned"] for r in records)
    rendered = sum(r["samples"] for r in records)
    n_rows = plan.inputs.get("rows", 0)
    row_rate = len(plan.skipped_rows) / n_rows if n_rows else 0.0
    # Failure rates count inputs, not samples, so they do not depend on --rirs-per-clip / --clips-per-rir:
    # clips that failed over the clips of the complete shards; RIRs unusable (bad CSV rows, failed
    # checks, unreadable at render time) over the RIR CSV's rows, so a bad bank is not hidden by a
    # long clip list; bad CSV rows over all rows.
    n_rir_rows = plan.inputs.get("rir_rows", 0)
    n_bad_rirs = plan.inputs.get("rir_failures", 0) + len(failed_rirs)
    rir_rate = n_bad_rirs / n_rir_rows if n_rir_rows else 0.0
    clip_rate = len(failed_clips) / n_clips if n_clips else 0.0
    sample_rate = len(skipped) / planned_done if planned_done else 0.0
    reasons: dict[str, int] = {}
    for s in skipped + plan.skipped_rows:
        reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "complete": not missing,
        "fingerprint": plan.fingerprint,
        "inputs": plan.inputs,
        "options": plan.options.plan_dict(),
        "features": plan.params.to_dict(),
        "rules_version": plan.rules.version,
        "splits": {s: dict(plan.counts.get(s, {}),
                           rendered=(n := sum(r["samples"] for r in records if r["split"] == s)),
                           skipped=sum(len(r["skipped"]) for r in records if r["split"] == s),
                           bytes=split_bytes[s], bytes_per_sample=round(split_bytes[s] / n) if n else None)
                   for s in SPLITS},
        "planned_samples": plan.n_samples,
        "rendered_samples": rendered,
        "bytes_per_sample": round(sum(split_bytes.values()) / rendered) if rendered else None,
        "skipped_samples": len(skipped),
        "skipped_rows": plan.skipped_rows,
        "skipped": skipped,
        "skip_reasons": dict(sorted(reasons.items())),
        "failure_rate": round(max(row_rate, clip_rate, rir_rate), 6),
        "rir_failure_rate": round(rir_rate, 6),
        "clip_failure_rate": round(clip_rate, 6),
        "sample_failure_rate": round(sample_rate, 6),
        "failures": {  # what failure_rate is the largest of: failed / counted, per kind of input
            "clips": {"failed": len(failed_clips), "of": n_clips, "rate": round(clip_rate, 6)},
            "rirs": {"failed": n_bad_rirs, "of": n_rir_rows, "rate": round(rir_rate, 6)},
            "rows": {"failed": len(plan.skipped_rows), "of": n_rows, "rate": round(row_rate, 6)},
        },
        "caption_conflicts": plan.caption_conflicts,
        "warnings": plan.warnings,
        "max_failure_rate": plan.options.max_failure_rate,
        "missing_shards": missing,
    }
    write_json_atomic(out / "manifest.json", manifest)
    return manifest


def worst_failure(manifest: dict) -> str:
    """The largest of the manifest's failure rates in words, e.g. ``25.0% of clips (2 of 8 clips failed)``."""
    words = {"clips": "clips failed", "rirs": "RIRs unusable", "rows": "CSV rows bad"}
    kind, f = max(manifest["failures"].items(), key=lambda kv: kv[1]["rate"])
    return f"{f['rate']:.1%} of {'RIRs' if kind == 'rirs' else kind} ({f['failed']} of {f['of']} {words[kind]})"


def skip_report(manifest: dict, examples: int = 3) -> list[str]:
    """One line per reason a render skipped something: the reason, how many clips / RIRs / rows and
    samples it cost, and the first ``examples`` files (in manifest order)."""
    groups: dict[tuple[str, str], dict] = {}
    for s in manifest["skipped"]:
        kind = s.get("input", "clip")
        g = groups.setdefault((kind, s["reason"]), {"items": set(), "samples": 0, "files": []})
        g["items"].add(s.get("source_id") if kind == "clip" else s.get("rir_id"))
        g["samples"] += 1
        if s.get("file") and s["file"] not in g["files"]:
            g["files"].append(s["file"])
    for s in manifest["skipped_rows"]:
        g = groups.setdefault(("row", s["reason"]), {"items": set(), "samples": 0, "files": []})
        g["items"].add((s.get("file"), s.get("row"), s.get("rir_id")))
        where = f"{s['file']} row {s['row']}" if s.get("row") is not None else s.get("file")
        if where and where not in g["files"]:
            g["files"].append(where)
    lines = []
    for (kind, reason), g in sorted(groups.items(), key=lambda kv: (-len(kv[1]["items"]), kv[0])):
        n = len(g["items"])
        what = {"clip": "clip", "rir": "RIR", "row": "row"}[kind] + ("s" if n != 1 else "")
        cost = f" ({g['samples']} sample{'s' if g['samples'] != 1 else ''})" if kind != "row" else ""
        shown = g["files"][:examples]
        more = f" and {len(g['files']) - len(shown)} more" if len(g["files"]) > len(shown) else ""
        lines.append(f"{n} {what}{cost}: {reason}" + (f": {', '.join(shown)}{more}" if shown else ""))
    return lines


# ---------------------------------------------------------------------------------------------
# From files (the CLI's entry point)
# ---------------------------------------------------------------------------------------------

def _split_column(csv_path: Path, id_col: str, ids: Iterable[str]) -> dict[str, str] | None:
    """An optional ``split`` column of a CSV as id -> split (None when the column is absent)."""
    df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    if "split" not in df.columns:
        return None
    wanted = set(ids)
    out = {}
    for i, row in enumerate(df.itertuples(index=False), start=1):
        rid, split = str(getattr(row, id_col)).strip(), str(row.split).strip()
        if rid in wanted:
            if split not in SPLITS:
                raise SchemaError(f"must be one of {SPLITS}, got {split!r}", file=str(csv_path),
                                  row=i, field="split")
            out[rid] = split
    return out


def check_rirs(rirs: list[RirRecord], options: RenderOptions, sample_rate: int, *,
               workers: int = 1) -> tuple[list[RirRecord], list[dict]]:
    """Run :func:`~disse.pipeline.rir_checks.check_rir` on every RIR as the renderer will read it.

    Returns (the RIRs that pass, one skip record per RIR that does not: file, field
    ``rir_check``, reason, rir_id, kind and the measured direction). A RIR that cannot be read is
    kept: the renderer reports it per sample, with the reader's own reason.
    """
    if not options.rir_check or not rirs:
        return list(rirs), []
    jobs = [(r.rir_path, r.foa_format, r.azimuth_deg, r.elevation_deg, sample_rate,
             options.rir_tolerance_deg) for r in rirs]
    if workers > 1 and len(jobs) > 1:
        with pool_context().Pool(min(workers, len(jobs))) as pool:
            results = pool.map(_check_one, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
    else:
        results = [_check_one(j) for j in jobs]
    kept, rejected = [], []
    for rir, res in zip(rirs, results):
        if res is None or res.ok:
            kept.append(rir)
        else:
            d = res.to_dict()
            rejected.append({"file": str(rir.rir_path), "row": None, "field": "rir_check",
                             "reason": res.reason, "rir_id": rir.rir_id, "kind": res.kind,
                             "measured_azimuth_deg": d["azimuth_deg"], "measured_elevation_deg": d["elevation_deg"],
                             "error_deg": d["error_deg"], "rho": d["rho"]})
    return kept, rejected


class RirCheckFailed(SchemaError):
    """More RIRs fail :func:`check_rirs` than ``max_failure_rate`` allows: nothing is rendered.
    ``rejected`` holds one record per failing RIR (as in the manifest's ``skipped_rows``)."""

    def __init__(self, rejected: list[dict], checked: int, max_rate: float, file: str) -> None:
        kinds = Counter(r["kind"] for r in rejected)
        self.rejected, self.checked = rejected, checked
        super().__init__(
            f"{len(rejected)} of {checked} RIRs fail the sanity check ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}; "
            f"{len(rejected) / checked:.1%} > max failure rate {max_rate:.1%}); e.g. {rejected[0]['file']}: "
            f"{rejected[0]['reason']}", file=file, field="rir_check")


def _check_one(job: tuple) -> RirCheck | None:
    path, fmt, az, el, sr, tol = job
    try:
        ir = load_rir(path, fmt, sr)
    except SchemaError:
        return None
    return check_rir(ir, sr, az, el, fmt, tol)


def plan_from_files(clips_csv: str | Path, rirs_csv: str | Path, options: RenderOptions, *,
                    audio_dir: str | Path | None = None, params: FeatureParams | None = None,
                    rules: CaptionRules | None = None, workers: int = 1) -> RenderPlan:
    """Read both CSVs (bad rows are counted, not fatal), check the RIRs, and make the plan.

    An optional ``split`` column in either CSV fixes that item's split; a RIR CSV's split column
    is matched by ``rir_id``. Azimuths are turned into the project's counter-clockwise convention
    (``options.azimuth_convention``); then each RIR's first arrival and channel layout is checked
    against its metadata (``options.rir_check``, :func:`check_rirs`): a RIR that fails is left out
    and listed in ``skipped_rows`` with its reason. ``workers`` parallelises the check.
    """
    params = params or load_feature_params()
    rules = rules or load_caption_rules()
    bad_clips: list[SchemaError] = []
    bad_rirs: list[SchemaError] = []
    clips = read_clips_csv(clips_csv, audio_dir, skipped=bad_clips)
    rirs = read_rirs_csv(rirs_csv, skipped=bad_rirs)
    options.validate()
    if options.azimuth_convention != "ccw":
        rirs = [replace(r, azimuth_deg=to_ccw(r.azimuth_deg, options.azimuth_convention)) for r in rirs]
    n_rir_rows = len(rirs) + len(bad_rirs)
    n_checked = len(rirs)
    rirs, rejected = check_rirs(rirs, options, params.sample_rate, workers=workers)
    if rejected and len(rejected) / n_checked > options.max_failure_rate:
        raise RirCheckFailed(rejected, n_checked, options.max_failure_rate, str(rirs_csv))
    clip_splits = _split_column(Path(clips_csv), "audiocap_id", (c.audiocap_id for c in clips))
    rir_splits = {r.rir_id: r.extra["split"].strip() for r in rirs if str(r.extra.get("split", "")).strip()}
    for rid, s in rir_splits.items():
        if s not in SPLITS:
            raise SchemaError(f"split must be one of {SPLITS}, got {s!r} for {rid!r}",
                              file=str(rirs_csv), field="split")
    skipped_rows = [_skip_record(e) for e in bad_clips + bad_rirs] + rejected
    has_rooms = bool(rirs) and all(options.room_column in r.extra for r in rirs)
    if rirs and not has_rooms and any(options.room_column in r.extra for r in rirs):
        raise SchemaError("column missing", file=str(rirs_csv), field=options.room_column)
    for r in rirs:
        try:
            rir_group(r, options.room_column)
        except SchemaError as err:
            raise SchemaError(err.reason, file=str(rirs_csv), field=options.room_column) from None
    inputs = {"clips_csv": str(clips_csv), "rirs_csv": str(rirs_csv),
              "audio_dir": None if audio_dir is None else str(audio_dir),
              "clips": len(clips), "rirs": len(rirs),
              "rows": len(clips) + len(rirs) + len(skipped_rows),
              "rir_rows": n_rir_rows, "rir_failures": len(bad_rirs) + len(rejected),
              "azimuth_convention": options.azimuth_convention,
              "rir_check": ({"tolerance_deg": options.rir_tolerance_deg, "checked": len(rirs) + len(rejected),
                             "rejected": len(rejected),
                             "by_kind": dict(sorted(Counter(r["kind"] for r in rejected).items()))}
                            if options.rir_check else "disabled (--no-rir-check)"),
              "rir_split_groups": f"room ({options.room_column})" if has_rooms else "rir (no room column)"}
    return make_plan(clips, rirs, options, params, rules, clip_splits=clip_splits or None,
                     rir_splits=rir_splits or None, skipped_rows=skipped_rows, inputs=inputs)


def parse_shard_range(text: str | None) -> tuple[int, int | None] | None:
    """``"A:B"`` (B exclusive), ``"A:"`` (to the end) or ``"A"`` (one shard) -> (A, B | None)."""
    if text is None:
        return None
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            return int(a or 0), (int(b) if b else None)
        return int(text), int(text) + 1
    except ValueError:
        raise SchemaError(f"expected A:B with integers, got {text!r}", field="--shard-range") from None
