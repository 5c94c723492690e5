"""The embeddings ``.npz`` files, defined once: this project's layout (:class:`Embeddings`, what ``disse-eval
--embeddings`` reads and ``--save-embeddings`` / ``disse-embed`` write; docs/evaluation.md lists every array) and
the DISSE release's layout (``audio_spatial``, ``spatial_id``, ...; reference §5.5), each beside its reader and
writer, and :func:`load_embeddings_any` that reads either.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from disse.schemas import CaptionRules, SchemaError
from disse.schemas.atomic import atomic_write
from disse.trainer.evaluation import metrics as M

FORMAT_VERSION = 1
EMBEDDING_ARRAYS = ("audio_source", "audio_space", "text_source", "text_space")
ID_ARRAYS = ("source_id", "space_id")
# Physical predictions and targets, real units. pred_direction: (N, 3) vector, x front, y left, z up.
PRED_ARRAYS = ("pred_direction", "pred_distance_m", "pred_area_m2", "pred_t30_ms")
TRUE_ARRAYS = ("true_azimuth_deg", "true_elevation_deg", "true_distance_m", "true_area_m2", "true_t30_ms")
# Physics baselines computed from the input features, no learning. iv_direction: (N, 3) unit vector,
# x front, y left, z up: disse.trainer.model.physics.intensity_direction of the sample's intensity features.
BASELINE_ARRAYS = ("iv_direction",)
IV_MIN_DIRECTIVITY = 0.95  # |I_act| of the cells the baseline keeps: near-plane-wave cells, the direct sound
DIRECTION_ARRAYS = ("pred_direction", "iv_direction")  # (N, 3); every other physical array is (N,)
# caption-rule quantity (shard json key) -> target array
TRUE_OF_QUANTITY = {"azimuth_deg": "true_azimuth_deg", "elevation_deg": "true_elevation_deg",
                    "source_distance_m": "true_distance_m", "area_m2": "true_area_m2", "t30_ms": "true_t30_ms"}
DESC_PREFIX, PROMPT_EMB_PREFIX, PROMPT_LABEL_PREFIX = "desc_", "prompt_emb_", "prompt_label_"


@dataclass
class Embeddings:
    """Paired audio/text embeddings of N items, with ids and optional physical and descriptor data.

    Embedding arrays are ``(N, D)`` float (``*_source`` share one D, ``*_space`` another); ids are
    ``(N,)`` strings or ints. ``physical`` holds any of PRED_ARRAYS / TRUE_ARRAYS, ``(N,)`` in real units
    (``pred_direction`` is ``(N, 3)``) and any of BASELINE_ARRAYS (``iv_direction``, ``(N, 3)``, the
    intensity-vector estimate). ``descriptors[attr]`` is ``(N,)`` labels; ``prompts[attr]`` is
    ``(labels (L,), text-space embeddings (L, D_space))`` for zero-shot classification.
    """

    audio_source: np.ndarray
    audio_space: np.ndarray
    text_source: np.ndarray
    text_space: np.ndarray
    source_id: np.ndarray
    space_id: np.ndarray
    physical: dict[str, np.ndarray] = field(default_factory=dict)
    descriptors: dict[str, np.ndarray] = field(default_factory=dict)
    prompts: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    keys: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.source_id)

    # -- format ----------------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {name: getattr(self, name) for name in EMBEDDING_ARRAYS + ID_ARRAYS}
        out.update(self.physical)
        for attr, labels in self.descriptors.items():
            out[DESC_PREFIX + attr] = labels
        for attr, (labels, emb) in self.prompts.items():
            out[PROMPT_LABEL_PREFIX + attr] = labels
            out[PROMPT_EMB_PREFIX + attr] = emb
        if self.keys is not None:
            out["key"] = self.keys
        out["format_version"] = np.array(FORMAT_VERSION)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], where: str = "embeddings") -> "Embeddings":
        """Build and validate; raises SchemaError naming ``where`` and the offending array."""
        missing = [n for n in EMBEDDING_ARRAYS + ID_ARRAYS if n not in arrays]
        if missing:
            raise SchemaError(f"missing array(s) {missing}; found {sorted(arrays)}", file=where)
        version = arrays.get("format_version")
        if version is not None and int(np.asarray(version)) != FORMAT_VERSION:
            raise SchemaError(f"format_version {int(np.asarray(version))} not supported (reader: {FORMAT_VERSION})",
                              file=where, field="format_version")
        physical = {n: arrays[n] for n in PRED_ARRAYS + TRUE_ARRAYS + BASELINE_ARRAYS if n in arrays}
        descriptors = {n[len(DESC_PREFIX):]: arrays[n] for n in arrays if n.startswith(DESC_PREFIX)}
        prompts = {}
        for n in arrays:
            if n.startswith(PROMPT_EMB_PREFIX):
                attr = n[len(PROMPT_EMB_PREFIX):]
                if PROMPT_LABEL_PREFIX + attr not in arrays:
                    raise SchemaError(f"{n} given without {PROMPT_LABEL_PREFIX + attr}", file=where, field=n)
                prompts[attr] = (arrays[PROMPT_LABEL_PREFIX + attr], arrays[n])
            elif n.startswith(PROMPT_LABEL_PREFIX) and PROMPT_EMB_PREFIX + n[len(PROMPT_LABEL_PREFIX):] not in arrays:
                raise SchemaError(f"{n} given without {PROMPT_EMB_PREFIX + n[len(PROMPT_LABEL_PREFIX):]}",
                                  file=where, field=n)
        emb = cls(**{n: arrays[n] for n in EMBEDDING_ARRAYS + ID_ARRAYS}, physical=physical,
                  descriptors=descriptors, prompts=prompts, keys=arrays.get("key"))
        emb.validate(where)
        return emb

    def save(self, path: str | Path) -> None:
        """Write the ``.npz`` (uncompressed: embeddings do not compress and loading stays fast)."""
        write_npz(path, self.to_arrays())

    @classmethod
    def load(cls, path: str | Path) -> "Embeddings":
        where = str(path)
        if not Path(path).is_file():
            raise SchemaError("embeddings file not found", file=where)
        try:
            with np.load(path, allow_pickle=False) as z:
                if not hasattr(z, "files"):
                    raise SchemaError("not a .npz archive (a single .npy array?)", file=where)
                arrays = {}
                for name in z.files:
                    try:
                        arrays[name] = z[name]
                    except ValueError as exc:
                        if "allow_pickle" in str(exc):
                            raise SchemaError("holds Python objects; store ids and labels as strings or ints",
                                              file=where, field=name) from None
                        raise
        except SchemaError:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise SchemaError(f"not a readable .npz archive ({exc})", file=where) from None
        return cls.from_arrays(arrays, where)

    # -- checks ----------------------------------------------------------------------------------
    def validate(self, where: str = "embeddings") -> None:
        # N is the length most of the required arrays agree on, so the odd one out is the one named
        lengths = [len(np.asarray(getattr(self, k))) for k in EMBEDDING_ARRAYS + ID_ARRAYS]
        n = max(set(lengths), key=lambda v: (lengths.count(v), -lengths.index(v)))
        if n < 2:
            raise SchemaError(f"need at least 2 items, got {n}", file=where, field="source_id")
        for name in ID_ARRAYS:
            ids = np.asarray(getattr(self, name))
            if ids.ndim != 1 or len(ids) != n:
                raise SchemaError(f"shape {ids.shape}, expected ({n},) like the other arrays", file=where, field=name)
            if ids.dtype.kind not in "iuUS":
                raise SchemaError(f"ids must be strings or integers, got dtype {ids.dtype}", file=where, field=name)
        dims = {}
        for name in EMBEDDING_ARRAYS:
            x = np.asarray(getattr(self, name))
            if x.ndim != 2 or x.shape[0] != n:
                raise SchemaError(f"shape {x.shape}, expected ({n}, D) like the other arrays", file=where, field=name)
            _check_float(x, where, name)
            for s in range(0, n, _CHECK_ROWS):  # in slices: no full-size temporaries at 100k x 512
                norms = np.linalg.norm(x[s:s + _CHECK_ROWS], axis=1)
                if (norms < M.EPS_NORM).any():
                    raise SchemaError(f"row {s + int(np.argmax(norms < M.EPS_NORM))} is a zero vector (no direction)",
                                      file=where, field=name)
            dims[name] = x.shape[1]
        for a, b in (("audio_source", "text_source"), ("audio_space", "text_space")):
            if dims[a] != dims[b]:
                raise SchemaError(f"dimension {dims[b]} differs from {a}'s {dims[a]}", file=where, field=b)
        for name, x in self.physical.items():
            x = np.asarray(x)
            want = (n, 3) if name in DIRECTION_ARRAYS else (n,)
            if x.shape != want:
                raise SchemaError(f"shape {x.shape}, expected {want}", file=where, field=name)
            _check_float(x, where, name)
            if name in BASELINE_ARRAYS:  # a zero vector has no direction, and would score 0 degrees
                norms = np.linalg.norm(x, axis=1)
                if (norms < M.EPS_NORM).any():
                    raise SchemaError(f"row {int(np.argmax(norms < M.EPS_NORM))} is a zero vector (no direction)",
                                      file=where, field=name)
        for pred, true in (("pred_distance_m", "true_distance_m"), ("pred_area_m2", "true_area_m2"),
                           ("pred_t30_ms", "true_t30_ms"), ("pred_direction", "true_azimuth_deg"),
                           ("pred_direction", "true_elevation_deg")):
            if pred in self.physical and true not in self.physical:
                raise SchemaError(f"{pred} given without the target {true}", file=where, field=true)
        for attr, labels in self.descriptors.items():
            labels = np.asarray(labels)
            if labels.shape != (n,) or labels.dtype.kind not in "US":
                raise SchemaError(f"expected ({n},) strings, got {labels.shape} {labels.dtype}", file=where,
                                  field=DESC_PREFIX + attr)
        for attr, (labels, emb) in self.prompts.items():
            labels, emb = np.asarray(labels), np.asarray(emb)
            if labels.ndim != 1 or labels.dtype.kind not in "US" or len(np.unique(labels)) != len(labels):
                raise SchemaError("expected (L,) distinct string labels", file=where, field=PROMPT_LABEL_PREFIX + attr)
            if emb.shape != (len(labels), dims["audio_space"]):
                raise SchemaError(f"shape {emb.shape}, expected ({len(labels)}, {dims['audio_space']}) "
                                  "(one text-space embedding per label)", file=where, field=PROMPT_EMB_PREFIX + attr)
            _check_float(emb, where, PROMPT_EMB_PREFIX + attr)
        if self.keys is not None and np.asarray(self.keys).shape != (n,):
            raise SchemaError(f"shape {np.asarray(self.keys).shape}, expected ({n},)", file=where, field="key")

    # -- derived ---------------------------------------------------------------------------------
    def true_direction(self) -> np.ndarray | None:
        p = self.physical
        if "true_azimuth_deg" in p and "true_elevation_deg" in p:
            return M.direction_from_angles(p["true_azimuth_deg"], p["true_elevation_deg"])
        return None

    def descriptor_labels(self, attr: str, rules: CaptionRules | None) -> np.ndarray | None:
        """Labels of one attribute: stored ``desc_<attr>``, else derived from the targets with the rules."""
        if attr in self.descriptors:
            return np.asarray(self.descriptors[attr]).astype(str)
        if rules is None or attr not in rules.attributes:
            return None
        a = rules.attributes[attr]
        values = self.physical.get(TRUE_OF_QUANTITY.get(a.quantity, ""))
        if values is None:
            return None
        if hasattr(rules, "draw_order"):  # the official rule set: "none" where no rule matches
            return np.array([next((b.label for b in a.bins if b.holds(float(v))), "none") for v in values])
        return np.array([a.label_of(float(v)) for v in values])


_CHECK_ROWS = 8192


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray], *, compressed: bool = False) -> Path:
    """The one ``.npz`` writer of both layouts, atomic (:func:`disse.schemas.atomic.atomic_write`); a file object
    keeps numpy from appending ``.npz`` to the name."""
    with atomic_write(path) as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)
    return Path(path)


def _check_float(x: np.ndarray, where: str, name: str) -> None:
    if x.dtype.kind != "f":
        raise SchemaError(f"expected floats, got dtype {x.dtype}", file=where, field=name)
    for s in range(0, len(x), _CHECK_ROWS):
        bad = ~np.isfinite(x[s:s + _CHECK_ROWS])
        if bad.any():
            row = s + int(np.argwhere(bad)[0][0])
            raise SchemaError(f"non-finite value (NaN or inf) at row {row}", file=where, field=name)


# --------------------------------------------------------------------------- the release's layout
EMBEDDING_KEYS = ("audio_source", "audio_spatial", "text_source", "text_spatial")
ID_KEYS = ("source_id", "spatial_id")
# read-time aliases of the release's cache reader
ALIASES = {"audio_space": "audio_spatial", "text_space": "text_spatial", "a_src": "audio_source",
           "a_spa": "audio_spatial", "t_src": "text_source", "t_spa": "text_spatial",
           "src_id": "source_id", "space_id": "spatial_id", "spa_id": "spatial_id"}


def validate_embeddings(data: Mapping[str, np.ndarray], *, where: str = "embeddings") -> dict[str, np.ndarray]:
    """Resolve aliases and check: 2-D finite numeric embeddings with one row per id, both id arrays."""
    out: dict[str, np.ndarray] = {}
    for k, v in data.items():
        name = ALIASES.get(k, k)
        if name in EMBEDDING_KEYS or name in ID_KEYS:
            if name in out:
                raise ValueError(f"{where}: {name!r} given twice (under an alias)")
            out[name] = np.asarray(v)
    missing = [k for k in ID_KEYS if k not in out]
    if missing:
        raise ValueError(f"{where}: missing {missing}")
    emb = [k for k in EMBEDDING_KEYS if k in out]
    if not emb:
        raise ValueError(f"{where}: none of {EMBEDDING_KEYS}")
    n = len(out["source_id"])
    for k in ID_KEYS:
        out[k] = out[k].reshape(-1)
        if len(out[k]) != n:
            raise ValueError(f"{where}: {k} has {len(out[k])} rows, source_id has {n}")
    for k in emb:
        e = out[k]
        if e.ndim != 2 or e.shape[0] != n or not np.issubdtype(e.dtype, np.number) or not np.isfinite(e).all():
            raise ValueError(f"{where}: {k} must be finite numeric (N={n}, D), got {e.shape} {e.dtype}")
    return out


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read a release-layout ``.npz`` (never unpickles)."""
    with np.load(path, allow_pickle=False) as f:
        return validate_embeddings({k: f[k] for k in f.files}, where=str(path))


