"""Streaming WebDataset pipeline: shards -> shuffled, decoded batches (docs/internals.md, "Batch").

Design (why it looks like this):

* **Slots.** Every DataLoader worker of every rank is a *slot* ``k = rank * W + worker`` of
  ``K = world * W``. In pass ``p`` over the data the shard list is permuted with a seed derived
  from ``(seed, p)``; slot ``k`` then reads the whole shards ``perm[k*q:(k+1)*q]`` (``q = n // K``)
  plus every ``K``-th sample (offset ``k``) of the ``n % K`` left-over shards. Every sample is
  read by exactly one slot per pass, and a dataset with fewer shards than slots still feeds
  every slot (no idle worker, no rank that runs dry).
* **Infinite per-slot streams.** A slot goes on to pass ``p + 1`` when its part of pass ``p`` ends,
  so every rank yields batches forever; the trainer takes a fixed number of steps per epoch
  (computed from ``sizes.json``). No rank can run out of data before another one, which is what
  makes WebDataset/DDP jobs hang at the end of an epoch.
* **Exact, cheap mid-epoch resume.** Each batch carries the position ``(pass, index)`` of its
  slot *before decoding* (index counts samples leaving the shuffle buffer). Resuming replays
  the slot's current pass through the (seeded) shuffle buffer without decoding and skips to that
  index; DataLoader workers are rotated so the round-robin order of batches continues where it
  stopped. Batches after a resume are bit-identical to those of an uninterrupted run.
* **Decode after the shuffle.** The buffer holds raw bytes; only samples that leave it are
  decoded. Only W is used: schema v2-v4 samples carry it as ``w.wav`` (16-bit PCM, ~0.2 ms to
  decode) and their other channels (``foa.flac`` / ``yzx.flac``) are dropped before the buffer; v1
  samples decode it from the 4-channel ``foa.flac`` (~33 ms).
* **int8 features stay int8.** v4's ``iv.npz`` and v3's ``iv.npy`` hold q = round(127 x); batches
  carry q as int8 and the model divides by 127 (``physics.iv_to_float``), so the features
  cross the workers' shared memory and the host-to-GPU copy at one byte a value. A batch that
  mixes them with float16 features (v1, v2 shards) is float16, de-quantised exactly as before.
* **Feature presets.** Training and ``eval_loader`` read this project's mel features (a block of another
  preset is refused, as before). ``eval_loader(..., preset="official")`` reads the release's features
  (float16 ``(6, 201, 1601)``) for the released model, with ``w_scale`` per sample: the release's
  ``omni_48k`` is the stored W x ``w_scale`` (1 / ``render.gain`` on the official grid; docs/official.md).
* **Bad data.** A shard that cannot be opened or read, or a sample that cannot be decoded, is
  skipped and counted; messages are logged at a bounded rate (no sleep). The counters travel
  with each batch to the trainer.
"""
from __future__ import annotations

import collections
import ctypes
import difflib
import json
import logging
import os
import random
import re
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import braceexpand
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info
from webdataset.gopen import gopen, gopen_schemes

from disse.schemas import CaptionRules, SchemaError, load_caption_rules, stable_id_int
from disse.schemas.captions import rule_set_of_version
from disse.schemas.features import FeatureParams, OfficialFeatureParams, feature_params_from_dict
from disse.schemas.shard import (W_MEMBER, ShardMeta, decode_foa_sample, decode_iv, decode_meta, decode_w,
                                 group_tar_members, iv_member)
from disse.trainer.data.augment import check_rules, drop_source_clause, rotate_sample
from disse.trainer.model.physics import direction_from_angles, iv_to_float

log = logging.getLogger("disse.data")

TARGET_KEYS = ("azimuth_deg", "elevation_deg", "distance_m", "area_m2", "t30_ms")


@dataclass
class DataConfig:
    """Where the shards are and how they are batched."""

    train: str = ""               # brace pattern ('d/train-{000000..000009}.tar') or a directory
    val: str = ""                 # fixed validation shards (same forms); '' = no validation
    batch_size: int = 8           # samples per rank per micro-batch
    num_workers: int = 2          # DataLoader workers per rank (0 = decode in the main process)
    shuffle_buffer: int = 256     # samples held (undecoded) in the shuffle buffer per worker
    seed: int = 0                 # shard order and shuffle buffer seed
    prefetch_factor: int = 2      # batches prefetched per worker
    val_batch_size: int = 16
    val_num_workers: int = 1
    # turn every training sample by a random angle about the vertical axis (exact on FOA: iv's x/y
    # rotate, the azimuth shifts, captions are rebuilt; trainer/data/augment.py)
    rotate_azimuth: bool = False
    caption_rules: str = ""       # rule table for the rebuilt captions ('' = the packaged v1 table)
    # probability that the text *space* head reads a sample's spatial caption alone instead of the
    # full caption (the source clause dropped; the source head always reads the full caption). With
    # full captions only, the space pair can be won by matching source words to source-dependent
    # audio cues, and the space head never sees a sentence without a source, which is what
    # zero-shot prompts are (docs/spatial.md). Only with model.text_input: full.
    space_caption_drop: float = 0.0
    # times a remote shard (URL or pipe: command) whose stream breaks part-way is opened again (the samples
    # already read are skipped, so the order is the same) before it is skipped and counted as a bad shard
    shard_retries: int = 2


# --------------------------------------------------------------------------- shard lists

@dataclass
class ShardList:
    """Shard paths (sorted as given) and their sample counts from ``sizes.json``."""

    urls: list[str]
    sizes: list[int]

    @property
    def total(self) -> int:
        return int(sum(self.sizes))


def _read_sizes(directory: Path) -> dict[str, int]:
    path = directory / "sizes.json"
    if not path.is_file():
        raise SchemaError("sizes.json not found next to the shards (disse-synth writes it)", file=str(path))
    try:
        text = path.read_text()
    except OSError as exc:
        raise SchemaError(f"cannot read ({exc})", file=str(path)) from None
    return _parse_sizes(text, str(path))


