"""Physical targets of DELSA: direction unit vectors and log-domain normalisation of area, distance, T30.

Conventions (DESIGN.md): azimuth 0 deg = front, positive = counter-clockwise (to the left); elevation
positive = up. Unit vector ``x = cos(el) cos(az)`` (front), ``y = cos(el) sin(az)`` (left),
``z = sin(el)`` (up).

Scalars are trained in a normalised log domain, ``n = (ln(value) - mean) / std``: positive quantities
that span decades (T30 from 100 ms to seconds, area from 10 to 1000 m2) get comparable error weight
in relative terms. The normalisation is a fixed affine map (:data:`DEFAULT_STATS`, chosen so that
realistic rooms give ``|n| <~ 2``), not data statistics: the model's heads, the loss and the evaluator
therefore always agree on what a prediction means, whichever shards a checkpoint was trained on.
Functions take a ``stats`` argument for other ranges; pass the same one everywhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from disse.schemas.shard import IV_INT8_SCALE

SCALARS = ("area", "distance", "t30")
#: real-unit target keys of the Batch contract, per scalar
REAL_KEYS = {"area": "area_m2", "distance": "distance_m", "t30": "t30_ms"}


@dataclass(frozen=True)
class PhysicsStats:
    """Mean and std of ln(value) per scalar, value in m2 (area), m (distance), ms (T30)."""

    area_log_mean: float = math.log(60.0)       # 60 m2; x/e^1 .. x e^1 = 22 .. 163 m2 is |n| <= 1
    area_log_std: float = 1.0
    distance_log_mean: float = math.log(2.0)    # 2 m; |n| <= 1 for 1.0 .. 4.0 m
    distance_log_std: float = 0.7
    t30_log_mean: float = math.log(500.0)       # 500 ms; |n| <= 1 for 225 .. 1110 ms
    t30_log_std: float = 0.8

    def mean_std(self, name: str) -> tuple[float, float]:
        return getattr(self, f"{name}_log_mean"), getattr(self, f"{name}_log_std")


DEFAULT_STATS = PhysicsStats()
_MIN_REAL = 1e-6  # values are clamped here before the log (a 0 m distance is a data error, not -inf)


def direction_from_angles(azimuth_deg: torch.Tensor, elevation_deg: torch.Tensor) -> torch.Tensor:
    """``(...)`` azimuth, elevation in degrees -> ``(..., 3)`` unit vectors (x front, y left, z up)."""
    az, el = torch.deg2rad(torch.as_tensor(azimuth_deg)), torch.deg2rad(torch.as_tensor(elevation_deg))
    return torch.stack([torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], dim=-1)


def angles_from_direction(direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(..., 3)`` vectors (any norm > 0) -> azimuth in (-180, 180], elevation in [-90, 90], degrees."""
    d = torch.as_tensor(direction)
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    az = torch.rad2deg(torch.atan2(y, x))
    el = torch.rad2deg(torch.atan2(z, torch.sqrt(x * x + y * y)))
    return az, el


