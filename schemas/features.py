"""Intensity-vector feature parameters: one config (configs/features.yaml), written into every sample."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

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


def load_feature_params(path: str | Path | None = None) -> FeatureParams:
    """Read feature parameters from YAML; the packaged ``configs/features.yaml`` by default."""
    if path is None:
        from disse.configs import config_path
        path = config_path("features.yaml")
    with open(path) as f:
        return FeatureParams.from_dict(yaml.safe_load(f) or {}, source=str(path))