def _parse_sizes(text: str, where: str) -> dict[str, int]:
    try:
        data = json.loads(text)
    except Exception as exc:
        raise SchemaError(f"cannot read JSON ({exc})", file=where) from None
    if isinstance(data, dict) and isinstance(data.get("shards"), dict):
        data = data["shards"]
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        raise SchemaError("expected a mapping shard file name -> number of samples", file=where)
    return {Path(k).name: int(v) for k, v in data.items()}


# --------------------------------------------------------------------------- remote shards (URLs, pipe:)

def is_remote(url: str) -> bool:
    """True for a shard that webdataset's ``gopen`` opens as a stream: an ``http(s)://`` (or other
    ``gopen_schemes``) URL or a ``pipe:COMMAND``; False for a local path (``file:`` URLs included)."""
    scheme = urlparse(str(url)).scheme
    return len(scheme) > 1 and scheme != "file"


# the shard's file name inside a URL or a pipe command: the last '<name>.tar' word
_TAR_NAME = re.compile(r"[^\s/'\"=:]+\.tar(?=$|[\s'\"?#;|&)])")


def _tar_name(url: str) -> re.Match:
    found = list(_TAR_NAME.finditer(url))
    if not found:
        raise SchemaError("cannot tell which shard this reads: a remote shard's URL or pipe command must "
                          "name its '<name>.tar' file (sizes.json lists the shards by file name)", file=url)
    return found[-1]


def remote_name(url: str) -> str:
    """The shard file name (``train-000003.tar``) a remote shard's URL or ``pipe:`` command names, by which
    ``sizes.json`` lists it. Raises :class:`SchemaError` when it names no ``.tar`` file."""
    return _tar_name(url).group(0)


def sizes_url(url: str) -> str:
    """Where a remote shard's ``sizes.json`` is: the same URL or command with the shard's file name replaced
    (``http://h/train/train-000003.tar`` -> ``http://h/train/sizes.json``, ``pipe:aws s3 cp
    s3://b/train/train-000003.tar -`` -> ``pipe:aws s3 cp s3://b/train/sizes.json -``)."""
    m = _tar_name(url)
    return url[:m.start()] + "sizes.json" + url[m.end():]


# curl's exit statuses (webdataset opens http(s) URLs with curl) that say what went wrong
_CURL_STATUS = {6: "host not found", 7: "could not connect", 18: "the transfer broke off part-way",
                22: "the server answered with an HTTP error (404: no such file)", 28: "timed out",
                35: "TLS handshake failed", 56: "the connection broke off"}


def _reason(exc: BaseException) -> str:
    """A one-line reason for a failure to open or read a shard stream (a ``Pipe`` error says only
    ``(args): exit N``)."""
    m = re.search(r"exit (\d+) \(read\)", str(exc))
    if m:
        status = int(m.group(1))
        hint = _CURL_STATUS.get(status, "") if "curl" in str(exc) else ""
        return f"command exited with status {status}" + (f": {hint}" if hint else "")
    return f"{type(exc).__name__}: {exc}"


def read_url(url: str, *, what: str = "") -> bytes:
    """All bytes of a small remote file (a ``sizes.json``) through ``webdataset.gopen``; one
    :class:`SchemaError` naming the URL (and the config field ``what``) when it cannot be read."""
    try:
        stream = gopen(url, "rb")
        try:
            data = stream.read()
        finally:
            stream.close()  # a pipe's close() raises when its command failed
    except (OSError, ValueError) as exc:
        raise SchemaError(f"cannot read ({_reason(exc)})", file=url, field=what or None) from None
    return data


def _check_scheme(url: str, what: str) -> None:
    scheme = urlparse(url).scheme
    if scheme not in gopen_schemes:
        raise SchemaError(f"no way to open {scheme}: URLs (webdataset.gopen knows "
                          f"{', '.join(sorted(k + ':' for k in gopen_schemes if k != '__default__'))}; "
                          f"pipe:COMMAND runs any command that writes the shard to stdout)", file=url, field=what)


def _remote_sizes(urls: list[str], what: str) -> list[int]:
    """Samples per remote shard from the ``sizes.json`` beside each (one read per folder)."""
    cache: dict[str, dict[str, int]] = {}
    sizes = []
    for u in urls:
        _check_scheme(u, what)
        where = sizes_url(u)
        if where not in cache:
            cache[where] = _parse_sizes(read_url(where, what=what).decode("utf-8", "replace"), where)
        name = remote_name(u)
        if name not in cache[where]:
            raise SchemaError(f"no entry for {name}", file=where, field=what)
        sizes.append(cache[where][name])
    return sizes


# which split folder each place that names shards most likely means (a folder of split folders)
_SPLIT_HINTS = {"data.train": ("train",), "data.val": ("val", "valid", "validation"),
                "--shards": ("test", "val", "valid", "validation"), "shards": ("test", "val")}


def _shard_folders(directory: Path, depth: int = 2) -> list[Path]:
    """Folders below ``directory`` (``depth`` levels at most) that hold ``*.tar`` shards, nearest first."""
    found: list[Path] = []
    level = [directory]
    for _ in range(depth):
        level = sorted(x for d in level for x in d.iterdir() if x.is_dir() and not x.name.startswith("."))
        found += [x for x in level if any(x.glob("*.tar"))]
        if found:
            break
    return found


def _suggest(what: str, candidates: list[Path], missing: str | None = None) -> str:
    """``"; did you mean data.train=shards/train? (...)"`` for ``candidates`` (the likeliest split first)."""
    if not candidates:
        return ""
    prefer = _SPLIT_HINTS.get(what, ())
    ranked = sorted(candidates, key=lambda x: (prefer.index(x.name) if x.name in prefer else len(prefer), str(x)))
    best = str(ranked[0])
    usage = f"{what}={best}" if "." in what and not what.startswith("-") else \
        f"{what} {best}" if what.startswith("-") else best
    others = f" (folders with shards: {', '.join(str(x) for x in ranked)})" if len(ranked) > 1 else ""
    return f"; did you mean {usage}?{others}"


