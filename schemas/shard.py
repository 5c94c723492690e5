"""Shard sample, schema version 1 (DESIGN.md).

A sample is three tar members sharing a dot-free ``__key__``:

* ``foa.flac`` -- 4-channel AmbiX FOA (ACN W, Y, Z, X; SN3D), 48 kHz, 24-bit FLAC
* ``iv.npy``   -- float16 ``(6, n_frames, n_mels)``: I_act (x, y, z) then I_rea (x, y, z)
* ``json``     -- :class:`ShardMeta` as UTF-8 JSON (sorted keys, so bytes are reproducible)
"""
from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import soundfile as sf

from disse.schemas.errors import SchemaError

SCHEMA_VERSION = 1
FOA_CHANNELS = ("W", "Y", "Z", "X")  # AmbiX / ACN order
IV_CHANNELS = ("act_x", "act_y", "act_z", "rea_x", "rea_y", "rea_z")
FLAC_SUBTYPE = "PCM_24"


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
    features: dict          # FeatureParams.to_dict() used to compute iv.npy
    render: dict = field(default_factory=dict)  # seed, gain, rule-table version, ...
    schema_version: int = SCHEMA_VERSION

    def to_json_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "json") -> "ShardMeta":
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SchemaError(f"schema_version {version!r} not supported (this reader: {SCHEMA_VERSION})",
                              file=where, field="schema_version")
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
    """Encode one sample for a tar writer. foa: ``(4, T)`` float, iv: ``(6, F, M)``."""
    check_key(meta.key)
    if foa.ndim != 2 or foa.shape[0] != 4:
        raise SchemaError(f"FOA must be (4, T), got {foa.shape}", file=meta.key, field="foa.flac")
    if iv.ndim != 3 or iv.shape[0] != 6:
        raise SchemaError(f"iv must be (6, frames, mels), got {iv.shape}", file=meta.key, field="iv.npy")
    if np.abs(foa).max(initial=0.0) > 1.0:
        raise SchemaError("FOA exceeds full scale; normalise before encoding", file=meta.key,
                          field="foa.flac")
    flac = io.BytesIO()
    sf.write(flac, np.ascontiguousarray(foa.T), sample_rate, format="FLAC", subtype=FLAC_SUBTYPE)
    npy = io.BytesIO()
    np.save(npy, iv.astype(np.float16), allow_pickle=False)
    return {"__key__": meta.key, "foa.flac": flac.getvalue(), "iv.npy": npy.getvalue(),
            "json": meta.to_json_bytes()}


def decode_foa(data: bytes, *, where: str = "foa.flac") -> tuple[np.ndarray, int]:
    """Decode ``foa.flac`` bytes to ``(4, T)`` float32 and the sample rate."""
    try:
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:
        raise SchemaError(f"cannot decode FLAC ({exc})", file=where, field="foa.flac") from None
    if audio.shape[1] != 4:
        raise SchemaError(f"expected 4 channels, got {audio.shape[1]}", file=where, field="foa.flac")
    return np.ascontiguousarray(audio.T), sr


def decode_iv(data: bytes, *, where: str = "iv.npy") -> np.ndarray:
    """Decode ``iv.npy`` bytes to ``(6, F, M)`` float16 (never unpickles)."""
    try:
        iv = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise SchemaError(f"cannot decode npy ({exc})", file=where, field="iv.npy") from None
    if iv.ndim != 3 or iv.shape[0] != 6:
        raise SchemaError(f"expected (6, frames, mels), got {iv.shape}", file=where, field="iv.npy")
    return iv


def decode_meta(data: bytes, *, where: str = "json") -> ShardMeta:
    try:
        d = json.loads(data.decode("utf-8"))
    except Exception as exc:
        raise SchemaError(f"cannot decode JSON ({exc})", file=where, field="json") from None
    return ShardMeta.from_dict(d, where=where)


def decode_sample(sample: dict, *, audio: bool = True) -> tuple[np.ndarray | None, np.ndarray, ShardMeta]:
    """Decode a raw webdataset / tarfile sample dict -> ``(foa (4, T) float32 | None, iv, meta)``."""
    where = str(sample.get("__url__", "")) + ":" + str(sample.get("__key__", "?"))
    for member in ("foa.flac", "iv.npy", "json"):
        if member not in sample:
            raise SchemaError(f"missing member {member!r}", file=where, field=member)
    meta = decode_meta(sample["json"], where=where)
    iv = decode_iv(sample["iv.npy"], where=where)
    foa = decode_foa(sample["foa.flac"], where=where)[0] if audio else None
    return foa, iv, meta


def stable_id_int(text: str) -> int:
    """A string id as a signed int64 that is the same on every machine and run (for id tensors)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little",
                          signed=True)