def angular_error_deg(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Great-circle angle between direction vectors ``(..., 3)``, degrees (atan2 form: exact near 0 and 180)."""
    p, t = torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(true, dtype=torch.float64)
    cross = torch.linalg.vector_norm(torch.cross(p, t, dim=-1), dim=-1)
    return torch.rad2deg(torch.atan2(cross, (p * t).sum(-1)))


def normalize_scalar(value: torch.Tensor, name: str, stats: PhysicsStats = DEFAULT_STATS) -> torch.Tensor:
    """Real units (m2 / m / ms) -> normalised log domain."""
    mean, std = stats.mean_std(name)
    return (torch.log(torch.as_tensor(value).clamp_min(_MIN_REAL)) - mean) / std


def denormalize_scalar(value: torch.Tensor, name: str, stats: PhysicsStats = DEFAULT_STATS) -> torch.Tensor:
    """Normalised log domain -> real units (m2 / m / ms)."""
    mean, std = stats.mean_std(name)
    return torch.exp(torch.as_tensor(value) * std + mean)


def normalize_targets(targets: dict, stats: PhysicsStats = DEFAULT_STATS) -> dict[str, torch.Tensor]:
    """Batch ``targets`` (real units) -> ``{"direction": (B, 3), "area", "distance", "t30": (B,)}`` normalised.

    Uses ``targets["direction"]`` when present, else azimuth / elevation.
    """
    out: dict[str, torch.Tensor] = {}
    if "direction" in targets:
        d = torch.as_tensor(targets["direction"]).float()
        out["direction"] = d / torch.linalg.vector_norm(d, dim=-1, keepdim=True).clamp_min(1e-8)
    else:
        out["direction"] = direction_from_angles(targets["azimuth_deg"], targets["elevation_deg"]).float()
    for name in SCALARS:
        out[name] = normalize_scalar(torch.as_tensor(targets[REAL_KEYS[name]]).float(), name, stats)
    return out


def to_real_units(phys: dict, stats: PhysicsStats = DEFAULT_STATS) -> dict[str, torch.Tensor]:
    """Model ``phys`` output (normalised) -> real units.

    Returns ``direction`` (B, 3) unit vectors, ``azimuth_deg``, ``elevation_deg``, ``area_m2``,
    ``distance_m``, ``t30_ms`` (B,).
    """
    d = torch.as_tensor(phys["direction"]).float()
    d = d / torch.linalg.vector_norm(d, dim=-1, keepdim=True).clamp_min(1e-8)
    az, el = angles_from_direction(d)
    out = {"direction": d, "azimuth_deg": az, "elevation_deg": el}
    for name in SCALARS:
        out[REAL_KEYS[name]] = denormalize_scalar(torch.as_tensor(phys[name]).float(), name, stats)
    return out


def iv_to_float(iv: torch.Tensor) -> torch.Tensor:
    """``iv (B, 6, F, M)`` as batches carry it -> float32: int8 q is q / 127 (schema v3, v4: the
    project's features, bounded by 1), float16 / float32 pass as values."""
    if iv.dtype == torch.int8:
        return iv.float().mul_(1.0 / IV_INT8_SCALE)
    if not iv.is_floating_point():
        raise TypeError(f"iv must be int8 (q / 127) or floating point, got {iv.dtype}")
    return iv.float()


def intensity_direction(iv: torch.Tensor, min_directivity: float = 0.95) -> torch.Tensor:
    """Physics baseline: source direction from intensity features, no learning.

    ``iv (B, 6, F, M)`` (channels act_x, act_y, act_z, rea_x, rea_y, rea_z; int8 q / 127 or float16 as
    batches carry them is fine, the sums run in float32) -> ``(B, 3)`` unit vectors (x front, y left, z up). Per item, the active
    intensity vectors ``iv[:, :3]`` are summed over the time-frequency cells whose directivity
    ``|I_act|`` is at least ``min_directivity`` (1 = a single plane wave, 0 = diffuse), which keeps
    the cells dominated by the direct sound. This is the torch twin of the synthesis reference
    ``disse.pipeline.features.direction_from_iv(iv, min_directivity)``.

    Fallbacks, per item: where no cell reaches the threshold (the reference raises there), the plain
    sum over all cells is used, i.e. ``direction_from_iv(iv, 0.0)``; where that sum is the zero
    vector as well (silence), the result is front ``(1, 0, 0)``, a fixed guess that scores like
    chance (90 degrees on average) rather than a zero vector that would score 0 degrees.
    """
    act = iv_to_float(torch.as_tensor(iv)[:, :3]).flatten(2)     # (B, 3, F*M)
    # |I_act|^2 against the squared threshold: vector_norm over the strided 3-axis is ~10x slower on CPU
    keep = act.square().sum(1) >= max(min_directivity, 0.0) ** 2  # (B, F*M); <= 0 keeps every cell, as |I| >= it
    selected = (act * keep[:, None].to(act.dtype)).sum(-1)        # (B, 3)
    has_cells = keep.any(dim=1, keepdim=True)
    total = torch.where(has_cells, selected, act.sum(-1))
    norm = torch.linalg.vector_norm(total, dim=-1, keepdim=True)
    front = torch.tensor([1.0, 0.0, 0.0], dtype=total.dtype, device=total.device).expand_as(total)
    return torch.where(norm > 0, total / norm.clamp_min(torch.finfo(total.dtype).tiny), front)
