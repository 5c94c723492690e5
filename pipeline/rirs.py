"""Simulated FOA room impulse responses: ``disse-synth rirs`` and :func:`simulate_bank`.

Physics (per source/receiver position in a shoebox room):

* **Early part: the image-source method** (pyroomacoustics' ``ShoeBox.image_source_model``).
  Every image source whose path length is at most ``R`` is summed as a fractional-delay impulse
  (Hann-windowed sinc, 81 taps, as pyroomacoustics does) of amplitude ``beta / (4 pi d)`` with
  the first-order AmbiX/SN3D gains of its direction of arrival ``u`` (unit vector in the receiver
  frame: x front, y left, z up): ``W = 1, Y = u_y, Z = u_z, X = u_x``. That is exactly a
  co-located omni plus three figure-eight capsules facing front, left and up, evaluated per
  image; doing it ourselves is exact and much faster than pyroomacoustics' per-microphone
  directivity path. The order is chosen so the image set is *complete* up to ``R``
  (``max_order >= sum_a (R / L_a + 1)``); it is capped (``max_order``) and ``R`` shrinks to
  what the cap covers. ``R = c * early_ms`` (at least 1 m past the direct path).
* **Late part: a stochastic continuation of the same image-source field.** Past ``R / c`` the
  images of a shoebox are dense and their exact positions no longer matter; what matters is their
  density and losses. Images fill space with density ``1 / V``, so arrivals come at rate
  ``4 pi c^3 t^2 / V`` (Poisson; sparse in big rooms at first, one per sample later), each from
  a random direction ``u`` (uniform on the sphere) with energy ``beta^2(t) / (4 pi c t)^2``.
  An image at path length ``r`` along ``u`` has ``beta^2 = exp(-r sum_a |u_a| kappa_a)``, where
  ``kappa_a`` is the mean ``-ln(1 - alpha)`` of the two walls normal to axis ``a`` over ``L_a``.
  A purely specular shoebox keeps near-grazing paths alive far longer than real rooms, whose
  surfaces scatter and mix directions; the late field is therefore taken as *diffuse*: its loss
  is the direction average, ``exp(-c t sum_a kappa_a / 2)`` (an Eyring-type decay), scaled to
  the images' mean energy at the hand-over so the expected energy is continuous there.
  Each arrival is FOA-encoded with its own direction, so the tail is a directionally diffuse
  field with the right W/X/Y/Z coherence (pyroomacoustics' hybrid ray tracer yields energy
  histograms filled with independent noise per capsule, which breaks the FOA inter-channel
  relations, hence not used).
* Absorption is frequency independent (one band, no air absorption): reverberation time is the
  same in all bands. The absorption of the six walls is drawn around a level chosen so the
  expected decay matches a sampled target T60 (Eyring-like formula of the image model).
* ``fullband_T30_ms`` is **measured** on the W channel (:func:`measure_t30`), not the target.

Conventions (DESIGN.md): AmbiX (ACN W, Y, Z, X; SN3D), azimuth 0 = front, positive = left,
elevation positive = up. The receiver has a random yaw in the room; metadata (azimuth, elevation,
distance) is computed from the final source and receiver positions in the receiver frame, so the
direct path arrives from exactly the metadata direction. Amplitudes are physical (1 / (4 pi d) at
the direct path), so the direct-to-reverberant ratio is meaningful.
"""
from __future__ import annotations

import csv
import math
import multiprocessing as mp
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyroomacoustics as pra
import soundfile as sf
from tqdm import tqdm

from disse.schemas.atomic import atomic_write

SPEED_OF_SOUND = 343.0  # m/s
LN_1E6 = math.log(1e6)  # 60 dB of energy decay
FD_TAPS = 81  # fractional-delay filter length (pyroomacoustics' default)
WALLS = ("west", "east", "south", "north", "floor", "ceiling")  # pyroomacoustics' ShoeBox order
AXIS_OF_WALL = (0, 0, 1, 1, 2, 2)

