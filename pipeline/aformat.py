"""Tetrahedral A-format RIRs as the DISSE release makes and reads them (reference §2.2, §4.2).

Capsules m0..m3 sit on a regular tetrahedron of radius 5 cm at offsets (+v,+v,+v), (+v,-v,-v),
(-v,+v,-v), (-v,-v,+v), v = r / sqrt(3) (x front, y = +Y, z up), each a cardioid (p = 0.5) facing
outwards. The release's A -> B matrix, halves, no filters, no extra gain::

    W = (m0 + m1 + m2 + m3) / 2     X = (m0 + m1 - m2 - m3) / 2
    Y = (m0 - m1 + m2 - m3) / 2     Z = (m0 - m1 - m2 + m3) / 2

stacked as AmbiX order [W, Y, Z, X]. For ideal coincident cardioids a plane wave s from unit
direction u gives W = s and [X, Y, Z] = s u / sqrt(3): the dipoles are 1/sqrt(3) of SN3D.

* ``aformat_to_ambix(a, sn3d=False)`` is the release's matrix exactly (the official grid uses it).
* ``aformat_to_ambix(a)`` (``sn3d=True``, what ``foa_format = aformat`` in a RIR CSV does on read)
  multiplies the dipoles by sqrt(3) so the result is AmbiX / SN3D (a plane wave has |XYZ| = W, which
  the RIR sanity check and this project's features expect). W is unchanged, and the official intensity
  features divide act and rea by the active norm, so they are the same either way (up to the 1e-6
  threshold and float rounding).
:func:`simulate_catalogue_rir` regenerates one row of the release's ``rir_fixed.csv`` with
pyroomacoustics as its ``generate-rirs`` does (48 kHz shoebox, ``max_order`` 10, one
``Material(alpha)``, default air absorption, no ray tracing, array at the room centre, PCM_16 WAV).
The release pinned pyroomacoustics 0.8.4; other versions may differ in the last bits.
"""
from __future__ import annotations

import ast
import csv
import math
from pathlib import Path
from typing import Mapping

import numpy as np
import pyroomacoustics as pra
import soundfile as sf
from pyroomacoustics.directivities import CardioidFamily, DirectionVector
from tqdm import tqdm

from disse.schemas import SchemaError
from disse.schemas.atomic import atomic_write

TETRA_RADIUS_M = 0.05
_V = TETRA_RADIUS_M / math.sqrt(3.0)
CAPSULE_SIGNS = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=np.float64)
CAPSULE_OFFSETS_M = CAPSULE_SIGNS * _V  # (4 capsules, xyz)
# rows W, Y, Z, X (AmbiX order); columns m0..m3
A_TO_B = 0.5 * np.array([[1, 1, 1, 1],     # W
                         [1, -1, 1, -1],   # Y
                         [1, -1, -1, 1],   # Z
                         [1, 1, -1, -1]],  # X
                        dtype=np.float64)
CARDIOID_P = 0.5
MAX_ORDER = 10


SN3D_DIPOLE_GAIN = math.sqrt(3.0)  # ideal cardioid capsules: the release's matrix leaves dipoles at 1/sqrt(3)


def aformat_to_ambix(a: np.ndarray, sn3d: bool = True) -> np.ndarray:
    """A-format ``(4, T)`` (m0..m3) -> ``(4, T)`` [W, Y, Z, X] (same float dtype).

    ``sn3d=False``: the release's matrix exactly. ``sn3d=True``: then Y, Z, X times sqrt(3) (AmbiX/SN3D).
    """
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[0] != 4:
        raise ValueError(f"A-format must be (4, T), got {a.shape}")
    m = A_TO_B.copy()
    if sn3d:
        m[1:] *= SN3D_DIPOLE_GAIN
    return m.astype(a.dtype if a.dtype.kind == "f" else np.float64) @ a


