"""Rotation about the vertical axis: an exact augmentation of a first-order-ambisonics sample.

Turning the sound field (or the listener) by an angle θ about the vertical axis maps the AmbiX
components as ``X' = cos θ X - sin θ Y``, ``Y' = sin θ X + cos θ Y`` and leaves W and Z unchanged;
the intensity vectors ``Re/Im{conj(W) [X, Y, Z]}`` turn the same way, so the stored ``iv`` can be
rotated without rendering again, and W (what the HTSAT branch hears) does not change at all. The
source's azimuth moves by +θ (counter-clockwise, DESIGN.md); elevation, distance, room and T30 stay.
The direction descriptor may change, so the spatial caption, the full caption and ``space_id`` are
rebuilt from the rule table and the stored source caption with the renderer's own sentence builder
(:func:`disse.schemas.captions.make_captions`).

Each sample's angle and phrasing come from an RNG seeded by (data seed, pass, sample key), so a
resumed run sees exactly the rotations an uninterrupted one would.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from disse.schemas import CaptionRules, SchemaError
from disse.schemas.captions import make_captions, rule_set_of_version
from disse.schemas.records import wrap_azimuth
from disse.schemas.shard import ShardMeta, stable_id_int


def rotate_iv(iv: np.ndarray, angle_deg: float) -> np.ndarray:
    """``iv (6, F, M)`` (I_act xyz, I_rea xyz) turned by ``angle_deg`` about z (counter-clockwise).

    Same dtype out. int8 q (value q / 127) is turned as values (the rotation is linear) and rounded
    back, which adds at most 0.5 / 127 per x, y component to the storage's own rounding."""
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    x = iv.astype(np.float32, copy=True)
    for base in (0, 3):
        ix, iy = x[base].copy(), x[base + 1]
        x[base] = c * ix - s * iy
        x[base + 1] = s * ix + c * iy
    if iv.dtype == np.int8:  # |(x, y)| <= 127 stays so after the turn, up to rounding
        np.rint(x, out=x)
        np.clip(x, -127, 127, out=x)
    return x.astype(iv.dtype, copy=False)


def rotate_meta(meta: ShardMeta, angle_deg: float, rules: CaptionRules, rng: np.random.Generator) -> ShardMeta:
    """The metadata of the turned sample: azimuth, descriptors, captions and ``space_id`` rebuilt."""
    azimuth = wrap_azimuth(meta.azimuth_deg + angle_deg)
    values = {"azimuth_deg": azimuth, "elevation_deg": meta.elevation_deg,
              "source_distance_m": meta.source_distance_m, "area_m2": meta.area_m2, "t30_ms": meta.t30_ms}
    descriptors = rules.describe(values)
    caps = make_captions(rules, descriptors, meta.source_caption, rng)
    return dataclasses.replace(meta, azimuth_deg=azimuth, descriptors=descriptors,
                               space_id=rules.space_id(descriptors), spatial_caption=caps.spatial_caption,
                               caption=caps.caption)


def check_rules(meta: ShardMeta, rules: CaptionRules, where: str) -> None:
    """The trainer's rule table must be the one the shards were captioned with."""
    version = meta.render.get("rules_version")
    if version is not None and str(version) != str(rules.version):
        name = rule_set_of_version(version)
        hint = f"set data.caption_rules={name}" if name else "set data.caption_rules to the render's table"
        raise SchemaError(f"shards were captioned with rule table version {version!r}, the trainer has "
                          f"version {rules.version!r} (data.rotate_azimuth rebuilds captions with it): {hint}",
                          file=where, field="data.caption_rules")


def sample_rng(purpose: str, key: str, seed: int, pass_: int) -> np.random.Generator:
    """The RNG of one augmentation of one sample in one pass, fixed by (seed, pass, purpose, key):
    a resumed run draws exactly what an uninterrupted one would, whatever the batch order."""
    return np.random.default_rng([int(seed), int(pass_), stable_id_int(f"{purpose}:{key}") & (2 ** 63 - 1)])


def rotate_sample(sample: dict, rules: CaptionRules, seed: int, pass_: int) -> dict:
    """A decoded sample (``iv``, ``meta``, optional ``waveform``) turned by an angle drawn uniformly
    in [0, 360) from an RNG fixed by (seed, pass, key)."""
    meta: ShardMeta = sample["meta"]
    rng = sample_rng("rotate", meta.key, seed, pass_)
    angle = float(rng.uniform(0.0, 360.0))
    return {**sample, "iv": rotate_iv(sample["iv"], angle), "meta": rotate_meta(meta, angle, rules, rng)}


def drop_source_clause(key: str, prob: float, seed: int, pass_: int) -> bool:
    """Whether the text space head reads this sample's spatial caption alone in this pass
    (``DataConfig.space_caption_drop``): a draw fixed by (seed, pass, key), like the rotation, so a
    resumed run makes the same choices."""
    if not 0.0 <= prob <= 1.0:
        raise SchemaError(f"must be in [0, 1], got {prob}", field="data.space_caption_drop")
    return bool(sample_rng("caption-drop", key, seed, pass_).random() < prob)
