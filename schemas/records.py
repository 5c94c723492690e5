"""Input records: the dry-clip CSV and the RIR CSV, validated row by row.

Both readers raise :class:`SchemaError` naming file, row and field. Pass a list as ``skipped`` to
collect bad rows there instead (the render manifest counts them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from disse.schemas.errors import SchemaError

AUDIO_EXTENSIONS = (".flac", ".wav", ".mp3", ".ogg")
CLIP_PATH_COLUMNS = ("path", "audio_path", "file", "filepath")
RIR_COLUMNS = ("rir_path", "azimuth_deg", "elevation_deg", "source_distance_m", "area_m2",
               "fullband_T30_ms")
FOA_FORMATS = ("ambix", "fuma", "aformat")  # aformat: the DISSE release's tetrahedral capsules m0..m3


@dataclass(frozen=True)
class DryClip:
    """One captioned mono clip. ``path`` is resolved (it may not exist: render reports that).

    ``source_id`` names the *recording*: several caption rows of one audio file (AudioCaps val/test,
    Clotho) share it, so they land in one split and count as positives of each other. It is the
    CSV's ``source_id`` column when present, else the path column's value without its extension,
    else (files found by id) the ``audiocap_id``.
    """

    audiocap_id: str
    caption: str
    path: Path
    source_id: str = ""

    def __post_init__(self) -> None:
        if not self.source_id:
            object.__setattr__(self, "source_id", self.audiocap_id)


@dataclass(frozen=True)
class RirRecord:
    """One FOA room impulse response with its physical metadata in real units.

    azimuth_deg: 0 = front, positive = left (counter-clockwise), wrapped to (-180, 180].
    elevation_deg: positive = up, in [-90, 90]. t30_ms: full-band T30 in milliseconds.
    """

    rir_id: str
    rir_path: Path
    azimuth_deg: float
    elevation_deg: float
    source_distance_m: float
    area_m2: float
    t30_ms: float
    foa_format: str = "ambix"
    extra: dict = field(default_factory=dict, compare=False)


def wrap_azimuth(az_deg: float) -> float:
    """Wrap an angle in degrees to (-180, 180]."""
    wrapped = math.fmod(az_deg + 180.0, 360.0)
    if wrapped <= 0:
        wrapped += 360.0
    return wrapped - 180.0


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise SchemaError("file not found", file=str(path))
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas' parser errors are long; keep the gist and the file
        raise SchemaError(f"cannot parse CSV ({type(exc).__name__}: {exc})", file=str(path)) from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SchemaError(f"missing column(s) {missing}; found {list(df.columns)}", file=str(path))
    return df


def _text(row: pd.Series, col: str, path: Path, i: int) -> str:
    value = str(row[col]).strip()
    if value == "" or value.lower() in ("nan", "none", "null"):
        raise SchemaError("empty or NaN value", file=str(path), row=i, field=col)
    return value


def _number(row: pd.Series, col: str, path: Path, i: int, *, lo: float | None = None,
            hi: float | None = None, positive: bool = False) -> float:
    raw = _text(row, col, path, i)
    try:
        value = float(raw)
    except ValueError:
        raise SchemaError(f"not a number: {raw!r}", file=str(path), row=i, field=col) from None
    if not math.isfinite(value):
        raise SchemaError(f"not finite: {raw!r}", file=str(path), row=i, field=col)
    if positive and value <= 0:
        raise SchemaError(f"must be > 0, got {value}", file=str(path), row=i, field=col)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise SchemaError(f"must be in [{lo}, {hi}], got {value}", file=str(path), row=i, field=col)
    return value


def _find_audio(audio_dir: Path, clip_id: str) -> Path:
    for ext in AUDIO_EXTENSIONS:
        candidate = audio_dir / f"{clip_id}{ext}"
        if candidate.exists():
            return candidate
    return audio_dir / f"{clip_id}{AUDIO_EXTENSIONS[0]}"  # render reports it as missing


def read_clips_csv(csv_path: str | Path, audio_dir: str | Path | None = None,
                   skipped: list[SchemaError] | None = None) -> list[DryClip]:
    """Read ``audiocap_id, caption`` plus a path column (or files ``{audio_dir}/{audiocap_id}.{ext}``).

    Relative paths are resolved against ``audio_dir`` if given, else the CSV's folder. Each clip's
    ``source_id`` (its recording) is the optional ``source_id`` column, else the path column's
    value without extension, else the ``audiocap_id`` (see :class:`DryClip`).
    """
    path = Path(csv_path)
    df = _read_csv(path, ("audiocap_id", "caption"))
    path_col = next((c for c in CLIP_PATH_COLUMNS if c in df.columns), None)
    if path_col is None and audio_dir is None:
        raise SchemaError(f"no path column ({'/'.join(CLIP_PATH_COLUMNS)}) and no audio directory given",
                          file=str(path))
    base = Path(audio_dir) if audio_dir is not None else path.parent
    clips, seen = [], set()
    for i, (_, row) in enumerate(df.iterrows(), start=1):
        try:
            clip_id = _text(row, "audiocap_id", path, i)
            caption = _text(row, "caption", path, i)
            if clip_id in seen:
                raise SchemaError(f"duplicate audiocap_id {clip_id!r}", file=str(path), row=i,
                                  field="audiocap_id")
            if path_col is not None:
                given = _text(row, path_col, path, i)
                p = Path(given)
                p = p if p.is_absolute() else base / p
                recording = str(Path(given).with_suffix("")).replace("\\", "/")
            else:
                p = _find_audio(base, clip_id)
                recording = clip_id
            if "source_id" in df.columns:
                recording = _text(row, "source_id", path, i)
        except SchemaError as err:
            if skipped is None:
                raise
            skipped.append(err)
            continue
        seen.add(clip_id)
        clips.append(DryClip(audiocap_id=clip_id, caption=caption, path=p, source_id=recording))
    return clips


def read_rirs_csv(csv_path: str | Path, skipped: list[SchemaError] | None = None) -> list[RirRecord]:
    """Read the RIR CSV (``rir_path, azimuth_deg, elevation_deg, source_distance_m, area_m2,
    fullband_T30_ms``; optional ``rir_id``, ``foa_format`` = ambix|fuma|aformat; extra columns kept).

    Relative ``rir_path`` values are resolved against the CSV's folder.
    """
    path = Path(csv_path)
    df = _read_csv(path, RIR_COLUMNS)
    known = set(RIR_COLUMNS) | {"rir_id", "foa_format"}
    records, seen = [], set()
    for i, (_, row) in enumerate(df.iterrows(), start=1):
        try:
            rir_path = Path(_text(row, "rir_path", path, i))
            rir_path = rir_path if rir_path.is_absolute() else path.parent / rir_path
            rir_id = _text(row, "rir_id", path, i) if "rir_id" in df.columns else rir_path.stem
            rir_id = rir_id.replace(".", "_")  # __key__ must be dot-free
            if rir_id in seen:
                raise SchemaError(f"duplicate rir_id {rir_id!r}", file=str(path), row=i, field="rir_id")
            fmt = "ambix"
            if "foa_format" in df.columns and str(row["foa_format"]).strip():
                fmt = str(row["foa_format"]).strip().lower()
                if fmt not in FOA_FORMATS:
                    raise SchemaError(f"must be one of {FOA_FORMATS}, got {fmt!r}", file=str(path),
                                      row=i, field="foa_format")
            record = RirRecord(
                rir_id=rir_id,
                rir_path=rir_path,
                azimuth_deg=wrap_azimuth(_number(row, "azimuth_deg", path, i)),
                elevation_deg=_number(row, "elevation_deg", path, i, lo=-90, hi=90),
                source_distance_m=_number(row, "source_distance_m", path, i, positive=True),
                area_m2=_number(row, "area_m2", path, i, positive=True),
                t30_ms=_number(row, "fullband_T30_ms", path, i, positive=True),
                foa_format=fmt,
                extra={c: row[c] for c in df.columns if c not in known},
            )
        except SchemaError as err:
            if skipped is None:
                raise
            skipped.append(err)
            continue
        seen.add(rir_id)
        records.append(record)
    return records