CSV_COLUMNS = (
    "rir_id", "rir_path", "azimuth_deg", "elevation_deg", "source_distance_m", "area_m2",
    "fullband_T30_ms", "foa_format", "room_index", "position_index", "room_length_m",
    "room_width_m", "room_height_m", "volume_m3", *[f"absorption_{w}" for w in WALLS],
    "mean_absorption", "t60_target_ms", "t60_model_ms", "t60_sabine_ms", "receiver_x_m",
    "receiver_y_m", "receiver_z_m", "receiver_yaw_deg", "source_x_m", "source_y_m", "source_z_m",
    "ism_max_order", "ism_radius_m", "rir_seconds",
)


@dataclass(frozen=True)
class SimParams:
    """Simulation options (units in the names). ``FAST`` gives a small bank for demos/tests."""

    sample_rate: int = 48000
    area_range: tuple[float, float] = (10.0, 300.0)       # floor area, m², log-uniform
    t30_range: tuple[float, float] = (0.15, 2.5)          # target T60, s, log-uniform
    distance_range: tuple[float, float] = (0.5, 6.0)      # source distance, m, log-uniform
    wall_margin_m: float = 0.3                            # source to any wall
    receiver_margin_m: float = 0.5                        # receiver to any wall
    early_ms: float = 80.0                                # image-source part length
    max_order: int = 40                                   # cap on the image-source order
    max_rir_s: float = 3.0                                # cap on the RIR length
    file_format: str = "flac"                             # flac (24-bit) or wav (float32)

    def validate(self) -> None:
        """Raise ``ValueError`` with a one-line reason for inconsistent options."""
        for name in ("area_range", "t30_range", "distance_range"):
            lo, hi = getattr(self, name)
            if not (0 < lo <= hi and math.isfinite(hi)):
                raise ValueError(f"{name} must satisfy 0 < min <= max, got ({lo}, {hi})")
        if self.area_range[0] < 4.0:
            raise ValueError(f"area_range minimum must be >= 4 m² (room must hold the margins), "
                             f"got {self.area_range[0]}")
        if self.distance_range[0] < 0.2:
            raise ValueError(f"distance_range minimum must be >= 0.2 m, got {self.distance_range[0]}")
        if self.max_rir_s < self.t30_range[1]:
            # the RIR must hold the decay down to about -60 dB for T30 to be measured
            raise ValueError(f"max_rir_s ({self.max_rir_s} s) must be >= the largest T30 "
                             f"({self.t30_range[1]} s) so the decay can be measured")
        if not 1 <= self.max_order <= 80:
            raise ValueError(f"max_order must be in [1, 80], got {self.max_order}")
        if not 5 <= self.early_ms <= 500:
            raise ValueError(f"early_ms must be in [5, 500], got {self.early_ms}")
        if self.file_format not in ("flac", "wav"):
            raise ValueError(f"file_format must be 'flac' or 'wav', got {self.file_format!r}")
        if self.sample_rate < 8000:
            raise ValueError(f"sample_rate must be >= 8000 Hz, got {self.sample_rate}")


#: Small, fast bank for the demo and tests: shorter decays and RIRs, low image-source order.
FAST = dict(t30_range=(0.15, 1.0), max_rir_s=1.3, early_ms=30.0, max_order=16)


# ---------------------------------------------------------------------------------------------
# Pure DSP
# ---------------------------------------------------------------------------------------------

def schroeder_db(rir: np.ndarray) -> np.ndarray:
    """Energy decay curve (Schroeder backward integral) in dB re total energy, shape ``(T,)``."""
    energy = np.cumsum(np.asarray(rir, dtype=np.float64)[::-1] ** 2)[::-1]
    if energy[0] <= 0:
        raise ValueError("impulse response is silent")
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(energy / energy[0])


