"""Intensity-vector feature parameters: one config (configs/features.yaml), written into every sample.

Two presets share the shard schema's ``features`` block (the json's ``features`` dict):

* ``project`` (:class:`FeatureParams`, configs/features.yaml): mel-pooled, energy-normalised
  intensity vectors, ``iv.npy`` = ``(6, n_frames, n_mels)`` with components x, y, z.
* ``official`` (:class:`OfficialFeatureParams`, configs/features_official.yaml): the DISSE release's
  front end (reference §2.3), ``iv.npy`` = ``(6, 201, 1601)`` = [act Y, Z, X, rea Y, Z, X] x linear
  STFT bins x frames at 16 kHz, per-bin divided by the active-intensity norm. Its dict carries
  ``preset: official``; the project dict has no ``preset`` key (shards written before presets
  existed stay valid and byte-identical).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from disse.configs import config_path
from disse.schemas.errors import SchemaError


@dataclass(frozen=True)
class FeatureParams:
    """STFT / mel parameters of ``iv.npy`` (shape ``(6, n_frames, n_mels)``, float16)."""

    sample_rate: int = 48000
    clip_seconds: float = 10.0
    n_fft: int = 1024
    win_length: int = 960
    hop_length: int = 480
    n_mels: int = 64
    fmin_hz: float = 50.0
    fmax_hz: float = 16000.0
    eps: float = 1e-8

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def n_frames(self) -> int:
        """Frames of a centred STFT over one clip."""
        return self.clip_samples // self.hop_length + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "features") -> "FeatureParams":
        if d.get("preset", "project") != "project":
            raise SchemaError(f"features block is the {d.get('preset')!r} preset, not this project's "
                              "mel intensity vectors; read it with "
                              "disse.schemas.features.feature_params_from_dict", file=source, field="preset")
        d = {k: v for k, v in d.items() if k != "preset"}
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise SchemaError(f"unknown feature parameter(s) {sorted(unknown)}; known: {sorted(known)}",
                              file=source)
        params = cls(**{k: type(getattr(cls, k))(v) for k, v in d.items()})
        if params.win_length > params.n_fft or params.hop_length <= 0 or params.n_mels <= 0:
            raise SchemaError("need 0 < hop_length, win_length <= n_fft, n_mels > 0", file=source)
        if not 0 <= params.fmin_hz < params.fmax_hz <= params.sample_rate / 2:
            raise SchemaError("need 0 <= fmin_hz < fmax_hz <= sample_rate / 2", file=source)
        return params


@dataclass(frozen=True)
class OfficialFeatureParams:
    """The DISSE release's spatial front end (reference §2.3); every field is fixed.

    Render at ``sample_rate`` (48 kHz, ``clip_samples`` = 480000), resample all four AmbiX channels
    to ``feature_sample_rate`` (16 kHz, torchaudio's default sinc / Hann kernel), STFT (n_fft 400,
    hop 100, periodic Hann 400, centred with reflect padding, unnormalised, one-sided) ->
    ``I_act = Re(conj(W) [Y, Z, X])``, ``I_rea = Im(...)``; both divided per bin by ``|I_act|``
    where it exceeds ``norm_eps`` (1e-6). Stored as float16 ``(6, n_bins, n_frames)`` =
    ``(6, 201, 1601)``; values beyond float16's range (only the reactive part can reach them) are
    clipped to +-65504.
    """

    preset: str = "official"
    sample_rate: int = 48000          # Hz: render rate, HTSAT input rate
    clip_seconds: float = 10.0
    feature_sample_rate: int = 16000  # Hz: intensity-vector rate
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 100
    window: str = "hann_periodic"
    center: bool = True
    pad_mode: str = "reflect"
    components: str = "Y,Z,X"
    layout: str = "act_Y,act_Z,act_X,rea_Y,rea_Z,rea_X x bins x frames"
    norm_eps: float = 1e-6
    resampler: str = "torchaudio_sinc_interp_hann_w6_r0.99"

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def feature_samples(self) -> int:
        return int(round(self.feature_sample_rate * self.clip_seconds))

    @property
    def n_frames(self) -> int:
        """1601 for 10 s: centred frames over 160000 samples at hop 100."""
        return self.feature_samples // self.hop_length + 1

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def iv_shape(self) -> tuple[int, int, int]:
        return (6, self.n_bins, self.n_frames)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "features") -> "OfficialFeatureParams":
        """Parse and check a features block: the preset has no knobs, so any other value is an error."""
        ref = cls()
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise SchemaError(f"unknown official feature field(s) {sorted(unknown)}; known: {sorted(known)}",
                              file=source)
        for k, v in d.items():
            want = getattr(ref, k)
            if (v != want) if not isinstance(want, float) else (float(v) != want):
                raise SchemaError(f"the official preset fixes {k} = {want!r}, got {v!r}", file=source, field=k)
        return ref


AnyFeatureParams = FeatureParams | OfficialFeatureParams
FEATURE_PRESETS = {"project": "features.yaml", "official": "features_official.yaml"}


def feature_params_from_dict(d: dict, *, source: str = "features") -> AnyFeatureParams:
    """A shard's ``features`` block -> the preset's parameters (dispatch on ``preset``)."""
    preset = d.get("preset", "project")
    if preset == "official":
        return OfficialFeatureParams.from_dict(d, source=source)
    if preset == "project":
        return FeatureParams.from_dict(d, source=source)
    raise SchemaError(f"unknown feature preset {preset!r}; known: {sorted(FEATURE_PRESETS)}", file=source,
                      field="preset")


def load_feature_params(path: str | Path | None = None) -> AnyFeatureParams:
    """Read feature parameters from YAML; the packaged ``configs/features.yaml`` by default.

    ``path`` may also be a preset name (``project`` or ``official``): the packaged YAML of that preset.
    """
    if path is None:
        path = config_path("features.yaml")
    elif str(path) in FEATURE_PRESETS and not Path(path).is_file():
        path = config_path(FEATURE_PRESETS[str(path)])
    if not Path(path).is_file():
        raise SchemaError(f"feature parameters not found (a YAML file or one of {sorted(FEATURE_PRESETS)})",
                          file=str(path))
    with open(path) as f:
        return feature_params_from_dict(yaml.safe_load(f) or {}, source=str(path))