def resolve_shards(spec: str | os.PathLike | list[str], *, what: str = "data.train") -> ShardList:
    """Expand a brace pattern, a directory (all ``*.tar`` in it) or a list of either.

    Remote shards: a brace pattern of URLs (``http(s)://``, or any scheme of ``webdataset.gopen_schemes``) or
    of ``pipe:COMMAND`` entries (a command writing the shard to stdout: ``pipe:aws s3 cp s3://b/train-{0..9}.tar
    -``). Their sample counts come from the ``sizes.json`` beside them (:func:`sizes_url`), read through
    ``gopen`` too; one that cannot be read is a :class:`SchemaError` naming its URL or command.

    Missing files or sizes are a :class:`SchemaError` naming ``what`` (the config field). A folder that
    holds split folders (``shards/`` with ``train/ val/ test/``) but no shards itself, or a folder that
    does not exist beside ones that hold shards, is an error suggesting the folder meant.
    """
    specs = [str(spec)] if isinstance(spec, (str, os.PathLike)) else [str(s) for s in spec]
    if not specs or not all(specs):
        raise SchemaError("no shards given", field=what)
    urls: list[str] = []
    for s in specs:
        p = Path(s)
        if is_remote(s):  # URLs and pipe: commands: brace patterns, as WebDataset expands them
            urls.extend(braceexpand.braceexpand(s))
            continue
        if s.startswith("file:"):
            s = urlparse(s).path
            p = Path(s)
        if p.is_dir():
            found = sorted(str(x) for x in p.glob("*.tar"))
            if not found:
                raise SchemaError(f"directory holds no .tar shards{_suggest(what, _shard_folders(p))}",
                                  file=str(p), field=what)
            urls.extend(found)
        elif "{" not in s and p.suffix != ".tar" and not p.exists():
            # meant as a folder: a misspelt one, beside folders that do hold shards?
            near = _shard_folders(p.parent, depth=1) if p.parent.is_dir() else []
            close = difflib.get_close_matches(p.name, [x.name for x in near], n=3, cutoff=0.6)
            raise SchemaError(f"folder not found{_suggest(what, [p.parent / c for c in close])}",
                              file=str(p), field=what)
        else:
            urls.extend(braceexpand.braceexpand(s))
    missing = [u for u in urls if not is_remote(u) and not Path(u).is_file()]
    if missing:
        raise SchemaError(f"{len(missing)} shard(s) not found, e.g. {missing[0]}", field=what)
    remote = [u for u in urls if is_remote(u)]
    remote_sizes = dict(zip(remote, _remote_sizes(remote, what)))
    cache: dict[Path, dict[str, int]] = {}
    sizes = []
    for u in urls:
        if u in remote_sizes:
            sizes.append(remote_sizes[u])
            continue
        d = Path(u).parent
        if d not in cache:
            cache[d] = _read_sizes(d)
        name = Path(u).name
        if name not in cache[d]:
            raise SchemaError(f"no entry for {name}", file=str(d / "sizes.json"), field=what)
        sizes.append(cache[d][name])
    return ShardList(urls, sizes)


def slot_plan(n_shards: int, n_slots: int, slot: int, seed: int, pass_: int) -> list[tuple[int, int, int]]:
    """Which samples slot ``slot`` of ``n_slots`` reads in pass ``pass_``.

    Returns ``(shard index, stride, offset)`` triples: read samples ``j`` of that shard with
    ``j % stride == offset``. Over all slots every sample appears exactly once.
    """
    perm = np.random.default_rng([seed, pass_, 0x5EED]).permutation(n_shards).tolist()
    q = n_shards // n_slots
    own = [(i, 1, 0) for i in perm[slot * q:(slot + 1) * q]]
    shared = [(i, n_slots, slot) for i in perm[q * n_slots:]]
    return own + shared


def slot_pass_size(shards: ShardList, n_slots: int, slot: int, seed: int, pass_: int) -> int:
    """Samples (by sizes.json) that ``slot`` reads in ``pass_``."""
    total = 0
    for i, stride, offset in slot_plan(len(shards.urls), n_slots, slot, seed, pass_):
        total += len(range(offset, shards.sizes[i], stride))
    return total


# --------------------------------------------------------------------------- error accounting