def measure_t30(rir: np.ndarray, sr: int) -> float:
    """Full-band T30 in ms: Schroeder backward integration, linear fit from -5 to -35 dB,
    extrapolated to 60 dB (ISO 3382). ``rir``: ``(T,)`` or ``(C, T)`` (channel 0, W, is used).

    Raises ``ValueError`` when the decay does not reach -35 dB (RIR truncated too early).
    """
    x = np.asarray(rir, dtype=np.float64)
    if x.ndim == 2:
        x = x[0]
    if x.ndim != 1 or x.size < 2:
        raise ValueError(f"expected a 1-D impulse response, got shape {np.shape(rir)}")
    edc = schroeder_db(x)
    start = int(np.argmax(edc <= -5.0))
    below = edc <= -35.0
    if not below.any():
        raise ValueError(f"decay reaches only {edc[-2]:.1f} dB; need -35 dB for T30")
    stop = int(np.argmax(below))
    if stop - start < 4:
        raise ValueError("decay from -5 to -35 dB spans fewer than 4 samples")
    t = np.arange(start, stop + 1) / sr
    slope = np.polyfit(t, edc[start:stop + 1], 1)[0]  # dB / s
    return float(-60.0 / slope * 1000.0)


def direct_onset(rir_w: np.ndarray) -> int:
    """Sample index of the direct sound's onset in a mono response ``(T,)``: the first sample whose
    magnitude reaches 10 % of the peak magnitude."""
    magnitude = np.abs(rir_w)
    return int(np.argmax(magnitude > 0.1 * magnitude.max()))


def direct_to_reverberant_db(rir: np.ndarray, sr: int, half_window_ms: float = 2.5) -> float:
    """Direct-to-reverberant ratio in dB: the energy within ``half_window_ms`` of the direct sound's
    onset (:func:`direct_onset`) over all the energy after it. ``rir``: ``(T,)``
    or ``(C, T)`` (channel 0, W, is used). The +-2.5 ms window is the usual convention (it holds the
    direct path's interpolation taps and no reflection of a source off a nearby wall).

    Raises ``ValueError`` for a silent response or one with nothing after the window.
    """
    x = np.asarray(rir, dtype=np.float64)
    if x.ndim == 2:
        x = x[0]
    if x.ndim != 1 or not np.any(x):
        raise ValueError(f"expected a non-silent 1-D impulse response, got shape {np.shape(rir)}")
    onset = direct_onset(x)
    half = int(round(half_window_ms * 1e-3 * sr))
    direct = float(np.sum(x[max(0, onset - half):onset + half] ** 2))
    reverberant = float(np.sum(x[onset + half:] ** 2))
    if reverberant <= 0.0:
        raise ValueError("the response holds no energy after the direct sound")
    return 10.0 * math.log10(direct / reverberant)


def fractional_delay_taps(delay: np.ndarray, n_taps: int = FD_TAPS) -> tuple[np.ndarray, np.ndarray]:
    """Hann-windowed sinc interpolators for delays in samples ``(N,)`` -> ``(start (N,), taps (N, L))``.

    ``taps[i]`` is to be added at samples ``start[i] .. start[i] + L - 1``.
    """
    half = n_taps // 2
    n0 = np.floor(delay).astype(np.int64)
    frac = delay - n0
    k = np.arange(-half, half + 1)
    arg = k[None, :] - frac[:, None]
    window = 0.5 + 0.5 * np.cos(np.pi * arg / (half + 1))  # > 0 over the taps, 0 at +-(half+1)
    return n0 - half, np.sinc(arg) * window


def encode_arrivals(out: np.ndarray, delay: np.ndarray, amp: np.ndarray, direction: np.ndarray) -> None:
    """Add plane-wave arrivals to FOA ``out`` ``(4, T)`` in place.

    delay: ``(N,)`` samples (fractional); amp: ``(N,)`` pressure; direction: ``(N, 3)`` unit DOA
    vectors (x front, y left, z up) -> AmbiX SN3D gains W=1, Y=y, Z=z, X=x.
    """
    n_out = out.shape[1]
    start, taps = fractional_delay_taps(delay)
    idx = start[:, None] + np.arange(taps.shape[1])[None, :]
    keep = (idx >= 0) & (idx < n_out)
    idx_k = idx[keep]
    w = (taps * amp[:, None])
    gains = (np.ones(len(amp)), direction[:, 1], direction[:, 2], direction[:, 0])  # W Y Z X
    for ch, g in enumerate(gains):
        # bincount sums duplicate indices, which np.add.at does ~10x slower
        out[ch] += np.bincount(idx_k, weights=(w * g[:, None])[keep], minlength=n_out)