def coincident_capsule_gains(azimuth_deg: float, elevation_deg: float, p: float = CARDIOID_P) -> np.ndarray:
    """Gains ``(4,)`` of ideal coincident capsules (``p + (1 - p) cos``) for a plane wave from a direction
    (azimuth counter-clockwise towards +y, elevation up)."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    u = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    return p + (1 - p) * (CAPSULE_SIGNS / math.sqrt(3.0)) @ u


# --------------------------------------------------------------------------- the release's catalogue

#: Columns of the release's ``rir_fixed.csv`` that regenerating a RIR reads (docs/official.md); other
#: columns are ignored. ``dims`` and ``source_pos_xyz`` are lists of three numbers (``[6.0, 5.0, 3.0]``).
CATALOGUE_RIR_COLUMNS = ("rir_path", "dims", "alpha", "fs", "source_distance_m", "azimuth_deg",
                         "elevation_deg", "source_pos_xyz")

def _three(value: str, field: str, where: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in ast.literal_eval(str(value)))
    except (SyntaxError, ValueError, TypeError):
        raise SchemaError(f"expected three numbers like [1.0, 2.0, 3.0], got {value!r}", file=where,
                          field=field) from None
    if len(out) != 3:
        raise SchemaError(f"expected three numbers, got {value!r}", file=where, field=field)
    return out  # type: ignore[return-value]


def source_position(row: Mapping[str, str], where: str = "rir_fixed.csv") -> tuple[np.ndarray, np.ndarray]:
    """(room dims, unrounded source position) of a catalogue row, checked against ``source_pos_xyz``.

    Position = room centre + d (cos el cos az, cos el sin az, sin el); its 3-decimal rounding must equal
    the recorded ``source_pos_xyz``, else a SchemaError naming the row's field.
    """
    dims = np.array(_three(row["dims"], "dims", where))
    try:
        d, az, el = (float(row[k]) for k in ("source_distance_m", "azimuth_deg", "elevation_deg"))
    except (KeyError, ValueError) as exc:
        raise SchemaError(f"bad or missing polar position ({exc})", file=where) from None
    a, e = math.radians(az), math.radians(el)
    pos = dims / 2.0 + d * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    recorded = _three(row["source_pos_xyz"], "source_pos_xyz", where)
    if tuple(round(float(v), 3) for v in pos) != recorded:
        raise SchemaError(f"polar metadata gives {tuple(round(float(v), 3) for v in pos)}, recorded {recorded}",
                          file=where, field="source_pos_xyz")
    return dims, pos


def simulate_catalogue_rir(row: Mapping[str, str], where: str = "rir_fixed.csv") -> tuple[np.ndarray, int]:
    """One ``rir_fixed.csv`` row -> A-format RIR ``(4, L)`` float32 (m0..m3) and its rate (48000)."""
    dims, pos = source_position(row, where)
    try:
        fs, alpha = int(float(row["fs"])), float(row["alpha"])
    except (KeyError, ValueError) as exc:
        raise SchemaError(f"bad or missing fs / alpha ({exc})", file=where) from None
    room = pra.ShoeBox(list(dims), fs=fs, materials=pra.Material(alpha), max_order=MAX_ORDER)
    room.add_source(list(pos))
    centre = dims / 2.0
    directivities = []
    for x, y, z in CAPSULE_OFFSETS_M:
        orientation = DirectionVector(azimuth=math.degrees(math.atan2(y, x)) % 360.0,
                                      colatitude=math.degrees(math.acos(z / TETRA_RADIUS_M)), degrees=True)
        directivities.append(CardioidFamily(orientation=orientation, p=CARDIOID_P, gain=1.0))
    room.add_microphone_array(pra.MicrophoneArray(centre[:, None] + CAPSULE_OFFSETS_M.T, fs=fs,
                                                  directivity=directivities))
    room.compute_rir()
    responses = [np.asarray(room.rir[m][0]) for m in range(4)]
    length = max(r.size for r in responses)
    return np.stack([np.pad(r, (0, length - r.size)) for r in responses]).astype(np.float32), fs


def read_catalogue(path: str | Path) -> list[dict[str, str]]:
    """Rows of a release catalogue CSV (``utf-8-sig``, as the release reads it); empty is an error."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError("catalogue not found", file=str(path))
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SchemaError("catalogue holds no rows", file=str(path))
    return rows


def _missing_columns(missing: list[str], header: list[str], why: str = "") -> str:
    return (f"missing column(s) {', '.join(missing)} (found: {', '.join(header)}){why}; give the release's "
            f"evaluation/rir_fixed.csv, with columns {', '.join(CATALOGUE_RIR_COLUMNS)} (docs/official.md)")


def regenerate_catalogue_rirs(catalogue: str | Path, out_dir: str | Path, *, force: bool = False,
                              limit: int | None = None, progress: bool = False) -> list[Path]:
    """Write ``<out_dir>/<basename of rir_path>`` (PCM_16 WAV, [T, 4] A-format) for every catalogue row;
    existing files are kept unless ``force``. Returns the paths in catalogue order."""
    rows = read_catalogue(catalogue)[:limit]
    out = Path(out_dir)
    header = list(rows[0])
    if "rir_path" not in header:
        raise SchemaError(_missing_columns(["rir_path"], header), file=str(catalogue))
    todo = [r for r in rows if force or not (out / Path(str(r.get("rir_path") or "").strip()).name).is_file()]
    missing = [c for c in CATALOGUE_RIR_COLUMNS if c not in header]
    if todo and missing:  # a catalogue whose files all exist needs no simulation columns
        raise SchemaError(_missing_columns(missing, header, f", needed to simulate {len(todo)} RIR(s) not in {out}"),
                          file=str(catalogue))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, row in enumerate(tqdm(rows, desc="official RIRs", unit="RIR", disable=not progress), start=1):
        where = f"{catalogue} row {i}"
        name = Path(str(row.get("rir_path") or "").strip()).name
        if not name:
            raise SchemaError("missing rir_path", file=where, field="rir_path")
        target = out / name
        paths.append(target)
        if target.is_file() and not force:
            continue
        rir, fs = simulate_catalogue_rir(row, where)
        with atomic_write(target) as f:
            sf.write(f, rir.T, fs, subtype="PCM_16", format="WAV")
    return paths
