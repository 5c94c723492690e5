"""Shard sample, schema version 4 (DESIGN.md's version 1, made affordable; docs/synthesis.md).

A sample is four tar members sharing a dot-free ``__key__``; the FOA is split in two members that
together hold every channel once, losslessly at 16 bits:

* ``w.wav``    -- W (ACN 0), mono 16-bit PCM WAV, 48 kHz: what the trainer reads (~0.2 ms to decode)
* ``yzx.flac`` -- (versions 3, 4) Y, Z, X (ACN 1-3), 3-channel 16-bit FLAC, 48 kHz. AmbiX FOA (ACN
  W, Y, Z, X; SN3D) = [w.wav, yzx.flac] stacked; :func:`decode_foa_sample` does it for any version
* ``iv.npz``   -- (version 4) ``(6, n_frames, n_mels)``: I_act (x, y, z) then I_rea (x, y, z) as a
  deflated NumPy ``.npz`` holding one array ``iv``; **int8**, value = q / 127
  (:data:`IV_INT8_SCALE`), for the project's features (|I| <= 1 by construction); float16 for a
  features preset that is not bounded (the official release's). ``np.load(f)["iv"]`` reads it.
  Version 3 stored the same array uncompressed as ``iv.npy``.
* ``json``     -- :class:`ShardMeta` as UTF-8 JSON (sorted keys, so bytes are reproducible)

Why (measured, docs/synthesis.md "Shard size"): version 2 held the FOA as 24-bit 4-channel FLAC,
W a second time as 16-bit PCM (``w.wav``) and float16 features: ~4.0 MB a demo sample, ~4.8 MB a
real-recording sample. Version 4 stores no channel twice, the FOA at 16 bits and the features at
8 bits, deflated: ~2.0 MB (demo) and ~2.2 MB (real speech), under half of version 2.

* **16-bit FOA.** The renderer normalises W to -26 dBFS RMS with peaks <= 0.99, so rounding to
  16 bits (round(x * 2**15), no dither) leaves the error <= 2**-16 of full scale, ~75 dB below the
  signal: far under what the intensity features (computed before rounding, from float32) or
  HTSAT's log-mel resolve. Dither would decorrelate an error nobody hears, at the price of more
  FLAC bytes and a noise floor in every silent tail; it is not used. ``yzx.flac`` at compression
  level :data:`FLAC_COMPRESSION`.
* **W as PCM, not FLAC.** W as mono FLAC would be ~0.3 MB instead of 0.96 MB, but decoding it costs
  ~7 ms of CPU a sample here (PCM: ~0.2 ms), which would take the training loader from ~200 to
  ~100 samples per CPU-second (benchmarks/data.py); W is the one member read every step.
* **int8 features, deflated**: step 1/127, error <= 0.004 on components bounded by 1; half of
  float16, and deflate takes another 13-43 % off (speech-demo; ~1.5 ms to inflate, which makes the
  loader slower than version 3's: docs/training.md). The loader hands the int8 array on as it is
  and the model divides by 127 (:func:`disse.trainer.model.physics.iv_to_float`), which halves the
  features' bytes through the DataLoader's shared memory and to the GPU.

Versions 1 (``foa.flac`` only, 24-bit, float16 iv), 2 (plus ``w.wav``) and 3 (``iv.npy``) are still
read and written; ``disse-synth upgrade`` rewrites them as version 4.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
import struct
import tarfile
import zipfile
import zlib
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Iterator

import numpy as np
import soundfile as sf
from isal import isal_zlib

from disse.schemas.errors import SchemaError

SCHEMA_VERSION = 4
SUPPORTED_VERSIONS = (1, 2, 3, 4)
MEMBERS = {1: ("foa.flac", "iv.npy", "json"), 2: ("foa.flac", "iv.npy", "json", "w.wav"),
           3: ("yzx.flac", "iv.npy", "json", "w.wav"), 4: ("yzx.flac", "iv.npz", "json", "w.wav")}
W_MEMBER = {1: "foa.flac", 2: "w.wav", 3: "w.wav", 4: "w.wav"}   # where each version keeps W
IV_MEMBERS = ("iv.npz", "iv.npy")   # version 4; versions 1-3
FOA_CHANNELS = ("W", "Y", "Z", "X")  # AmbiX / ACN order
IV_CHANNELS = ("act_x", "act_y", "act_z", "rea_x", "rea_y", "rea_z")
FLAC_SUBTYPE = "PCM_16"                    # yzx.flac, versions 3 and 4
FLAC_SUBTYPES = {1: "PCM_24", 2: "PCM_24"}  # foa.flac of versions 1 and 2
FLAC_COMPRESSION = 0.5  # soundfile's 0..1 scale of libFLAC's levels 0..8
W_SUBTYPE = "PCM_16"
IV_INT8_SCALE = 127.0   # versions 3, 4, project features: int8 q, value = q / 127
IV_DEFLATE_LEVEL = 6    # iv.npz: zlib level (1 is ~15 % faster to write and ~2 % larger)
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member time: the same sample gives the same bytes


@dataclass
class ShardMeta:
    """The ``json`` member. Physical quantities in real units (degrees, metres, m², ms)."""

    key: str
    split: str
    source_id: str          # the dry clip
    space_id: str           # the spatial condition as language sees it: joined descriptors
    rir_id: str
    source_caption: str
    spatial_caption: str
    caption: str            # full spatialised caption
    azimuth_deg: float
    elevation_deg: float
    source_distance_m: float
    area_m2: float
    t30_ms: float
    descriptors: dict       # attribute -> label, e.g. {"direction": "left", ...}
    features: dict          # FeatureParams.to_dict() used to compute the intensity features
    render: dict = field(default_factory=dict)  # seed, gain, rule-table version, ...
    schema_version: int = SCHEMA_VERSION

    def to_json_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "json") -> "ShardMeta":
        version = d.get("schema_version")
        if version not in SUPPORTED_VERSIONS:
            raise SchemaError(f"schema_version {version!r} not supported (this reader: "
                              f"{', '.join(map(str, SUPPORTED_VERSIONS))})", file=where, field="schema_version")
        names = {f.name for f in fields(cls)}
        missing = [n for n in names if n not in d and n not in ("render",)]
        if missing:
            raise SchemaError(f"missing field(s) {sorted(missing)}", file=where)
        meta = cls(**{k: v for k, v in d.items() if k in names})
        for name in ("azimuth_deg", "elevation_deg", "source_distance_m", "area_m2", "t30_ms"):
            value = getattr(meta, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SchemaError(f"not a finite number: {value!r}", file=where, field=name)
        return meta


def check_key(key: str) -> str:
    """WebDataset splits member names at the first dot: keys must be dot- and slash-free."""
    if not key or "." in key or "/" in key:
        raise SchemaError(f"__key__ must be non-empty and contain no '.' or '/': {key!r}", field="__key__")
    return key


def encode_sample(foa: np.ndarray, iv: np.ndarray, meta: ShardMeta, sample_rate: int = 48000) -> dict:
    """Encode one sample (version ``meta.schema_version``) for a tar writer.

    foa: ``(4, T)`` float within +-1, AmbiX; iv: ``(6, F, M)``.
    """
    check_key(meta.key)
    if foa.ndim != 2 or foa.shape[0] != 4:
        raise SchemaError(f"FOA must be (4, T), got {foa.shape}", file=meta.key, field="foa.flac")
    if iv.ndim != 3 or iv.shape[0] != 6:
        raise SchemaError(f"iv must be (6, frames, mels), got {iv.shape}", file=meta.key, field="iv.npy")
    if foa.size and max(float(foa.max()), -float(foa.min())) > 1.0:  # no |foa| temporary
        raise SchemaError("FOA exceeds full scale; normalise before encoding", file=meta.key,
                          field="foa.flac")
    if meta.schema_version not in SUPPORTED_VERSIONS:
        raise SchemaError(f"cannot write schema_version {meta.schema_version!r}", file=meta.key,
                          field="schema_version")
    version = meta.schema_version
    if version >= 3:
        pcm = foa_to_pcm16(foa)
        quantise = iv_is_bounded(meta.features)
        features = {"iv.npz": encode_iv_npz(iv, quantise=quantise)} if version >= 4 else \
            {"iv.npy": encode_iv(iv, quantise=quantise)}
        return {"__key__": meta.key, "w.wav": encode_pcm16_wav(pcm[0], sample_rate),
                "yzx.flac": encode_flac(interleave(pcm[1:]), sample_rate), **features, "json": meta.to_json_bytes()}
    flac = io.BytesIO()
    sf.write(flac, np.ascontiguousarray(foa.T), sample_rate, format="FLAC", subtype=FLAC_SUBTYPES[version])
    out = {"__key__": meta.key, "foa.flac": flac.getvalue(), "iv.npy": encode_iv(iv, quantise=False),
           "json": meta.to_json_bytes()}
    if version == 2:
        out["w.wav"] = encode_w_wav(foa[0], sample_rate)
    return out


def foa_to_pcm16(foa: np.ndarray) -> np.ndarray:
    """``(C, T)`` float in +-1 -> int16 by round(x * 2**15) (no dither; module docstring)."""
    q = np.asarray(foa, np.float32) * np.float32(32768.0)
    np.rint(q, out=q)
    np.clip(q, -32768.0, 32767.0, out=q)  # +1.0 is the only in-range value past int16 (encode_sample checks |x| <= 1)
    return q.astype(np.int16)


def interleave(channels: np.ndarray) -> np.ndarray:
    """``(C, T)`` -> C-contiguous ``(T, C)``, the frame order libsndfile writes. One column at a
    time: each pass reads a channel contiguously, ~4x faster than copying the transposed view."""
    out = np.empty(channels.shape[::-1], channels.dtype)
    for c, channel in enumerate(channels):
        out[:, c] = channel
    return out


def encode_flac(pcm: np.ndarray, sample_rate: int) -> bytes:
    """int16 ``(T,)`` or ``(T, C)`` -> 16-bit FLAC bytes (level :data:`FLAC_COMPRESSION`); lossless."""
    buf = io.BytesIO()
    sf.write(buf, np.ascontiguousarray(pcm), sample_rate, format="FLAC", subtype=FLAC_SUBTYPE,
             compression_level=FLAC_COMPRESSION)
    return buf.getvalue()


def iv_is_bounded(features: dict) -> bool:
    """True for the project's mel intensity features (every component within +-1, so int8 storage
    applies); False for other presets (the official release's per-bin normalisation is unbounded)."""
    return features.get("preset", "project") == "project"


def quantise_iv(iv: np.ndarray) -> np.ndarray:
    """``(6, F, M)`` float features bounded by 1 -> int8 q = round(iv * 127), clipped to +-127."""
    return np.rint(np.clip(np.asarray(iv, np.float32), -1.0, 1.0) * np.float32(IV_INT8_SCALE)).astype(np.int8)


def _stored_iv(iv: np.ndarray, quantise: bool) -> np.ndarray:
    """The array a features member holds: int8 as given (already q), else :func:`quantise_iv` or float16."""
    if iv.dtype == np.int8:
        return iv
    return quantise_iv(iv) if quantise else np.asarray(iv).astype(np.float16)


def encode_iv(iv: np.ndarray, *, quantise: bool) -> bytes:
    """``iv.npy`` bytes (versions 1-3): int8 :func:`quantise_iv` or float16. Never pickled."""
    buf = io.BytesIO()
    np.save(buf, _stored_iv(iv, quantise), allow_pickle=False)
    return buf.getvalue()


def encode_iv_npz(iv: np.ndarray, *, quantise: bool) -> bytes:
    """``iv.npz`` bytes (version 4): one deflated member ``iv.npy`` (int8 :func:`quantise_iv` or
    float16; an int8 array is taken as q already), as ``np.savez_compressed`` writes it but with a
    fixed member time, so that the same features always give the same bytes (savez stamps the
    current time). The array is written in Fortran order (component fastest, then frame), so the
    six components of one cell sit side by side: 2-3 % fewer bytes after deflate than C order, and
    ``np.load`` returns the same ``(6, F, M)`` array either way."""
    npy = io.BytesIO()
    np.lib.format.write_array(npy, np.asfortranarray(_stored_iv(iv, quantise)), allow_pickle=False)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(zipfile.ZipInfo("iv.npy", date_time=_ZIP_EPOCH), npy.getvalue(),
                   compress_type=zipfile.ZIP_DEFLATED, compresslevel=IV_DEFLATE_LEVEL)
    return buf.getvalue()


def encode_w_wav(w: np.ndarray, sample_rate: int) -> bytes:
    """``w.wav`` bytes: W ``(T,)`` float in +-1 as mono 16-bit PCM WAV (:func:`w_to_pcm16`)."""
    return encode_pcm16_wav(w_to_pcm16(w), sample_rate)


def encode_pcm16_wav(pcm: np.ndarray, sample_rate: int) -> bytes:
    """int16 ``(T,)`` -> mono 16-bit PCM WAV bytes (the samples as given)."""
    wav = io.BytesIO()
    sf.write(wav, np.ascontiguousarray(pcm, dtype=np.int16), sample_rate, format="WAV", subtype=W_SUBTYPE)
    return wav.getvalue()


def w_to_pcm16(w: np.ndarray) -> np.ndarray:
    """``(T,)`` float in +-1 -> int16 by round(w * 2**15), the exact inverse of :func:`decode_w_wav`'s
    scaling (libsndfile's own float writer scales by 2**15 - 1, off by up to one step on reading)."""
    return np.clip(np.rint(np.asarray(w, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def decode_foa(data: bytes, *, where: str = "foa.flac") -> tuple[np.ndarray, int]:
    """Decode ``foa.flac`` bytes to ``(4, T)`` float32 and the sample rate."""
    try:
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:
        raise SchemaError(f"cannot decode FLAC ({exc})", file=where, field="foa.flac") from None
    if audio.shape[1] != 4:
        raise SchemaError(f"expected 4 channels, got {audio.shape[1]}", file=where, field="foa.flac")
    return np.ascontiguousarray(audio.T), sr


def decode_w_wav(data: bytes, *, where: str = "w.wav", frames: int = -1,
                 pcm16: bool = False) -> tuple[np.ndarray, int]:
    """Decode ``w.wav`` (version 2) bytes to W as ``(T,)`` float32 (at most ``frames``) and the rate.

    Read as int16 and scaled by 2**-15 (libsndfile's own float conversion is ~4x slower);
    ``pcm16=True`` returns the int16 samples unscaled.
    """
    return _decode_mono16(data, "w.wav", where=where, frames=frames, pcm16=pcm16)


def _decode_mono16(data: bytes, member: str, *, where: str, frames: int, pcm16: bool) -> tuple[np.ndarray, int]:
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            if f.channels != 1:
                raise SchemaError(f"expected 1 channel (W), got {f.channels}", file=where, field=member)
            if f.subtype != W_SUBTYPE:
                raise SchemaError(f"expected {W_SUBTYPE} samples, got {f.subtype}", file=where, field=member)
            sr = f.samplerate
            pcm = f.read(frames=frames, dtype="int16")
    except SchemaError:
        raise
    except Exception as exc:
        kind = "FLAC" if member.endswith(".flac") else "WAV"
        raise SchemaError(f"cannot decode {kind} ({exc})", file=where, field=member) from None
    return (pcm if pcm16 else pcm.astype(np.float32) * np.float32(2.0 ** -15)), sr


def decode_w_from_foa(data: bytes, *, where: str = "foa.flac", frames: int = -1) -> tuple[np.ndarray, int]:
    """W (ACN 0) of ``foa.flac`` bytes as ``(T,)`` float32 (at most ``frames``) and the sample rate.

    Decodes all four channels (FLAC frames interleave them): version 1 shards only.
    """
    foa, sr = decode_foa(data, where=where)
    return np.ascontiguousarray(foa[0] if frames < 0 else foa[0, :frames]), sr


def check_members(sample: dict, version: int, *, where: str) -> None:
    """Every member that ``version`` requires is in the raw ``sample`` dict, else a SchemaError."""
    for member in MEMBERS.get(version, MEMBERS[SCHEMA_VERSION]):
        if member not in sample:
            raise SchemaError(f"missing member {member!r} (schema_version {version})", file=where,
                              field=member)


def decode_w(sample: dict, meta: ShardMeta, *, where: str, frames: int = -1,
             pcm16: bool = False) -> tuple[np.ndarray, int]:
    """The W channel of a raw sample: ``w.wav`` (versions 2-4) or ``foa.flac`` (1).

    ``(T,)`` float32 in +-1, or with ``pcm16=True`` int16 (a v1 sample's 24-bit W is rounded).
    """
    member = W_MEMBER.get(meta.schema_version, W_MEMBER[SCHEMA_VERSION])
    if member not in sample:
        raise SchemaError(f"missing member {member!r} (schema_version {meta.schema_version})", file=where,
                          field=member)
    if member == "w.wav":
        return decode_w_wav(sample[member], where=where, frames=frames, pcm16=pcm16)
    w, sr = decode_w_from_foa(sample[member], where=where, frames=frames)
    return (w_to_pcm16(w) if pcm16 else w), sr


def iv_member(sample: dict, *, where: str) -> str:
    """The name of a raw sample's features member: ``iv.npz`` (version 4) or ``iv.npy`` (1-3)."""
    for member in IV_MEMBERS:
        if member in sample:
            return member
    raise SchemaError("missing member 'iv.npz' (schema_version 4) or 'iv.npy' (1-3)", file=where,
                      field="iv.npz")


def decode_iv(data: bytes, *, where: str = "iv.npz", dequantise: bool = True) -> np.ndarray:
    """Decode ``iv.npz`` / ``iv.npy`` bytes (told apart by their magic) to ``(6, F, M)`` float16;
    never unpickles. int8 (versions 3, 4) is de-quantised (q / 127) unless ``dequantise=False``
    (then int8 is returned as stored)."""
    member = "iv.npz" if data[:4] == b"PK\x03\x04" else "iv.npy"
    try:
        if member == "iv.npz":
            inflated = _inflate_single_npz(data)
            if inflated is None:  # not the one-member layout encode_sample writes: read it as any zip
                with zipfile.ZipFile(io.BytesIO(data)) as z:
                    if z.namelist() != ["iv.npy"]:
                        raise ValueError(f"expected one array 'iv', got {z.namelist()}")
                    inflated = z.read("iv.npy")
            data = inflated
        iv = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise SchemaError(f"cannot decode {member[3:]} ({exc})", file=where, field=member) from None
    if iv.ndim != 3 or iv.shape[0] != 6:
        raise SchemaError(f"expected (6, frames, mels), got {iv.shape}", file=where, field=member)
    if iv.dtype == np.int8:  # q / 127 through a 256-entry table (one gather, exact rounding)
        return np.take(_IV_TABLE, iv.view(np.uint8)) if dequantise else iv
    if iv.dtype not in (np.float16, np.float32):
        raise SchemaError(f"expected int8, float16 or float32, got {iv.dtype}", file=where, field=member)
    return iv


_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # a zip local file header (30 bytes)
_CENTRAL_MAGIC = b"PK\x01\x02"


def _inflate_single_npz(data: bytes) -> bytes | None:
    """The ``iv.npy`` bytes of a one-member ``.npz`` as :func:`encode_sample` writes it (sizes in the local
    header, deflated or stored, the central directory right after), inflated with ISA-L (~1.5x zlib's speed
    on these barely compressible int8 features: the loader's largest cost per sample, docs/training.md) and
    checked against the member's CRC-32. ``None`` for any other layout (the caller reads it with zipfile);
    raises ``ValueError`` for a CRC or size mismatch."""
    if len(data) < _LOCAL_HEADER.size:
        return None
    magic, _ver, flags, method, _t, _d, crc, csize, usize, nlen, xlen = _LOCAL_HEADER.unpack_from(data)
    start = _LOCAL_HEADER.size + nlen + xlen
    if flags & 0x08 or method not in (0, 8) or 0xFFFFFFFF in (csize, usize) or             data[_LOCAL_HEADER.size:_LOCAL_HEADER.size + nlen] != b"iv.npy" or             data[start + csize:start + csize + 4] != _CENTRAL_MAGIC or             data.count(_CENTRAL_MAGIC, start + csize) != 1:
        return None
    body = memoryview(data)[start:start + csize]
    out = isal_zlib.decompress(body, -15, usize) if method == 8 else bytes(body)
    if len(out) != usize or zlib.crc32(out) != crc:
        raise ValueError("iv.npy inside iv.npz is corrupt (size or CRC-32 mismatch)")
    return out


_IV_TABLE = (np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float64) / IV_INT8_SCALE).astype(np.float16)


def decode_meta(data: bytes, *, where: str = "json") -> ShardMeta:
    try:
        d = json.loads(data.decode("utf-8"))
    except Exception as exc:
        raise SchemaError(f"cannot decode JSON ({exc})", file=where, field="json") from None
    return ShardMeta.from_dict(d, where=where)


def decode_sample(sample: dict, *, audio: bool = True) -> tuple[np.ndarray | None, np.ndarray, ShardMeta]:
    """Decode a raw webdataset / tarfile sample dict -> ``(foa (4, T) float32 | None, iv, meta)``."""
    where = str(sample.get("__url__", "")) + ":" + str(sample.get("__key__", "?"))
    if "json" not in sample:
        raise SchemaError("missing member 'json'", file=where, field="json")
    meta = decode_meta(sample["json"], where=where)
    check_members(sample, meta.schema_version, where=where)
    member = iv_member(sample, where=where)
    iv = decode_iv(sample[member], where=where)
    foa = decode_foa_sample(sample, meta, where=where)[0] if audio else None
    return foa, iv, meta


def decode_foa_sample(sample: dict, meta: ShardMeta, *, where: str = "sample") -> tuple[np.ndarray, int]:
    """The 4-channel AmbiX FOA ``(4, T)`` float32 of a raw sample of any version, and the rate:
    ``foa.flac`` (versions 1, 2) or ``w.wav`` + ``yzx.flac`` stacked (versions 3, 4, exact 16-bit samples)."""
    if meta.schema_version < 3:
        check_members(sample, meta.schema_version, where=where)
        return decode_foa(sample["foa.flac"], where=where)
    for member in ("w.wav", "yzx.flac"):
        if member not in sample:
            raise SchemaError(f"missing member {member!r} (schema_version {meta.schema_version})", file=where,
                              field=member)
    w, sr = decode_w_wav(sample["w.wav"], where=where, pcm16=True)
    try:
        with sf.SoundFile(io.BytesIO(sample["yzx.flac"])) as f:
            if f.channels != 3:
                raise SchemaError(f"expected 3 channels (Y, Z, X), got {f.channels}", file=where, field="yzx.flac")
            yzx_sr, yzx = f.samplerate, f.read(dtype="int16", always_2d=True)
    except SchemaError:
        raise
    except Exception as exc:
        raise SchemaError(f"cannot decode FLAC ({exc})", file=where, field="yzx.flac") from None
    if yzx_sr != sr or len(yzx) != len(w):
        raise SchemaError(f"yzx.flac ({len(yzx)} frames at {yzx_sr} Hz) does not match w.wav ({len(w)} at {sr} Hz)",
                          file=where, field="yzx.flac")
    foa = np.empty((4, len(w)), np.float32)
    foa[0] = w
    foa[1:] = yzx.T
    foa *= np.float32(2.0 ** -15)
    return foa, sr


_WDS_META = re.compile(r"(^|/)__[^/]*__($|/)")  # WebDataset's metadata files, never sample members


def split_member_name(name: str) -> tuple[str, str] | None:
    """``'dir/key.foa.flac' -> ('dir/key', 'foa.flac')`` as WebDataset splits it (key up to the first
    dot of the base name; extension lower-cased); ``None`` for names that are not sample members."""
    folder, _, base = name.rpartition("/")
    if "." not in base or _WDS_META.search(name):
        return None
    stem, ext = base.split(".", 1)
    if not stem:
        return None
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def group_tar_members(tar: tarfile.TarFile, read: Callable[[str, dict], bool] | None = None
                      ) -> Iterator[tuple[str, dict]]:
    """A shard's samples as ``(key, {ext: member})``: consecutive regular members sharing a key,
    grouped as WebDataset groups them.

    ``read=None``: headers only, each member a ``TarInfo`` the caller reads as it needs (a seekable
    archive). Otherwise members are read as they come, so a stream (``mode="r|"``) works too: a member
    is its bytes where ``read(ext, group_so_far)`` is true, else ``None`` (seen, not read; a seekable
    archive seeks past it). Raises :class:`tarfile.ReadError` for a key that repeats an extension, and
    tarfile's own errors for a corrupt or truncated archive.
    """
    key, group = None, {}
    for info in tar:
        if not info.isfile():
            continue
        parts = split_member_name(info.name)
        if parts is None:
            continue
        if parts[0] != key:
            if group:
                yield key, group
            key, group = parts[0], {}
        if parts[1] in group:
            raise tarfile.ReadError(f"{info.name}: duplicate member name in one sample")
        if read is None:
            group[parts[1]] = info
        else:
            group[parts[1]] = tar.extractfile(info).read() if read(parts[1], group) else None  # type: ignore[union-attr]
    if group:
        yield key, group


def stable_id_int(text: str) -> int:
    """A string id as a signed int64 that is the same on every machine and run (for id tensors)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little",
                          signed=True)