def rotation_z(yaw_rad: float) -> np.ndarray:
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------------------
# Rooms and positions
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Room:
    """A shoebox: dims ``(L, W, H)`` in m; energy absorption per wall in :data:`WALLS` order."""

    dims: tuple[float, float, float]
    absorption: tuple[float, ...]
    t60_target_s: float

    @property
    def volume(self) -> float:
        return float(np.prod(self.dims))

    @property
    def area(self) -> float:
        return self.dims[0] * self.dims[1]

    @property
    def surface(self) -> float:
        lx, ly, lz = self.dims
        return 2 * (lx * ly + lx * lz + ly * lz)

    def wall_areas(self) -> np.ndarray:
        lx, ly, lz = self.dims
        return np.array([ly * lz, ly * lz, lx * lz, lx * lz, lx * ly, lx * ly])

    def kappa(self) -> np.ndarray:
        """Energy loss per metre travelled along each axis, ``(3,)`` 1/m (image-source model)."""
        a = -np.log1p(-np.asarray(self.absorption))
        return np.array([(a[2 * i] + a[2 * i + 1]) / 2 / self.dims[i] for i in range(3)])

    def t60_model(self) -> float:
        """Expected T60 in s of the image-source field (direction-averaged: E|u_a| = 1/2)."""
        return LN_1E6 / (SPEED_OF_SOUND * self.kappa().sum() / 2)

    def t60_sabine(self) -> float:
        return 0.161 * self.volume / float((self.wall_areas() * np.asarray(self.absorption)).sum())


def sample_room(rng: np.random.Generator, p: SimParams) -> Room:
    """Draw dims (log-uniform area, aspect 1-2, height growing with area) and wall absorptions
    whose image-model T60 matches a log-uniform target (alpha capped at 0.99)."""
    area = math.exp(rng.uniform(*np.log(p.area_range)))
    aspect = rng.uniform(1.0, 2.0)
    lx, ly = math.sqrt(area * aspect), math.sqrt(area / aspect)
    if rng.random() < 0.5:
        lx, ly = ly, lx
    lz = rng.uniform(2.4, min(6.0, 2.7 + area / 75.0))
    target = math.exp(rng.uniform(*np.log(p.t30_range)))
    # relative per-wall absorption (e.g. carpet vs. plaster), scaled to hit the target decay
    weights = rng.uniform(0.5, 1.5, size=6)
    dims = (lx, ly, lz)
    per_scale = sum((weights[2 * i] + weights[2 * i + 1]) / 2 / dims[i] for i in range(3))
    scale = 2 * LN_1E6 / (SPEED_OF_SOUND * target * per_scale)
    alpha = np.clip(1.0 - np.exp(-scale * weights), 1e-3, 0.99)
    return Room(dims=dims, absorption=tuple(float(a) for a in alpha), t60_target_s=target)


@dataclass(frozen=True)
class Position:
    """Receiver and source in room coordinates (m); receiver front at ``yaw`` rad from +x."""

    receiver: np.ndarray
    yaw: float
    source: np.ndarray

    def relative(self) -> np.ndarray:
        """Source minus receiver in the receiver frame (x front, y left, z up), ``(3,)`` m."""
        return rotation_z(-self.yaw) @ (self.source - self.receiver)

    def direction(self) -> tuple[float, float, float]:
        """(azimuth_deg, elevation_deg, distance_m) of the source seen from the receiver."""
        v = self.relative()
        d = float(np.linalg.norm(v))
        return (math.degrees(math.atan2(v[1], v[0])), math.degrees(math.asin(np.clip(v[2] / d, -1, 1))), d)