def save_npz(path: str | Path, data: Mapping[str, np.ndarray]) -> Path:
    """Write the release's layout: the embeddings present, ``source_id`` and ``spatial_id`` as numpy
    unicode arrays, compressed."""
    data = validate_embeddings(data, where=str(path))
    out = {k: np.asarray(data[k], dtype=np.float32) for k in EMBEDDING_KEYS if k in data}
    for k in ID_KEYS:
        out[k] = np.asarray([str(v) for v in data[k]], dtype=np.str_)
    return write_npz(path, out, compressed=True)


def to_official_arrays(emb: Embeddings) -> dict[str, np.ndarray]:
    """This project's embeddings in the release's ``.npz`` names (reference §5.5): ``*_space`` ->
    ``*_spatial``, ``space_id`` -> ``spatial_id``. (On the official grid ``space_id`` is the RIR stem,
    as the release's ``spatial_id``; on this project's shards it is the descriptor tuple.)"""
    return {"audio_source": emb.audio_source, "audio_spatial": emb.audio_space, "text_source": emb.text_source,
            "text_spatial": emb.text_space, "source_id": np.asarray(emb.source_id).astype(str),
            "spatial_id": np.asarray(emb.space_id).astype(str)}


def load_embeddings_any(path: str | Path) -> tuple[Embeddings | None, dict[str, np.ndarray]]:
    """Read either layout: this project's (``audio_space``, ``space_id``, ...) or the release's
    (``audio_spatial``, ``spatial_id``, aliases, any subset of modalities).

    Returns ``(Embeddings or None, release-layout arrays)``: the :class:`Embeddings` exists when all
    four embeddings are present (needed for this project's metrics).
    """
    where = str(path)
    if not Path(path).is_file():
        raise SchemaError("embeddings file not found", file=where)
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise SchemaError(f"not a readable .npz archive ({exc})", file=where) from None
    release_only = {"audio_spatial", "text_spatial", "spatial_id"} | (set(ALIASES) - {"audio_space", "text_space",
                                                                                        "space_id"})
    if not names & release_only:  # this project's layout (its own reader names what is wrong)
        emb = Embeddings.load(path)
        return emb, to_official_arrays(emb)
    try:
        data = load_npz(path)
    except ValueError as exc:
        raise SchemaError(f"neither this project's embeddings layout nor the release's ({exc})", file=where) from None
    if set(EMBEDDING_KEYS) <= set(data):
        emb = Embeddings.from_arrays({"audio_source": data["audio_source"].astype(np.float32),
                                      "audio_space": data["audio_spatial"].astype(np.float32),
                                      "text_source": data["text_source"].astype(np.float32),
                                      "text_space": data["text_spatial"].astype(np.float32),
                                      "source_id": data["source_id"], "space_id": data["spatial_id"]}, where)
        return emb, data
    return None, data
