"""Embed real FOA recordings and captions with a trained model: ``disse-embed`` and a Python API.

Any first-order-ambisonics file (AmbiX or FuMa; WAV, FLAC or anything libsndfile reads; any rate;
any length) and/or captions -> source and spatial embeddings, physical predictions and zero-shot
descriptors, written in the ``.npz`` layout ``disse-eval --embeddings`` reads (docs/evaluation.md).

Two kinds of model, told apart by the checkpoint's keys:

* **this project's** training checkpoints (``runs/*/checkpoints/*.pt``, DELSA): the recording is
  resampled to 48 kHz, converted to AmbiX, cut into 10 s windows (shorter ones tiled), level
  normalised as ``disse-synth render`` does, and its intensity features computed with the shard
  feature parameters (``features``, default the packaged configs/features.yaml);
* **the official release** (``disse_epoch20.pt``, :mod:`disse.trainer.model.official`): the release's
  own front end, i.e. W at 48 kHz through the CLAP extractor and 16 kHz intensity vectors
  (:mod:`disse.pipeline.official_features`), no level normalisation.

This module is the one place the trainer side uses the synthesis front end (``disse.pipeline``:
audio decoding, FuMa conversion, intensity features), so that a recording is featurised exactly
as the shards the model was trained on.

Python API::

    from disse.trainer.evaluation.embedder import Embedder
    emb = Embedder.load("runs/demo/checkpoints/best.pt")          # or the released disse_epoch20.pt
    audio = emb.embed_audio(["take1.wav"], foa_format="ambix")    # dict of (N, ...) arrays; "fuma" for FuMa files
    text = emb.embed_text(["A dog barks to the left of a small room."])
    emb.save("emb.npz", emb.embed(audio_paths=["take1.wav"], captions=["A dog barks ..."]))
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from disse.schemas import SchemaError, load_caption_rules
from disse.pipeline.frontend import FOA_FORMATS, SEGMENTS, FoaFormatWarning, read_foa, windows  # noqa: F401
from disse.schemas.features import FeatureParams, OfficialFeatureParams, load_feature_params
from disse.trainer.evaluation.embeddings import EMBEDDING_ARRAYS, PROMPT_EMB_PREFIX, PROMPT_LABEL_PREFIX, Embeddings, \
    write_npz
from disse.trainer.evaluation.inference import encoder_for, run, zero_shot_prototypes
from disse.trainer.model.factory import load_delsa, load_official
from disse.trainer.model.official import OfficialConfig
from disse.trainer.model.weights import Checkpoint, as_checkpoint

# evaluator target arrays (docs/evaluation.md) and the estimate each one turns into a scored pred_*
TARGETS = ("true_azimuth_deg", "true_elevation_deg", "true_distance_m", "true_area_m2", "true_t30_ms")
TARGETS_OF_ESTIMATE = {("true_azimuth_deg", "true_elevation_deg"): "est_direction",
                       ("true_distance_m",): "est_distance_m", ("true_area_m2",): "est_area_m2",
                       ("true_t30_ms",): "est_t30_ms"}
# manifest column -> target array
MANIFEST_TARGETS = {"azimuth_deg": "true_azimuth_deg", "elevation_deg": "true_elevation_deg",
                    "source_distance_m": "true_distance_m", "area_m2": "true_area_m2", "t30_ms": "true_t30_ms"}


@dataclass
class AudioItem:
    """One 10 s window of a recording, ready for a model: AmbiX FOA ``(4, clip_samples)`` at 48 kHz."""

    key: str
    foa: np.ndarray


class Embedder:
    """A loaded model plus its front end. Build with :meth:`load`.

    ``kind`` is ``"project"`` (DELSA) or ``"official"`` (the release). Outputs are numpy arrays keyed by
    the ``.npz`` names of docs/evaluation.md (embeddings L2-normalised, float32).
    """

    def __init__(self, model: Any, kind: str, *, features: FeatureParams | None = None, rules: Any = None,
                 device: str = "cpu", zero_shot: str | None = None) -> None:
        self.model, self.kind, self.device = model, kind, device
        self.features = features if features is not None else load_feature_params()
        if kind == "project" and isinstance(self.features, OfficialFeatureParams):
            raise SchemaError("a project checkpoint needs the project feature preset", field="features")
        self.encoder = encoder_for(model, device, self.features)
        self.rules = rules if rules is not None else load_caption_rules("official" if kind == "official" else None)
        # the project's prompt ensemble needs its own rule table; the release's rules give one prompt per label
        self.zero_shot = zero_shot or ("single" if kind == "official" else "ensemble")
        self._prompts: dict | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, checkpoint: str | Path | Checkpoint, *, device: str = "cpu", roberta_dir: str | None = None,
             modalities: Sequence[str] | None = None, features: str | None = None, rules: str | None = None,
             zero_shot: str | None = None, strict: bool = True, text_max_length: int = 512) -> "Embedder":
        """Load a project training checkpoint or the released one (told apart by their keys), from a path or a
        :class:`~disse.trainer.model.weights.Checkpoint` already read.

        Official: ``roberta_dir`` (a local roberta-base folder) is needed for text; without it the model
        is built audio-only. ``features`` (project models): a feature-parameter YAML, default packaged.
        """
        ckpt = as_checkpoint(checkpoint, expect=("project", "official"), what="--checkpoint")
        rule_table = load_caption_rules(rules) if rules else None
        if ckpt.kind == "official":
            mods = list(modalities) if modalities else (["audio", "text"] if roberta_dir else ["audio"])
            cfg = OfficialConfig(roberta_dir=roberta_dir, modalities=mods, strict=strict,
                                 text_max_length=text_max_length)
            return cls(load_official(ckpt, cfg, device), "official", features=OfficialFeatureParams(),
                       rules=rule_table, device=device, zero_shot=zero_shot)
        model = load_delsa(ckpt, device)
        params = load_feature_params(features) if features else None
        trained_rules = (ckpt.config.get("eval") or {}).get("caption_rules")
        if rule_table is None and trained_rules:
            rule_table = load_caption_rules(trained_rules)
        return cls(model, "project", features=params, rules=rule_table, device=device, zero_shot=zero_shot)

    @property
    def has_text(self) -> bool:
        return self.encoder.has_text

    @property
    def has_audio(self) -> bool:
        return self.encoder.has_audio

    # ------------------------------------------------------------------ audio
    def audio_items(self, paths: Sequence[str | Path], *, foa_format: str | Sequence[str] = "ambix",
                    segments: str = "first", mirror_left_right: bool = False) -> list[AudioItem]:
        """Read and window recordings -> items keyed ``path`` (or ``path#k`` for the k-th window)."""
        fmts = [foa_format] * len(paths) if isinstance(foa_format, str) else list(foa_format)
        if len(fmts) != len(paths):
            raise SchemaError("one FOA format per file", field="format")
        n = self.features.clip_samples
        items = []
        for path, fmt in zip(paths, fmts):
            foa = read_foa(path, fmt, self.features.sample_rate, mirror_left_right,
                           resampler="torchaudio" if self.kind == "official" else "poly")
            parts = windows(foa, n, segments)
            for k, part in enumerate(parts):
                items.append(AudioItem(str(path) if len(parts) == 1 else f"{path}#{k}", part))
        return items

    def embed_items(self, items: Sequence[AudioItem], batch_size: int = 8) -> dict[str, np.ndarray]:
        """Audio items -> ``audio_source``, ``audio_space`` (N, D), the intensity-vector baseline
        ``iv_direction`` (N, 3) and the physical predictions, through the one inference loop
        (:func:`disse.trainer.evaluation.inference.run`).

        Project models: ``est_direction`` (N, 3; x front, y left, z up), ``est_azimuth_deg``,
        ``est_elevation_deg``, ``est_distance_m``, ``est_area_m2``, ``est_t30_ms`` (N,; real units).
        (:meth:`embed` renames ``est_*`` to the evaluator's ``pred_*`` where targets are given: disse-eval scores
        a prediction only beside its target.) Official: the release's raw head outputs ``official_direction``
        (N, 2; trained against [az, el] in radians by cosine, so only its angle in the (az, el) plane means
        anything), ``official_area_z``, ``official_distance_z``, ``official_reverb_z`` (N,; z-scores, the release
        publishes no statistics). Plus ``key``.
        """
        if not self.has_audio:
            raise SchemaError("this model was loaded without its audio side", field="modalities")
        if not items:
            raise SchemaError("no audio to embed", field="audio")

        def batches():
            for i in range(0, len(items), batch_size):
                chunk = items[i:i + batch_size]
                ws, ivs = zip(*(self.encoder.inputs(it.foa) for it in chunk))
                yield {"waveform": torch.from_numpy(np.stack(ws)), "iv": torch.from_numpy(np.stack(ivs)),
                       "key": [it.key for it in chunk]}

        cols = run(self.encoder, batches(), with_text=False)
        arrays = {k: np.asarray(v, dtype=np.float32) for k, v in cols.items() if k not in ("key", "descriptors")}
        arrays["key"] = np.array([it.key for it in items])
        arrays.update(self.zero_shot_descriptors(arrays["audio_space"]))
        return arrays

    def embed_audio(self, paths: Sequence[str | Path], *, foa_format: str | Sequence[str] = "ambix",
                    segments: str = "first", mirror_left_right: bool = False,
                    batch_size: int = 8) -> dict[str, np.ndarray]:
        """Recordings -> :meth:`embed_items` arrays (one row per 10 s window; ``key`` names it)."""
        items = self.audio_items(paths, foa_format=foa_format, segments=segments,
                                 mirror_left_right=mirror_left_right)
        return self.embed_items(items, batch_size)

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def embed_text(self, captions: Sequence[str], batch_size: int = 64) -> dict[str, np.ndarray]:
        """Captions -> ``text_source``, ``text_space`` (N, D): each caption through both text heads."""
        if not self.has_text:
            raise SchemaError("the official model needs roberta_dir (a local roberta-base folder) for text",
                              field="roberta_dir")
        captions = [str(c) for c in captions]
        if not captions:
            raise SchemaError("no captions to embed", field="caption")
        src, spa = [], []
        was_training = self.model.training
        self.model.eval()
        try:
            for i in range(0, len(captions), batch_size):
                out = self.encoder.text(captions[i:i + batch_size])
                src.append(out["source"].float().cpu().numpy())
                spa.append(out["space"].float().cpu().numpy())
        finally:
            self.model.train(was_training)
        return {"text_source": np.concatenate(src), "text_space": np.concatenate(spa)}

    # ------------------------------------------------------------------ zero-shot
    def prompts(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per attribute ``(labels (L,), text-space prototypes (L, D))`` from the caption rules."""
        if self._prompts is None:
            self._prompts = zero_shot_prototypes(self.encoder, self.rules, self.zero_shot)
        return self._prompts

    def zero_shot_descriptors(self, audio_space: np.ndarray) -> dict[str, np.ndarray]:
        """``zs_<attribute>`` (N,) labels (nearest prototype by cosine) and the prompts, when text exists."""
        if not self.has_text:
            return {}
        out = {}
        a = audio_space / np.linalg.norm(audio_space, axis=1, keepdims=True).clip(1e-12)
        for attr, (labels, protos) in self.prompts().items():
            out[f"zs_{attr}"] = np.asarray(labels)[np.argmax(a @ protos.T, axis=1)]
            out[PROMPT_LABEL_PREFIX + attr], out[PROMPT_EMB_PREFIX + attr] = labels, protos
        return out

    # ------------------------------------------------------------------ both, and the file
    def embed(self, audio_paths: Sequence[str | Path] = (), captions: Sequence[str] = (), *,
              source_ids: Sequence[str] | None = None, space_ids: Sequence[str] | None = None,
              foa_format: str | Sequence[str] = "ambix", mirror_left_right: bool = False,
              targets: dict[str, Sequence[float]] | None = None, batch_size: int = 8) -> dict[str, np.ndarray]:
        """Recordings and/or captions -> one dict of ``.npz`` arrays.

        With both, they are paired row by row (one caption per recording, first 10 s window each), and
        the result is a full ``disse-eval --embeddings`` file. ``source_ids`` / ``space_ids`` default to
        the row's key (the file path, else ``text<i>``). ``targets``: known physical values per item, keyed
        by the evaluator's ``true_*`` names (``true_azimuth_deg``, ``true_elevation_deg``,
        ``true_distance_m``, ``true_area_m2``, ``true_t30_ms``); the matching estimates become ``pred_*``.
        """
        n = len(audio_paths) or len(captions)
        if audio_paths and captions and len(audio_paths) != len(captions):
            raise SchemaError(f"{len(audio_paths)} recordings but {len(captions)} captions: pair them one to one",
                              field="caption")
        if n == 0:
            raise SchemaError("give recordings and/or captions", field="audio")
        arrays: dict[str, np.ndarray] = {}
        if audio_paths:
            arrays.update(self.embed_audio(audio_paths, foa_format=foa_format, segments="first",
                                           mirror_left_right=mirror_left_right, batch_size=batch_size))
        if captions:
            arrays.update(self.embed_text(captions))
        keys = list(arrays["key"]) if "key" in arrays else [f"text{i}" for i in range(n)]
        for name, given in (("source_id", source_ids), ("space_id", space_ids)):
            ids = list(given) if given is not None else keys
            if len(ids) != n:
                raise SchemaError(f"{len(ids)} ids for {n} items", field=name)
            arrays[name] = np.array([str(x) for x in ids])
        arrays["key"] = np.array(keys)
        for true_name, values in (targets or {}).items():
            if true_name not in TARGETS:
                raise SchemaError(f"unknown target; use {sorted(TARGETS)}", field=true_name)
            if len(values) != n:
                raise SchemaError(f"{len(values)} values for {n} items", field=true_name)
            arrays[true_name] = np.asarray(values, dtype=np.float32)
        for true_names, est in TARGETS_OF_ESTIMATE.items():
            if est in arrays and all(t in arrays for t in true_names):
                arrays["pred_" + est[len("est_"):]] = arrays.pop(est)
        arrays["format_version"] = np.array(1)
        arrays["model_kind"] = np.array(self.kind)
        return arrays

    @staticmethod
    def save(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
        """Write the ``.npz`` (through a temporary file); a file with all four embeddings and at least two
        items (what scoring needs) is checked with the evaluator's reader first, so ``disse-eval
        --embeddings`` accepts it."""
        if all(k in arrays for k in EMBEDDING_ARRAYS) and len(arrays["audio_source"]) >= 2:
            Embeddings.from_arrays(arrays, where=str(path))
        return write_npz(path, arrays)


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    """CSV with ``audio_path`` (or ``path`` / ``foa_path``) and/or ``caption`` (or ``text``); optional
    ``source_id``, ``space_id``, ``format`` (ambix / fuma) and known physical values (``azimuth_deg``,
    ``elevation_deg``, ``source_distance_m``, ``area_m2``, ``t30_ms``: then the estimates are scored).
    Relative paths resolve against the CSV's folder."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError("manifest not found", file=str(path))
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SchemaError("manifest has no rows", file=str(path))
    out = []
    for i, row in enumerate(rows):
        audio = row.get("audio_path") or row.get("path") or row.get("foa_path") or ""
        caption = row.get("caption") or row.get("text") or ""
        if not audio and not caption:
            raise SchemaError(f"row {i + 2}: needs audio_path and/or caption", file=str(path))
        if audio and not Path(audio).is_absolute():
            audio = str(path.parent / audio)
        item = {"audio": audio, "caption": caption, "source_id": row.get("source_id") or "",
                "space_id": row.get("space_id") or "", "format": (row.get("format") or "ambix").lower()}
        for col, name in MANIFEST_TARGETS.items():
            if row.get(col) not in (None, ""):
                try:
                    item[name] = float(row[col])
                except ValueError:
                    raise SchemaError(f"row {i + 2}: not a number: {row[col]!r}", file=str(path), field=col) from None
        out.append(item)
    return out