def _ray_exit(origin: np.ndarray, u: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Distance along unit ``u`` from ``origin`` to the box ``[lo, hi]``."""
    t = np.inf
    for a in range(3):
        if u[a] > 1e-12:
            t = min(t, (hi[a] - origin[a]) / u[a])
        elif u[a] < -1e-12:
            t = min(t, (lo[a] - origin[a]) / u[a])
    return float(t)


def sample_position(rng: np.random.Generator, room: Room, p: SimParams) -> Position:
    """Receiver anywhere (ear height 1-1.9 m), random yaw; source at a log-uniform distance, then
    a direction uniform on the sphere among those where that distance stays inside the room minus
    the margin (a distance that fits nowhere is redrawn). Distance first keeps far sources common
    in low rooms (they are then mostly near the horizontal plane, as in real rooms)."""
    dims = np.array(room.dims)
    m = p.receiver_margin_m
    receiver = np.array([rng.uniform(m, dims[0] - m), rng.uniform(m, dims[1] - m),
                         rng.uniform(1.0, max(1.0, min(1.9, dims[2] - m)))])
    yaw = rng.uniform(-math.pi, math.pi)
    lo, hi = np.full(3, p.wall_margin_m), dims - p.wall_margin_m
    log_d = np.log(p.distance_range)
    rot = rotation_z(yaw)
    for _ in range(200):
        d = math.exp(rng.uniform(*log_d))
        for _ in range(50):
            az = rng.uniform(-math.pi, math.pi)
            sin_el = rng.uniform(-1.0, 1.0)
            cos_el = math.sqrt(1 - sin_el ** 2)
            u = rot @ np.array([math.cos(az) * cos_el, math.sin(az) * cos_el, sin_el])
            if _ray_exit(receiver, u, lo, hi) >= d:
                return Position(receiver=receiver, yaw=yaw, source=receiver + d * u)
    raise RuntimeError(f"no source position fits room {room.dims}")  # margins leave no space


# ---------------------------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------------------------

def _sphere_grid(n: int = 2048) -> np.ndarray:
    """Fibonacci-lattice unit vectors ``(n, 3)``: a deterministic, near-uniform sphere sampling."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = i * math.pi * (3 - math.sqrt(5))
    r = np.sqrt(1 - z ** 2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def ism_order_for(radius: float, dims: tuple[float, float, float]) -> int:
    """Smallest image order whose image set is complete up to path length ``radius`` (m)."""
    return int(math.ceil(sum(radius / L + 1 for L in dims)))


def simulate_rir(room: Room, pos: Position, rng: np.random.Generator, p: SimParams
                 ) -> tuple[np.ndarray, dict]:
    """One FOA RIR ``(4, T)`` float64 (AmbiX W, Y, Z, X; SN3D; physical pressure) and info."""
    fs, c = p.sample_rate, SPEED_OF_SOUND
    dist = float(np.linalg.norm(pos.source - pos.receiver))
    radius = max(c * p.early_ms / 1000.0, dist + 1.0)
    order = ism_order_for(radius, room.dims)
    if order > p.max_order:  # shrink the exact part to what the capped order covers
        order = p.max_order
        radius = max(dist + 1e-3, (order - 3) / sum(1 / L for L in room.dims))
    n = int(round(min(p.max_rir_s, dist / c + 1.3 * room.t60_model()) * fs))
    out = np.zeros((4, n))

    materials = {w: pra.Material(float(a)) for w, a in zip(WALLS, room.absorption)}
    shoebox = pra.ShoeBox(list(room.dims), fs=fs, materials=materials, max_order=order,
                          air_absorption=False)
    shoebox.add_source(list(pos.source))
    shoebox.add_microphone(list(pos.receiver))
    shoebox.image_source_model()
    src = shoebox.sources[0]
    rel = (src.images - pos.receiver[:, None]).T  # (N, 3) room frame
    d = np.linalg.norm(rel, axis=1)
    keep = d <= radius  # the complete set; later images are the tail's business
    rel, d, beta = rel[keep], d[keep], src.damping[0, keep]
    direction = (rel / d[:, None]) @ rotation_z(-pos.yaw).T  # receiver frame
    encode_arrivals(out, d / c * fs, beta / (4 * math.pi * d), direction)

    # stochastic late field: Poisson arrivals at the image density, image-model losses
    t0 = int(math.floor(radius / c * fs)) + 1
    if t0 < n:
        t = np.arange(t0, n) / fs
        rate = 4 * math.pi * c ** 3 * t ** 2 / room.volume  # arrivals per second
        prob = np.minimum(1.0, rate / fs)
        hit = rng.random(t.size) < prob
        t, prob = t[hit], prob[hit]
        u = rng.standard_normal((t.size, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        # diffuse decay: direction-averaged image loss, level-matched to the images at hand-over
        kappa = room.kappa()
        t_tr = radius / c
        level = np.mean(np.exp(-c * t_tr * (np.abs(_sphere_grid()) @ kappa)))
        loss = level * np.exp(-c * (t - t_tr) * kappa.sum() / 2)
        energy = rate[hit] / fs / prob * loss / (4 * math.pi * c * t) ** 2  # per arrival
        amp = rng.standard_normal(t.size) * np.sqrt(energy)
        dir_mic = u @ rotation_z(-pos.yaw).T
        idx = np.round(t * fs).astype(np.int64)
        out[0, idx] += amp
        out[1, idx] += amp * dir_mic[:, 1]
        out[2, idx] += amp * dir_mic[:, 2]
        out[3, idx] += amp * dir_mic[:, 0]
    return out, {"ism_max_order": order, "ism_radius_m": radius, "rir_seconds": n / fs}


@dataclass
class _RoomJob:
    out_dir: str
    room_index: int
    positions: int
    seed: int
    params: SimParams
    rows: list = field(default_factory=list)


def room_rng(seed: int, room_index: int) -> np.random.Generator:
    """Per-room generator: results do not depend on the number of workers or their order."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(room_index)]))


def _write_audio(path: Path, rir: np.ndarray, sr: int, fmt: str) -> None:
    if fmt == "flac" and np.abs(rir).max() >= 1.0:
        raise ValueError(f"{path}: RIR peak {np.abs(rir).max():.3f} >= 1 cannot be stored as FLAC")
    with atomic_write(path) as f:  # no half-written file under the final name
        if fmt == "flac":
            sf.write(f, rir.T, sr, format="FLAC", subtype="PCM_24")
        else:
            sf.write(f, rir.T.astype(np.float32), sr, format="WAV", subtype="FLOAT")


def simulate_room(job: _RoomJob) -> list[dict]:
    """Simulate all positions of one room and write their files; returns the CSV rows."""
    p = job.params
    rng = room_rng(job.seed, job.room_index)
    room = sample_room(rng, p)
    audio_dir = Path(job.out_dir) / "audio"
    rows = []
    for k in range(job.positions):
        pos = sample_position(rng, room, p)
        rir, info = simulate_rir(room, pos, rng, p)
        rir_id = f"room{job.room_index:05d}_p{k:02d}"
        rel_path = f"audio/{rir_id}.{p.file_format}"
        _write_audio(audio_dir / f"{rir_id}.{p.file_format}", rir, p.sample_rate, p.file_format)
        if p.file_format == "flac":  # measure what a reader gets back
            rir = np.round(rir * 2 ** 23) / 2 ** 23
        az, el, dist = pos.direction()
        rows.append({
            "rir_id": rir_id, "rir_path": rel_path, "azimuth_deg": f"{az:.3f}",
            "elevation_deg": f"{el:.3f}", "source_distance_m": f"{dist:.4f}",
            "area_m2": f"{room.area:.3f}", "fullband_T30_ms": f"{measure_t30(rir[0], p.sample_rate):.2f}",
            "foa_format": "ambix", "room_index": str(job.room_index), "position_index": str(k),
            "room_length_m": f"{room.dims[0]:.4f}", "room_width_m": f"{room.dims[1]:.4f}",
            "room_height_m": f"{room.dims[2]:.4f}", "volume_m3": f"{room.volume:.3f}",
            **{f"absorption_{w}": f"{a:.5f}" for w, a in zip(WALLS, room.absorption)},
            "mean_absorption": f"{np.dot(room.wall_areas(), room.absorption) / room.surface:.5f}",
            "t60_target_ms": f"{room.t60_target_s * 1000:.2f}",
            "t60_model_ms": f"{room.t60_model() * 1000:.2f}",
            "t60_sabine_ms": f"{room.t60_sabine() * 1000:.2f}",
            "receiver_x_m": f"{pos.receiver[0]:.4f}", "receiver_y_m": f"{pos.receiver[1]:.4f}",
            "receiver_z_m": f"{pos.receiver[2]:.4f}", "receiver_yaw_deg": f"{math.degrees(pos.yaw):.3f}",
            "source_x_m": f"{pos.source[0]:.4f}", "source_y_m": f"{pos.source[1]:.4f}",
            "source_z_m": f"{pos.source[2]:.4f}", "ism_max_order": str(info["ism_max_order"]),
            "ism_radius_m": f"{info['ism_radius_m']:.3f}", "rir_seconds": f"{info['rir_seconds']:.4f}",
        })
    return rows


def _pool_context() -> mp.context.BaseContext:
    """fork where it is safe and cheap (Linux, torch not loaded: its native thread pools do not
    survive a fork); spawn otherwise (each worker re-imports numpy/pyroomacoustics, ~1-3 s)."""
    if (sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()
            and "torch" not in sys.modules):
        return mp.get_context("fork")
    return mp.get_context("spawn")


def simulate_bank(out_dir: str | Path, n_rooms: int, positions_per_room: int, seed: int = 0,
                  workers: int = 1, area_range: tuple[float, float] = (10.0, 300.0),
                  t30_range: tuple[float, float] | None = None, *, fast: bool = False,
                  progress: bool = False, **options) -> Path:
    """Simulate ``n_rooms`` shoebox rooms x ``positions_per_room`` positions into ``out_dir``.

    Writes ``out_dir/audio/{rir_id}.flac`` (or ``.wav``) and ``out_dir/rirs.csv`` (RIR schema;
    paths relative to the CSV) and returns the CSV path. Ranges: floor area in m², target T30
    in s (default 0.15-2.5 s, or the fast preset's). ``fast=True`` applies :data:`FAST` (T30 <=
    1 s, RIRs <= 1.3 s, low image order: a demo bank in seconds) under any explicit ``options``
    (other :class:`SimParams` fields). Output is identical for any ``workers``. Raises
    ``ValueError`` for inconsistent options.
    """
    if n_rooms < 1 or positions_per_room < 1 or workers < 1:
        raise ValueError("n_rooms, positions_per_room and workers must be >= 1")
    settings = dict(FAST) if fast else {}
    if t30_range is not None:
        settings["t30_range"] = tuple(t30_range)
    settings.update(area_range=tuple(area_range), **options)
    params = SimParams(**settings)
    params.validate()
    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    jobs = [_RoomJob(str(out), i, positions_per_room, seed, params) for i in range(n_rooms)]

    rows: list[dict] = []
    bar = tqdm(total=n_rooms, desc="rooms", unit="room", disable=not progress)
    if workers == 1:
        for job in jobs:
            rows.extend(simulate_room(job))
            bar.update()
    else:
        with _pool_context().Pool(min(workers, n_rooms)) as pool:
            for room_rows in pool.imap(simulate_room, jobs):  # imap keeps room order
                rows.extend(room_rows)
                bar.update()
    bar.close()

    csv_path = out / "rirs.csv"
    with atomic_write(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return csv_path