class ErrorLog:
    """Counts skipped shards / samples and logs them at a bounded rate (never sleeps)."""

    def __init__(self, first: int = 5, interval_s: float = 30.0) -> None:
        self.counts = {"bad_shards": 0, "bad_samples": 0}
        self.first, self.interval_s = first, interval_s
        self._logged, self._last = 0, 0.0

    def add(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        now = time.monotonic()
        if self._logged < self.first or now - self._last >= self.interval_s:
            self._logged += 1
            self._last = now
            log.warning("skipped %s: %s (so far: %s)", kind.replace("_", " ")[:-1], message, self.counts)


# --------------------------------------------------------------------------- decoding

FEATURE_PRESETS = ("project", "official")
# what a decoded sample holds: a feature preset's features (FEATURE_PRESETS), or "foa": the 4-channel FOA and no
# features, which the official model's trainer turns into the release's inputs on its device (any shard)
INPUTS = FEATURE_PRESETS + ("foa",)
OFFICIAL_RATE = 48000  # the release's front end reads 48 kHz FOA


def decode_raw(sample: dict, *, with_audio: bool = True, preset: str = "project") -> dict:
    """One raw webdataset sample (bytes per member) -> a decoded sample dict (see :func:`collate`).

    ``preset`` is the feature preset the model reads: ``"project"`` (the trainer's DELSA; a block of
    another preset is refused) or ``"official"`` (the release's model, :func:`_decode_official`).
    """
    if preset == "official":
        return _decode_official(sample, with_audio=with_audio)
    if preset == "foa":
        return _decode_foa(sample)
    if preset != "project":
        raise ValueError(f"preset must be one of {INPUTS}, got {preset!r}")
    where, meta, member = _sample_meta(sample)
    params = FeatureParams.from_dict(meta.features, source=where)
    iv = decode_iv(sample[member], where=where, dequantise=False)  # int8 stays int8 (module docstring)
    if iv.shape[1:] != (params.n_frames, params.n_mels):
        raise SchemaError(f"iv shape {iv.shape} does not match its feature parameters", file=where,
                          field=member)
    _check_finite(iv, where, member)
    out = {"iv": iv, "meta": meta}
    if with_audio:
        out["waveform"] = _decode_w(sample, meta, params, where)
    return out


def _sample_meta(sample: dict) -> tuple[str, Any, str]:
    """``(where, meta, features member)`` of a raw sample whose ``json`` and features members are
    present (the W member is checked by decode_w: it depends on the schema version)."""
    where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
    if "json" not in sample:
        raise SchemaError("missing member 'json'", file=where, field="json")
    member = iv_member(sample, where=where)
    return where, decode_meta(sample["json"], where=where), member


def _check_finite(iv: np.ndarray, where: str, member: str) -> None:
    if iv.dtype == np.int8:
        return
    # float16 inf/NaN have all exponent bits set: an integer test is ~10x cheaper than isfinite
    if iv.dtype == np.float16 and ((iv.view(np.uint16) & 0x7C00) == 0x7C00).any() or \
            iv.dtype != np.float16 and not np.isfinite(iv).all():
        raise SchemaError("non-finite intensity features", file=where, field=member)


def _decode_w(sample: dict, meta: Any, params: Any, where: str) -> np.ndarray:
    w, sr = decode_w(sample, meta, where=where, frames=params.clip_samples, pcm16=True)
    if sr != params.sample_rate:
        raise SchemaError(f"sample rate {sr} != {params.sample_rate} of its feature parameters",
                          file=where, field=W_MEMBER.get(meta.schema_version, "foa.flac"))
    return w if len(w) == params.clip_samples else np.pad(w, (0, params.clip_samples - len(w)))


OMNI_DEGAIN = "W / gain"  # render.omni_48k of an official-grid sample: the release's omni_48k = stored W / gain


def omni_scale(meta: Any) -> float:
    """Factor from the stored W (in +-1) to the release's ``omni_48k`` for an official-preset sample.

    ``disse-synth official-grid`` computes the features from the unscaled FOA and stores the FOA scaled
    to a 0.99 peak (``render.gain``, ``render.omni_48k = "W / gain"``): the release's omni is W / gain.
    ``disse-synth render --features official`` computes them from the level-normalised FOA it stores:
    the stored W is the omni as it is (1.0).
    """
    render = meta.render or {}
    if render.get("omni_48k") != OMNI_DEGAIN:
        return 1.0
    gain = render.get("gain")
    if not isinstance(gain, (int, float)) or not gain > 0 or not np.isfinite(gain):
        raise SchemaError(f"render.gain must be a positive number, got {gain!r}", file=meta.key, field="render.gain")
    return 1.0 / float(gain)


def _decode_official(sample: dict, *, with_audio: bool = True) -> dict:
    """An ``official`` feature-preset sample -> ``iv`` float16 ``(6, 201, 1601)`` ([act Y, Z, X, rea Y, Z,
    X]; :func:`disse.pipeline.official_features.split_official_iv` gives ``i_act``, ``i_rea``), W as int16
    (480000 samples) and ``w_scale``: ``omni_48k = W / 2**15 * w_scale`` (:func:`omni_scale`)."""
    where, meta, member = _sample_meta(sample)
    params = feature_params_from_dict(meta.features, source=where)
    if not isinstance(params, OfficialFeatureParams):
        raise SchemaError("features block is this project's preset (mel intensity vectors); the official model "
                          "reads shards of the official preset (disse-synth official-grid, or render --features "
                          "official)", file=where, field="features.preset")
    iv = decode_iv(sample[member], where=where, dequantise=False)
    if iv.dtype == np.int8:
        raise SchemaError("official features must be float16, got int8 (clipped to +-1)", file=where, field=member)
    if iv.shape != params.iv_shape:
        raise SchemaError(f"iv shape {iv.shape} != {params.iv_shape} of the official preset", file=where,
                          field=member)
    _check_finite(iv, where, member)
    out = {"iv": iv, "meta": meta}
    if with_audio:
        out["waveform"] = _decode_w(sample, meta, params, where)
        out["w_scale"] = omni_scale(meta)
    return out


class BatchBuffers:
    """Shared-memory batch tensors that one DataLoader worker reuses, ``n`` batches round (module docstring,
    "Hand-over").

    ``default_collate`` in a worker stacks every batch into *fresh* shared memory, which the worker then
    page-faults in page by page, and the main process maps and faults in again: on a VM that costs more than
    reading and decoding the sample (``benchmarks/data.py`` prints the cost of a fresh page). Reused buffers
    are faulted in once, and the main process keeps them mapped (:class:`_CopyOut`).
    """

    def __init__(self, n: int) -> None:
        self.n, self.count = n, 0
        self.slots: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
        self.current: dict[str, torch.Tensor] = self.slots[0]

    def next_batch(self) -> None:
        """Move on to the next buffer (call once before each batch's :meth:`stack` calls)."""
        self.current = self.slots[self.count % self.n]
        self.count += 1

    def stack(self, name: str, tensors: list[torch.Tensor]) -> torch.Tensor:
        """``torch.stack(tensors)`` into this batch's buffer for ``name`` (allocated once per shape)."""
        shape, dtype = (len(tensors), *tensors[0].shape), tensors[0].dtype
        out = self.current.get(name)
        if out is None or tuple(out.shape) != shape or out.dtype != dtype:
            out = self.current[name] = torch.empty(shape, dtype=dtype).share_memory_()
        return torch.stack(tensors, out=out)


def _stack(tensors: list[torch.Tensor], name: str, buffers: BatchBuffers | None) -> torch.Tensor:
    # default_collate stacks straight into (fresh) shared memory inside a DataLoader worker
    return default_collate(tensors) if buffers is None else buffers.stack(name, tensors)


def _decode_foa(sample: dict) -> dict:
    """Any sample (either feature preset, schema v1-v4) -> ``foa`` ``(4, T)`` AmbiX at 48 kHz (int16 PCM as stored in
    v3 / v4, float32 from v1 / v2's 24-bit FLAC; zero-padded to the clip length of its features block) and
    ``w_scale`` (:func:`omni_scale`); the features member is not read."""
    where, meta, _member = _sample_meta(sample)
    params = feature_params_from_dict(meta.features, source=where)
    foa, sr = decode_foa_sample(sample, meta, where=where)
    if sr != OFFICIAL_RATE:
        raise SchemaError(f"sample rate {sr} != {OFFICIAL_RATE} (the release's front end reads 48 kHz FOA)",
                          file=where, field=W_MEMBER.get(meta.schema_version, "foa.flac"))
    if meta.schema_version >= 3:  # 16-bit members: int16 is exact and a half of float32's bytes
        foa = np.round(foa * 32768.0).astype(np.int16)
    n = params.clip_samples
    if foa.shape[1] != n:
        foa = np.pad(foa[:, :n], ((0, 0), (0, max(0, n - foa.shape[1]))))
    return {"foa": foa, "w_scale": omni_scale(meta), "meta": meta}


def collate_iv(ivs: list[np.ndarray], buffers: BatchBuffers | None = None) -> torch.Tensor:
    """``(6, F, M)`` features -> ``(B, 6, F, M)``: int8 q (value q / 127) when every sample is int8,
    else float16 (int8 ones de-quantised: a batch mixing schema versions)."""
    if all(iv.dtype == np.int8 for iv in ivs):
        return _stack([torch.from_numpy(iv) for iv in ivs], "iv", buffers)
    return _stack([iv_to_float(torch.from_numpy(iv)).half() for iv in ivs], "iv", buffers)


def collate(samples: list[dict], buffers: BatchBuffers | None = None) -> dict[str, Any]:
    """Decoded samples -> a batch dict of the Batch contract (docs/internals.md). ``buffers``: a worker's
    reused shared-memory tensors for W and the features (:class:`BatchBuffers`), else fresh ones."""
    metas = [s["meta"] for s in samples]
    batch: dict[str, Any] = {}
    # int16 W and int8 (or float16) features: a half or a quarter of float32's bytes through the workers'
    # shared memory and to the GPU (the model converts, audio_encoder.audio_inputs_as_float)
    if buffers is not None:
        buffers.next_batch()
    if "waveform" in samples[0]:
        batch["waveform"] = _stack([torch.from_numpy(s["waveform"]) for s in samples], "waveform", buffers)
    if "w_scale" in samples[0]:  # official preset: the release's omni_48k = waveform / 2**15 * w_scale
        batch["w_scale"] = torch.tensor([s["w_scale"] for s in samples], dtype=torch.float64)
    if "foa" in samples[0]:  # inputs "foa": int16 when every sample is (v3 / v4), else float32 in +-1
        foas = [s["foa"] for s in samples]
        if not all(f.dtype == np.int16 for f in foas):
            foas = [f.astype(np.float32) * np.float32(2.0 ** -15) if f.dtype == np.int16 else f for f in foas]
        batch["foa"] = default_collate([torch.from_numpy(f) for f in foas])
    if "iv" in samples[0]:
        batch["iv"] = collate_iv([s["iv"] for s in samples], buffers)
    batch["source_text"] = [m.source_caption for m in metas]
    batch["space_text"] = [m.spatial_caption for m in metas]
    batch["caption"] = [m.caption for m in metas]
    if any("space_caption_dropped" in s for s in samples):
        # what the text space head reads under model.text_input "full" (DataConfig.space_caption_drop)
        batch["space_head_text"] = [m.spatial_caption if s.get("space_caption_dropped") else m.caption
                                    for s, m in zip(samples, metas)]
        batch["space_caption_dropped"] = torch.tensor([bool(s.get("space_caption_dropped")) for s in samples])
    batch["source_id"] = torch.tensor([stable_id_int(m.source_id) for m in metas], dtype=torch.int64)
    batch["space_id"] = torch.tensor([stable_id_int(m.space_id) for m in metas], dtype=torch.int64)
    batch["source_id_str"] = [m.source_id for m in metas]
    batch["space_id_str"] = [m.space_id for m in metas]
    batch["key"] = [m.key for m in metas]
    batch["descriptors"] = [dict(m.descriptors) for m in metas]
    # one id per descriptor (sorted attribute names), for the per-descriptor contrastive term
    attrs = sorted(metas[0].descriptors)
    batch["attribute_ids"] = torch.tensor([[stable_id_int(f"{a}={m.descriptors.get(a, '')}") for a in attrs]
                                           for m in metas], dtype=torch.int64)
    f32 = torch.float32
    batch["targets"] = {
        "azimuth_deg": torch.tensor([m.azimuth_deg for m in metas], dtype=f32),
        "elevation_deg": torch.tensor([m.elevation_deg for m in metas], dtype=f32),
        "distance_m": torch.tensor([m.source_distance_m for m in metas], dtype=f32),
        "area_m2": torch.tensor([m.area_m2 for m in metas], dtype=f32),
        "t30_ms": torch.tensor([m.t30_ms for m in metas], dtype=f32),
        # from float64 angles, as the metadata holds them, then rounded once to float32
        "direction": direction_from_angles(
            torch.tensor([m.azimuth_deg for m in metas], dtype=torch.float64),
            torch.tensor([m.elevation_deg for m in metas], dtype=torch.float64)).to(f32),
    }
    return batch


# --------------------------------------------------------------------------- raw reading

# members that carry the channels besides W: read only when the sample has no W member of its own (v1)
_OTHER_CHANNELS = ("foa.flac", "yzx.flac")
_W_MEMBERS = ("w.wav",)


def _tar_samples(url: str, *, with_audio: bool = True, keep_foa: bool = False) -> Iterator[dict]:
    """Raw samples (member bytes by extension, ``__key__``, ``__url__``) of one shard, opened with
    ``webdataset.gopen`` (a local path, an ``http(s)://`` URL, a ``pipe:`` command, ...).

    Members are grouped by key as WebDataset groups them (consecutive members sharing a key); only the
    members a sample needs are read: the channels besides W (a v2 sample's ``foa.flac``, a v3/v4 sample's
    ``yzx.flac``; W has its own ``w.wav``) are skipped, and with ``with_audio=False`` W too. A local file
    is seekable, so skipped members are never read (tarfile seeks past them); a stream reads past them.
    (WebDataset's streaming tar reader reads every byte in 10 kB records: ~6x slower here.)
    Raises ``OSError`` / ``tarfile.TarError`` when the shard cannot be opened or breaks off, also when a
    pipe's command (``curl`` for http) exits with a failure status after the last byte.
    """
    skip = set(_OTHER_CHANNELS) if with_audio else set(_OTHER_CHANNELS + _W_MEMBERS)
    if keep_foa:  # the official model's front end reads all four channels
        skip = set()
    stream = gopen(url, "rb")
    finished = False
    try:
        seekable = bool(getattr(stream, "seekable", lambda: False)())
        with tarfile.open(fileobj=stream, mode="r:" if seekable else "r|") as tar:
            def wanted(ext: str, seen: dict) -> bool:
                # a v2 sample's foa.flac comes before its w.wav: read it unless W has its own member
                return ext not in skip or (with_audio and "w.wav" not in seen)

            for key, members in group_tar_members(tar, read=wanted):
                yield _without_unused({"__key__": key, "__url__": url, **members}, with_audio, keep_foa)
        finished = True
    finally:
        if finished:
            stream.close()  # a pipe's close() waits for its command and raises on a failure status
        else:  # abandoned part-way (the consumer stopped, or an error is on its way): close quietly
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - the command's status does not matter any more
                pass


def _without_unused(sample: dict, with_audio: bool, keep_foa: bool = False) -> dict:
    """Drop the members a sample read but the model does not use (and the ones only seen)."""
    if keep_foa:
        return {k: v for k, v in sample.items() if v is not None}
    if not with_audio:
        for ext in _OTHER_CHANNELS + _W_MEMBERS:
            sample.pop(ext, None)
    elif "w.wav" in sample:
        for ext in _OTHER_CHANNELS:
            sample.pop(ext, None)
    return {k: v for k, v in sample.items() if v is not None}


def _raw_samples(url: str, errors: ErrorLog, *, retries: int = 0, expected: int | None = None,
                 with_audio: bool = True, keep_foa: bool = False) -> Iterator[dict]:
    """The raw samples of one shard (:func:`_tar_samples`), never raising for a bad shard.

    A shard that cannot be opened or breaks off, or (with ``expected``, its ``sizes.json`` count) ends
    early, is counted in ``errors`` as a bad shard; the samples before the break are kept. A remote shard
    is first opened again up to ``retries`` times, skipping the samples it already gave, so a retried
    shard yields the same samples in the same order as an unbroken read.
    """
    done, attempt = 0, 0
    while True:
        try:
            for j, sample in enumerate(_tar_samples(url, with_audio=with_audio, keep_foa=keep_foa)):
                if j >= done:
                    done += 1
                    yield sample
            if expected is not None and done < expected:
                raise EOFError(f"the shard ended after {done} of its {expected} samples (sizes.json)")
            return
        except (OSError, EOFError, ValueError, tarfile.TarError) as exn:
            if attempt < retries and is_remote(url):
                attempt += 1
                log.warning("shard %s broke off after %d sample(s) (%s): retry %d of %d", url, done, _reason(exn),
                            attempt, retries)
                continue
            errors.add("bad_shards", f"{url}: {_reason(exn)}")
            return


def _strided(url: str, stride: int, offset: int, errors: ErrorLog, **kw: Any) -> Iterator[dict]:
    for j, sample in enumerate(_raw_samples(url, errors, **kw)):
        if j % stride == offset:
            yield sample


def _shuffled(src: Iterator[dict], bufsize: int, rng: random.Random) -> Iterator[dict]:
    """Reservoir shuffle (as webdataset's), driven by an explicit, seeded RNG."""
    if bufsize <= 1:
        yield from src
        return
    buf: list[dict] = []
    for sample in src:
        if len(buf) < bufsize:
            buf.append(sample)
            if len(buf) < bufsize:
                continue
        i = rng.randrange(len(buf))
        buf[i], buf[-1] = buf[-1], buf[i]
        yield buf.pop()
    rng.shuffle(buf)
    yield from buf


# --------------------------------------------------------------------------- datasets

@dataclass
class StreamPosition:
    """Where every slot of a rank stands: ``{slot: (pass, index)}`` plus batches taken so far."""

    positions: dict[int, tuple[int, int]] = field(default_factory=dict)
    batches: int = 0          # batches the trainer consumed on this rank since the run started
    num_workers: int = 1
    world: int = 1

    def to_dict(self) -> dict:
        return {"positions": {int(k): [int(a), int(b)] for k, (a, b) in self.positions.items()},
                "batches": self.batches, "num_workers": self.num_workers, "world": self.world}

    @classmethod
    def from_dict(cls, d: dict) -> "StreamPosition":
        return cls({int(k): (int(v[0]), int(v[1])) for k, v in d["positions"].items()},
                   int(d["batches"]), int(d["num_workers"]), int(d["world"]))


class TrainStream(IterableDataset):
    """Infinite, shuffled, decoded batches for one rank (see the module docstring)."""

    def __init__(self, shards: ShardList, cfg: DataConfig, *, rank: int = 0, world: int = 1,
                 start: StreamPosition | None = None, with_audio: bool = True, inputs: str = "project") -> None:
        super().__init__()
        self.inputs = inputs  # decode_raw's preset: "project" features + W, or "foa" (the official model)
        self.shards, self.cfg, self.rank, self.world = shards, cfg, rank, world
        self.n_workers = max(1, cfg.num_workers)
        self.start = start or StreamPosition(num_workers=self.n_workers, world=world)
        if start is not None and (start.num_workers != self.n_workers or start.world != world):
            raise SchemaError(
                f"cannot resume the data stream exactly: it was saved with {start.world} rank(s) x "
                f"{start.num_workers} worker(s), now {world} x {self.n_workers}", field="data.num_workers")
        self.with_audio = with_audio
        # rotation augmentation (trainer/data/augment.py) rebuilds captions with the rule table
        self.rules = load_caption_rules(cfg.caption_rules or None) if cfg.rotate_azimuth else None

    def slot_of(self, worker: int) -> int:
        # rotate so that after resuming, DataLoader worker 0 serves the slot whose turn it is
        return self.rank * self.n_workers + (worker + self.start.batches) % self.n_workers

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        slot = self.slot_of(worker)
        n_slots = self.world * self.n_workers
        # reused hand-over buffers (workers only): a batch's buffer comes round again after
        # prefetch_factor + 2 batches, by when the main process has copied it out (_CopyOut)
        buffers = BatchBuffers(self.cfg.prefetch_factor + 2) if info is not None else None
        if info is not None:
            keep_freed_memory()
        pass_, skip = self.start.positions.get(slot, (0, 0))
        errors = ErrorLog()
        cfg = self.cfg
        pending: list[dict] = []
        empty_passes = 0
        while True:
            plan = slot_plan(len(self.shards.urls), n_slots, slot, cfg.seed, pass_)
            raw = (s for i, stride, off in plan
                   for s in _strided(self.shards.urls[i], stride, off, errors, retries=cfg.shard_retries,
                                     expected=self.shards.sizes[i], with_audio=self.with_audio,
                                     keep_foa=self.inputs == "foa"))
            rng = random.Random(f"{cfg.seed}/{pass_}/{slot}")
            produced = 0
            for index, sample in enumerate(_shuffled(raw, cfg.shuffle_buffer, rng), start=1):
                if index <= skip:
                    continue  # replaying a resumed pass: raw bytes only, nothing decoded
                try:
                    decoded = decode_raw(sample, with_audio=self.with_audio, preset=self.inputs)
                except SchemaError as exc:
                    errors.add("bad_samples", str(exc))
                    continue
                if self.rules is not None:
                    if not produced:
                        check_rules(decoded["meta"], self.rules, sample.get("__url__", "?"))
                    decoded = rotate_sample(decoded, self.rules, cfg.seed, pass_)
                if cfg.space_caption_drop > 0:
                    decoded["space_caption_dropped"] = drop_source_clause(
                        decoded["meta"].key, cfg.space_caption_drop, cfg.seed, pass_)
                pending.append(decoded)
                produced += 1
                if len(pending) == cfg.batch_size:
                    batch = collate(pending, buffers)
                    pending = []
                    batch["_position"] = (slot, pass_, index)
                    batch["_errors"] = (slot, dict(errors.counts))
                    yield batch
            skip = 0
            empty_passes = empty_passes + 1 if produced == 0 else 0
            if empty_passes >= 3:
                raise RuntimeError(f"slot {slot}: no valid sample in 3 passes over {len(self.shards.urls)} "
                                   f"shard(s); all corrupt, or far fewer samples than ranks x workers")
            pass_ += 1


class EvalStream(IterableDataset):
    """Every sample of fixed shards exactly once, in shard order (shards split over workers)."""

    def __init__(self, shards: ShardList, batch_size: int, *, with_audio: bool = True,
                 preset: str = "project", retries: int = 2) -> None:
        super().__init__()
        self.shards, self.batch_size, self.with_audio, self.preset = shards, batch_size, with_audio, preset
        self.retries = retries
        self.errors = ErrorLog()

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, n = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            keep_freed_memory()
        pending: list[dict] = []
        for url, size in zip(self.shards.urls[worker::n], self.shards.sizes[worker::n]):
            for sample in _raw_samples(url, self.errors, retries=self.retries, expected=size,
                                       with_audio=self.with_audio, keep_foa=self.preset == "foa"):
                try:
                    pending.append(decode_raw(sample, with_audio=self.with_audio, preset=self.preset))
                except SchemaError as exc:
                    self.errors.add("bad_samples", str(exc))
                    continue
                if len(pending) == self.batch_size:
                    yield collate(pending)
                    pending = []
        if pending:
            yield collate(pending)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def keep_freed_memory(threshold_bytes: int = 256 << 20) -> bool:
    """Let glibc's malloc keep freed blocks up to ``threshold_bytes`` for reuse (process-wide; forked
    DataLoader workers inherit it).

    A worker allocates and frees ~1-2 MB per sample (member bytes, decoded arrays) at a steady rate, and
    the training process hundreds of MB per CPU step (STFTs of W, their powers, activations); by default
    glibc maps blocks that large afresh and returns them on free, so every sample's or step's memory is
    page-faulted in again (a third of a sample's reading and decoding on a VM, where a fault costs
    microseconds: benchmarks/data.py; ~45,000 faults and a fifth of a demo step on 2 CPU cores:
    benchmarks/train.py). Kept, the heap stays at the process's working set and is reused; results are
    unchanged. Returns False where malloc is not glibc's (nothing changed).
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * threshold_bytes))


def _collate_identity(batches: list[dict]) -> dict:
    return batches[0]


_REUSED = ("waveform", "iv")  # the batch tensors BatchBuffers reuses


class _CopyOut:
    """The main process's side of :class:`BatchBuffers`: each batch's reused tensors are copied out of the
    worker's buffer before the batch is handed on (a pinned-memory copy already is one), and the buffers
    are kept mapped so that they are not mapped and faulted in again when they come round.

    Why a buffer is never overwritten while in use: the DataLoader asks worker ``w`` for its batch ``k``
    only once the main process has taken that worker's batch ``k - prefetch_factor`` (it keeps at most
    ``prefetch_factor`` requests per worker outstanding, in order), and every earlier batch of ``w`` has by
    then been copied here; the buffer of batch ``k`` last held batch ``k - prefetch_factor - 2``.
    """

    def __init__(self, it: Iterator[dict], *, copy: bool, keep: int) -> None:
        self.it, self.copy = it, copy
        self.kept: collections.deque = collections.deque(maxlen=keep)

    def __iter__(self) -> "_CopyOut":
        return self

    def __next__(self) -> dict:
        batch = next(self.it)
        reused = {k: batch[k] for k in _REUSED if k in batch}
        if self.copy:
            self.kept.append(reused)
            batch = {**batch, **{k: v.clone() for k, v in reused.items()}}
        return batch

    def __getattr__(self, name: str) -> Any:  # the DataLoader iterator's own attributes (_workers, ...)
        return getattr(self.it, name)


class _ReusingLoader(DataLoader):
    """A DataLoader whose workers hand batches over in reused shared memory (:class:`BatchBuffers`)."""

    def __iter__(self) -> Iterator[dict]:  # type: ignore[override]
        it = super().__iter__()
        if self.num_workers == 0:
            return it
        keep = (self.prefetch_factor + 2) * self.num_workers
        return _CopyOut(it, copy=not self.pin_memory, keep=keep)


def train_loader(shards: ShardList, cfg: DataConfig, *, rank: int = 0, world: int = 1,
                 start: StreamPosition | None = None, with_audio: bool = True,
                 pin_memory: bool = False, inputs: str = "project") -> DataLoader:
    """An infinite loader of training batches for this rank (batches are made in the workers).

    ``pin_memory``: page-locked batches for faster, asynchronous copies to a GPU. ``inputs``: ``"project"``
    (this project's features and W) or ``"foa"`` (the FOA of any shard, for the official model).
    """
    ds = TrainStream(shards, cfg, rank=rank, world=world, start=start, with_audio=with_audio, inputs=inputs)
    kw: dict[str, Any] = {"prefetch_factor": cfg.prefetch_factor} if cfg.num_workers > 0 else {}
    # a private generator: creating the loader must not draw from the global torch RNG (dropout),
    # or a resumed run would diverge from an uninterrupted one
    gen = torch.Generator().manual_seed(cfg.seed)
    return _ReusingLoader(ds, batch_size=1, collate_fn=_collate_identity, num_workers=cfg.num_workers,
                          generator=gen, pin_memory=pin_memory, **kw)


def eval_loader(spec: str | os.PathLike | list[str] | ShardList, batch_size: int = 16, num_workers: int = 0, *,
                with_audio: bool = True, preset: str = "project", retries: int = 2) -> DataLoader:
    """A finite loader over fixed (validation / test) shards, for ``evaluate.embed`` (``preset="project"``)
    or ``evaluate.embed_official`` (``"official"``: the release's features, :func:`decode_raw`).
    ``retries``: times a remote shard whose stream breaks is opened again before it is skipped and counted."""
    shards = spec if isinstance(spec, ShardList) else resolve_shards(spec, what="shards")
    num_workers = min(num_workers, len(shards.urls))
    ds = EvalStream(shards, batch_size, with_audio=with_audio, preset=preset, retries=retries)
    return DataLoader(ds, batch_size=1, collate_fn=_collate_identity, num_workers=num_workers)


def shard_meta(shards: ShardList, *, what: str = "shards") -> tuple[ShardMeta, str]:
    """The metadata of the first readable sample of ``shards`` and where it is (a preflight: which feature
    preset and caption rule table the shards carry, before a model is run over them). ``what`` names the
    shards in an error."""
    first_failure = ""
    for url in shards.urls:
        try:
            for sample in _tar_samples(url, with_audio=False):
                if "json" in sample:
                    where = f"{url}:{sample['__key__']}"
                    try:
                        return decode_meta(sample["json"], where=where), where
                    except SchemaError:
                        continue  # an unreadable sample is the loader's to skip and count
        except (OSError, EOFError, ValueError, tarfile.TarError) as exc:
            # an unreachable URL or a failing pipe command: named in the error if no shard can be read
            first_failure = first_failure or f"; {url}: {_reason(exc)}"
    raise SchemaError(f"no readable sample in the shards{first_failure}", field=what)


def shard_features(shards: ShardList, *, what: str = "shards") -> tuple[dict, str]:
    """The ``features`` block of the first readable sample of ``shards`` and where it is."""
    meta, where = shard_meta(shards, what=what)
    return dict(meta.features or {}), where


def shard_rules(shards: ShardList, *, what: str = "shards") -> tuple[str | None, object, str]:
    """``(packaged rule-set name or None, the rules_version the shards were captioned with, where)``."""
    meta, where = shard_meta(shards, what=what)
    version = (meta.render or {}).get("rules_version")
    return (rule_set_of_version(version) if version is not None else None), version, where


def check_shard_rules(shards: ShardList, rules: CaptionRules, *, field: str = "data.caption_rules",
                      what: str = "data.train") -> None:
    """The rule table a command uses must be the one the shards were captioned with (descriptors, prompts and
    rotated captions depend on it): else one SchemaError naming ``field`` and the value to set."""
    name, version, where = shard_rules(shards, what=what)
    if version is not None and str(version) != str(rules.version):
        hint = f"set {field}={name}" if name else f"set {field} to the rule table the shards were rendered with"
        raise SchemaError(f"the shards were captioned with rule table version {version!r}, but {field} gives "
                          f"version {rules.version!r}: {hint}", file=where, field=field)


def check_training_preset(shards: ShardList, *, what: str = "data.train") -> None:
    """The trainer's model (DELSA) reads this project's feature preset (mel intensity vectors): shards of
    another preset (``disse-synth render --features official``) are one SchemaError naming the shard and
    ``features.preset`` before training starts, instead of every sample being skipped as undecodable."""
    features, where = shard_features(shards, what=what)
    have = features.get("preset", "project")
    if have != "project":
        raise SchemaError(
            f"the {what} shards carry the {have!r} feature preset, but disse-train's model (DELSA) reads "
            f"'project' (mel intensity vectors): render them with this project's features (disse-synth render "
            f"without --features {have}, or disse-synth demo); {have!r} shards are for the released model "
            f"(disse-eval --metrics official)", file=where, field="features.preset")


def check_foa_inputs(shards: ShardList, *, what: str = "data.train") -> None:
    """The official model's trainer reads the FOA of any shard (inputs ``"foa"``): the first sample of ``shards``
    must decode so (w.wav + yzx.flac, or foa.flac; 48 kHz), else one SchemaError naming it and the member."""
    errors = ErrorLog()
    for url in shards.urls:
        for sample in _raw_samples(url, errors, keep_foa=True):
            if "json" in sample:
                _decode_foa(sample)
                return
    raise SchemaError("no readable sample in the shards", field=what)


def steps_per_epoch(shards: ShardList, global_batch: int) -> int:
    """Optimiser steps in one epoch: all samples (by sizes.json) over the global batch, at least 1."""
    return max(1, shards.total // global_batch)


def strip_private(batch: dict) -> dict:
    """Drop the loader's bookkeeping keys (``_position``, ``_errors``)."""
    return {k: v for k, v in batch.items() if not k.startswith("_")}
