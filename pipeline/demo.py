"""`disse-synth demo`: an embedded corpus, generated in code, rendered into train/val/test shards.

Dry sounds: :data:`SOUND_TYPES` lists 32 clearly distinct synthetic sound types (tones, chords,
sweeps, noises, clicks, hums, sirens, bells, drums, ...). Each type has a few variants that
differ in pitch, rate and random details; the caption says what is really there (including the
pitch class where the type has one). Variant ``n-1`` of every type goes to test, ``n-2`` to
validation, the rest to training, so every split holds every type but no clip twice.

Spaces: a bank simulated with ``disse.pipeline.rirs.simulate_bank``, one call per room, each room
drawn from one cell of a room-size x reverberation x source-distance grid (:data:`ROOM_GRID`, 36
cells), so the bank spans the rule table's small / medium / large, dampened ... highly reverberant
and near / mid / far bins, with the three drawn independently (none tells another); source
directions are uniform on the sphere (left, right, behind, above and below all occur). Whole rooms
are held out: a quarter of the rooms are test rooms and an eighth validation rooms
(:func:`room_splits`), each split walking the grid from its first cell, so test rooms are unseen in
training yet span every size, reverberation and distance.

Pairing: K RIRs per clip and L clips per RIR (blocks, :func:`disse.pipeline.splits.pair_blocks`),
so each source is heard in several spaces and each space holds several sources.

Default size (``disse-synth demo --out demo``): 32 types x 8 variants = 256 clips (192 train, 32
val, 32 test); 288 rooms x 1 position = 288 RIRs (180 / 36 / 72 rooms: every position its own room,
because a room's size and reverberation are learned across rooms, and 72 test rooms make a
held-out room figure more than a few rooms' worth); K = L = 4 gives 768 train, 144 val and 288
test samples (about 2.4 GB of shards; about 2 minutes on 2 idle cores).
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
from scipy.signal import lfilter

from disse.pipeline.lock import RenderLock
from disse.pipeline.render import RenderOptions, plan_from_files, pool_context, run_plan
from disse.pipeline.rirs import simulate_bank
from disse.pipeline.splits import stable_uint
from disse.schemas.atomic import atomic_write

SR = 48000
N = 480000


def _write_csv_atomic(path: Path, rows: list[dict]) -> Path:
    """``rows`` as CSV (header from the first row), written atomically: a CSV that
    exists is complete, so an interrupted demo generation is redone, never half-used."""
    with atomic_write(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return path


# ---------------------------------------------------------------------------------------------
# Sound generators: (rng, variant in [0, 1]) -> mono float32 (N,) at SR, and caption slots
# ---------------------------------------------------------------------------------------------

def _t(n: int = N) -> np.ndarray:
    return np.arange(n, dtype=np.float64) / SR


def _pitch(v: float, lo: float, hi: float) -> tuple[float, str]:
    """A frequency between lo and hi (log scale) and an honest word for it."""
    f = lo * (hi / lo) ** v
    word = "low" if f < 250 else "mid-range" if f < 1000 else "high"
    return f, word


def _env_ad(n: int, attack: float, decay: float) -> np.ndarray:
    """Attack (s) then exponential decay (time constant s) envelope of n samples."""
    t = np.arange(n) / SR
    return np.minimum(1.0, t / max(attack, 1e-4)) * np.exp(-t / decay)


def _place(out: np.ndarray, event: np.ndarray, start_s: float) -> None:
    i = int(start_s * SR)
    if i >= len(out):
        return
    m = min(len(event), len(out) - i)
    out[i:i + m] += event[:m]


def _fade(x: np.ndarray, s: float = 0.02) -> np.ndarray:
    n = int(s * SR)
    ramp = np.linspace(0, 1, n)
    x[:n] *= ramp
    x[-n:] *= ramp[::-1]
    return x


def _harmonic(f: np.ndarray | float, t: np.ndarray, partials: int = 4, rolloff: float = 0.5) -> np.ndarray:
    phase = 2 * np.pi * (np.cumsum(np.broadcast_to(f, t.shape)) / SR)
    return sum(rolloff ** k * np.sin((k + 1) * phase) for k in range(partials))


def _pink(rng: np.random.Generator, n: int = N) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size)
    spec[1:] /= np.sqrt(f[1:])
    spec[0] = 0
    return np.fft.irfft(spec, n)


def _bandpass_noise(rng: np.random.Generator, lo: float, hi: float, n: int = N) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    spec[(f < lo) | (f > hi)] = 0
    return np.fft.irfft(spec, n)


def g_sine(rng, v):
    f, w = _pitch(v, 150, 2000)
    return _fade(np.sin(2 * np.pi * f * _t())), {"pitch": w}


def g_beeps(rng, v):
    f, w = _pitch(v, 400, 3000)
    t = _t()
    period = 0.5 + 0.5 * rng.random()
    gate = ((t % period) < period * 0.4).astype(float)
    gate = np.convolve(gate, np.ones(96) / 96, mode="same")
    return np.sin(2 * np.pi * f * t) * gate, {"pitch": w}


def g_major_chord(rng, v):
    f, w = _pitch(v, 110, 520)
    t = _t()
    x = sum(_harmonic(f * r, t, 5, 0.45) for r in (1.0, 1.26, 1.498))
    return _fade(x), {"pitch": w}


def g_minor_arpeggio(rng, v):
    f, w = _pitch(v, 150, 700)
    out = np.zeros(N)
    notes = [1.0, 1.189, 1.498, 2.0]
    step = 0.18 + 0.1 * rng.random()
    for i, s in enumerate(np.arange(0, 10, step)):
        n = int(0.6 * SR)
        ev = _harmonic(f * notes[i % 4], _t(n), 4, 0.5) * _env_ad(n, 0.005, 0.25)
        _place(out, ev, s)
    return out, {"pitch": w}


def _repeated_sweep(rng, f0: float, ratio: float):
    """Exponential sweeps from f0 to f0 * ratio, repeated with a random period (1-2.5 s)."""
    t = _t()
    period = 1.0 + 1.5 * rng.random()
    tt = t % period
    f = f0 * (ratio ** (tt / period))
    return np.sin(2 * np.pi * np.cumsum(f) / SR) * np.minimum(1, (period - tt) * 50), {}


def g_up_chirp(rng, v):
    f0, _ = _pitch(v, 100, 400)
    return _repeated_sweep(rng, f0, 20.0)


def g_down_chirp(rng, v):
    f0, _ = _pitch(v, 2000, 6000)
    return _repeated_sweep(rng, f0, 0.05)


def g_noise_bursts(rng, v):
    out = np.zeros(N)
    for s in np.arange(0.2, 10, 0.6 + 0.8 * rng.random()):
        n = int((0.08 + 0.15 * v) * SR)
        _place(out, rng.standard_normal(n) * np.hanning(n), s)
    return out, {}


def g_pink_noise(rng, v):
    return _fade(_pink(rng)), {}


def g_brown_rumble(rng, v):
    x = lfilter([1.0], [1.0, -0.999], rng.standard_normal(N))
    x = lfilter([1.0, -1.0], [1.0, -0.995], x)  # remove the drift, keep the rumble
    return _fade(x), {}


def g_metronome(rng, v):
    out = np.zeros(N)
    period = 0.25 + 0.5 * v
    click = np.sin(2 * np.pi * 2500 * _t(240)) * np.hanning(240)
    for s in np.arange(0.05, 10, period):
        _place(out, click, s)
    return out, {"speed": "fast" if period < 0.45 else "slow"}


def _filtered_impulses(rng, count: int, b: list[float], a: list[float]) -> np.ndarray:
    """``count`` random-amplitude impulses at distinct random samples, through the filter ``b / a``."""
    x = np.zeros(N)
    idx = rng.choice(N, size=count, replace=False)
    x[idx] = rng.uniform(-1, 1, idx.size)
    return lfilter(b, a, x)


def g_crackle(rng, v):
    return _filtered_impulses(rng, int(60 + 200 * v), [1.0, -0.9], [1.0]), {}


def g_hum(rng, v):
    f = 50.0 if v < 0.5 else 60.0
    t = _t()
    x = sum((0.7 ** k) * np.sin(2 * np.pi * f * (k + 1) * t + rng.uniform(0, 6)) for k in range(8))
    return _fade(x), {"freq": f"{int(f)}"}


def g_two_tone_siren(rng, v):
    f, _ = _pitch(v, 450, 900)
    t = _t()
    hi = (t % 1.2) < 0.6
    return _harmonic(np.where(hi, f * 1.33, f), t, 3, 0.4), {}


def g_wail_siren(rng, v):
    f, _ = _pitch(v, 500, 900)
    t = _t()
    inst = f * (1 + 0.6 * (0.5 - 0.5 * np.cos(2 * np.pi * t / (2.5 + rng.random()))))
    return _harmonic(inst, t, 3, 0.4), {}


def g_square_buzz(rng, v):
    f, w = _pitch(v, 80, 400)
    return _fade(np.sign(np.sin(2 * np.pi * f * _t())) * 0.5), {"pitch": w}


def g_saw_drone(rng, v):
    f, w = _pitch(v, 55, 300)
    t = _t()
    return _fade(2 * ((f * t) % 1.0) - 1 + 2 * ((f * 1.003 * t) % 1.0) - 1), {"pitch": w}


def g_tremolo(rng, v):
    f, w = _pitch(v, 200, 1500)
    t = _t()
    rate = 3 + 5 * rng.random()
    return _fade(np.sin(2 * np.pi * f * t) * (0.55 + 0.45 * np.sin(2 * np.pi * rate * t))), {"pitch": w}


def g_vibrato(rng, v):
    f, w = _pitch(v, 200, 1500)
    t = _t()
    inst = f * (1 + 0.03 * np.sin(2 * np.pi * (5 + 2 * rng.random()) * t))
    return _fade(_harmonic(inst, t, 3, 0.3)), {"pitch": w}


def g_bell(rng, v):
    f, w = _pitch(v, 300, 1500)
    out = np.zeros(N)
    n = int(3.0 * SR)
    tt = _t(n)
    ratios = (1.0, 2.76, 5.40, 8.93)
    ev = sum(np.exp(-tt * (1.2 + k)) * np.sin(2 * np.pi * f * r * tt) / (k + 1) for k, r in enumerate(ratios))
    for s in np.arange(0.1, 10, 2.0 + rng.random()):
        _place(out, ev, s)
    return out, {"pitch": w}


def g_plucked(rng, v):
    f, w = _pitch(v, 110, 600)
    out = np.zeros(N)
    scale = (1.0, 1.122, 1.26, 1.335, 1.498, 1.682)
    for s in np.arange(0.05, 9.5, 0.5):
        fn = f * scale[int(rng.integers(len(scale)))]
        period = int(round(SR / fn))
        n = int(0.9 * SR)
        burst = np.zeros(n)
        burst[:period] = rng.uniform(-1, 1, period)
        a = np.zeros(period + 2)
        a[0], a[period], a[period + 1] = 1.0, -0.497, -0.497  # Karplus-Strong loop
        _place(out, lfilter([1.0], a, burst), s)
    return out, {"pitch": w}


def g_kick_drum(rng, v):
    out = np.zeros(N)
    n = int(0.4 * SR)
    tt = _t(n)
    f = 50 + 100 * np.exp(-tt * 30)
    ev = np.sin(2 * np.pi * np.cumsum(f) / SR) * np.exp(-tt * 8)
    period = 0.4 + 0.4 * v
    for s in np.arange(0.05, 10, period):
        _place(out, ev, s)
    return out, {"speed": "fast" if period < 0.6 else "slow"}


def g_snare(rng, v):
    out = np.zeros(N)
    n = int(0.25 * SR)
    period = 0.3 + 0.5 * v
    for s in np.arange(0.05, 10, period):
        ev = (rng.standard_normal(n) + 0.5 * np.sin(2 * np.pi * 190 * _t(n))) * np.exp(-_t(n) * 25)
        _place(out, ev, s)
    return out, {"speed": "fast" if period < 0.55 else "slow"}


def g_patter(rng, v):
    return _filtered_impulses(rng, int(3000 + 6000 * v), [1.0, -0.5], [1.0, -0.6]), {}


def g_wind(rng, v):
    noise = _bandpass_noise(rng, 200, 1500 + 2000 * v)
    t = _t()
    env = 0.3 + 0.7 * (0.5 - 0.5 * np.cos(2 * np.pi * t / (4 + 3 * rng.random()) + rng.uniform(0, 6)))
    return _fade(noise * env), {}


def g_morse(rng, v):
    f, _ = _pitch(v, 500, 1000)
    out = np.zeros(N)
    unit = 0.08
    s = 0.1
    while s < 9.5:
        length = unit * (3 if rng.random() < 0.4 else 1)
        n = int(length * SR)
        _place(out, np.sin(2 * np.pi * f * _t(n)) * np.hanning(n) ** 0.1, s)
        s += length + unit * (3 if rng.random() < 0.3 else 1)
    return out, {}


def g_phone_ring(rng, v):
    t = _t()
    tone = np.sin(2 * np.pi * 440 * t) + np.sin(2 * np.pi * 480 * t)
    cyc = t % 3.0
    gate = ((cyc < 0.4) | ((cyc > 0.6) & (cyc < 1.0))).astype(float)
    return tone * np.convolve(gate, np.ones(96) / 96, mode="same") * (1 + 0.3 * np.sin(2 * np.pi * 20 * t)), {}


def g_dial_tone(rng, v):
    t = _t()
    return _fade(np.sin(2 * np.pi * 350 * t) + np.sin(2 * np.pi * 440 * t)), {}


def _scale(rng, v, direction):
    f, w = _pitch(v, 200, 800)
    out = np.zeros(N)
    steps = (0, 2, 4, 5, 7, 9, 11, 12)
    note = 0.3 + 0.15 * rng.random()
    for i, s in enumerate(np.arange(0.05, 9.7, note)):
        k = steps[i % 8] if direction > 0 else steps[7 - i % 8]
        n = int(note * SR)
        _place(out, _harmonic(f * 2 ** (k / 12), _t(n), 3, 0.4) * np.hanning(n) ** 0.3, s)
    return out, {"pitch": w}


def g_scale_up(rng, v):
    return _scale(rng, v, +1)


def g_scale_down(rng, v):
    return _scale(rng, v, -1)


def g_trill(rng, v):
    f, w = _pitch(v, 300, 1500)
    t = _t()
    rate = 6 + 4 * rng.random()
    inst = np.where((t * rate) % 1.0 < 0.5, f, f * 1.122)
    return _fade(_harmonic(inst, t, 2, 0.3)), {"pitch": w}


def g_pulse_throb(rng, v):
    rate = 15 + 25 * v
    t = _t()
    x = np.zeros(N)
    x[(np.arange(0, 10, 1 / rate) * SR).astype(int)] = 1.0
    x = lfilter([1.0], [1.0, -1.9 * math.cos(2 * math.pi * 120 / SR), 0.9025], x)
    return _fade(x * (1 + 0.2 * np.sin(2 * np.pi * 0.5 * t))), {}


def g_heartbeat(rng, v):
    out = np.zeros(N)
    n = int(0.15 * SR)
    ev = np.sin(2 * np.pi * 60 * _t(n)) * np.hanning(n)
    period = 0.6 + 0.5 * v
    for s in np.arange(0.1, 10, period):
        _place(out, ev, s)
        _place(out, 0.7 * ev, s + 0.18)
    return out, {"speed": "fast" if period < 0.85 else "slow"}


def g_alarm(rng, v):
    f, _ = _pitch(v, 1800, 3500)
    out = np.zeros(N)
    n = int(0.07 * SR)
    beep = np.sin(2 * np.pi * f * _t(n)) * np.hanning(n) ** 0.2
    for g in np.arange(0.1, 10, 1.0):
        for k in range(4):
            _place(out, beep, g + k * 0.12)
    return out, {}


@dataclass(frozen=True)
class SoundType:
    name: str
    make: Callable[[np.random.Generator, float], tuple[np.ndarray, dict]]
    captions: tuple[str, ...]  # paraphrases; {pitch} / {speed} / {freq} filled by the generator


SOUND_TYPES: tuple[SoundType, ...] = (
    SoundType("sine", g_sine, ("A steady {pitch} pure tone.", "A constant {pitch} sine tone hums without change.")),
    SoundType("beeps", g_beeps, ("A {pitch} electronic tone beeps on and off.", "Repeated {pitch} beeps.")),
    SoundType("major_chord", g_major_chord, ("A {pitch} major chord is held on a synthesizer.", "A sustained {pitch} major chord.")),
    SoundType("minor_arpeggio", g_minor_arpeggio, ("A {pitch} minor chord is played as a repeating arpeggio.", "Notes of a {pitch} minor chord are plucked one after another.")),
    SoundType("up_chirp", g_up_chirp, ("A tone sweeps upward in pitch, again and again.", "Repeated rising frequency sweeps.")),
    SoundType("down_chirp", g_down_chirp, ("A whistle-like tone glides downward in pitch, repeatedly.", "Repeated falling frequency sweeps.")),
    SoundType("noise_bursts", g_noise_bursts, ("Short bursts of white noise.", "Brief hisses of noise start and stop.")),
    SoundType("pink_noise", g_pink_noise, ("Steady pink noise hisses.", "A constant broadband hiss.")),
    SoundType("brown_rumble", g_brown_rumble, ("A deep, rumbling noise.", "Low-frequency rumble with no pitch.")),
    SoundType("metronome", g_metronome, ("A metronome clicks at a {speed} steady tempo.", "Regular {speed} clicks.")),
    SoundType("crackle", g_crackle, ("Irregular crackling clicks.", "Random sparse crackles and pops.")),
    SoundType("hum", g_hum, ("A low {freq} hertz electrical hum.", "Mains hum buzzes steadily.")),
    SoundType("two_tone_siren", g_two_tone_siren, ("A two-tone siren alternates between a high and a low pitch.", "A hi-lo siren.")),
    SoundType("wail_siren", g_wail_siren, ("A siren wails, rising and falling in pitch.", "A wailing siren sweeps up and down.")),
    SoundType("square_buzz", g_square_buzz, ("A harsh {pitch} square-wave buzz.", "A {pitch} buzzing square wave.")),
    SoundType("saw_drone", g_saw_drone, ("A bright {pitch} sawtooth drone.", "A {pitch} buzzy synthesizer drone.")),
    SoundType("tremolo", g_tremolo, ("A {pitch} tone pulses in loudness.", "A {pitch} tone with a throbbing tremolo.")),
    SoundType("vibrato", g_vibrato, ("A {pitch} tone wavers with vibrato.", "A sustained {pitch} note with vibrato.")),
    SoundType("bell", g_bell, ("A {pitch} bell is struck and rings out, several times.", "A ringing {pitch} bell tone decays after each strike.")),
    SoundType("plucked", g_plucked, ("A {pitch} plucked string plays a melody.", "Notes plucked on a {pitch} string instrument.")),
    SoundType("kick_drum", g_kick_drum, ("A bass drum thumps at a {speed} steady beat.", "Deep {speed} drum kicks.")),
    SoundType("snare", g_snare, ("A snare drum is hit at a {speed} steady beat.", "Snappy {speed} snare hits.")),
    SoundType("patter", g_patter, ("A dense patter of tiny ticks, like rain.", "Many small random ticks patter.")),
    SoundType("wind", g_wind, ("Filtered noise swells and fades like wind.", "A gusting, whooshing noise.")),
    SoundType("morse", g_morse, ("A tone beeps a pattern of short and long pulses, like Morse code.", "Morse code beeps.")),
    SoundType("phone_ring", g_phone_ring, ("A telephone rings in double bursts.", "An old phone ringing tone.")),
    SoundType("dial_tone", g_dial_tone, ("A steady telephone dial tone.", "A continuous two-frequency dial tone.")),
    SoundType("scale_up", g_scale_up, ("A {pitch} melody climbs up a musical scale, over and over.", "Notes rise step by step up a {pitch} scale.")),
    SoundType("scale_down", g_scale_down, ("A {pitch} melody walks down a musical scale, over and over.", "Notes fall step by step down a {pitch} scale.")),
    SoundType("trill", g_trill, ("Two {pitch} notes alternate rapidly in a trill.", "A fast {pitch} trill.")),
    SoundType("pulse_throb", g_pulse_throb, ("A low, throbbing pulse like an idling engine.", "A low mechanical throbbing.")),
    SoundType("heartbeat", g_heartbeat, ("A {speed} heartbeat-like double thump.", "Soft double thumps like a {speed} heartbeat.")),
)


def make_clip(sound: SoundType, variant: int, n_variants: int, seed: int) -> tuple[np.ndarray, str]:
    """One dry clip ``(N,)`` float32 peaking at 0.5 and its caption; fixed by (type, variant, seed)."""
    rng = np.random.default_rng([seed, stable_uint(f"demo:{sound.name}:{variant}")])
    # spread variants over the pitch / rate range, jittered
    v = float(np.clip((variant + 0.5) / n_variants + rng.uniform(-0.1, 0.1), 0.0, 1.0))
    x, slots = sound.make(rng, v)
    x = np.asarray(x, dtype=np.float64)
    x = 0.5 * x / np.abs(x).max()
    caption = sound.captions[int(rng.integers(len(sound.captions)))].format(**slots)
    return x.astype(np.float32), caption


def variant_split(variant: int, n_variants: int) -> str:
    """Last variant -> test, the one before -> val, the rest -> train (needs >= 3 variants)."""
    return "test" if variant == n_variants - 1 else "val" if variant == n_variants - 2 else "train"


def write_dry_corpus(out_dir: Path, n_types: int, clips_per_type: int, seed: int) -> Path:
    """Write ``{out_dir}/{clip_id}.flac`` and ``{out_dir}/clips.csv`` (with a split column)."""
    if not 1 <= n_types <= len(SOUND_TYPES):
        raise ValueError(f"types must be in 1..{len(SOUND_TYPES)}, got {n_types}")
    if clips_per_type < 3:
        raise ValueError("clips-per-type must be >= 3 (one each for val and test)")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for sound in SOUND_TYPES[:n_types]:
        for v in range(clips_per_type):
            clip_id = f"{sound.name}_v{v}"
            audio, caption = make_clip(sound, v, clips_per_type, seed)
            sf.write(out_dir / f"{clip_id}.flac", audio, SR, format="FLAC", subtype="PCM_24")
            rows.append({"audiocap_id": clip_id, "caption": caption, "path": f"{clip_id}.flac",
                         "split": variant_split(v, clips_per_type), "sound_type": sound.name})
    # written last: its presence means the corpus is complete
    return _write_csv_atomic(out_dir / "clips.csv", rows)


# ---------------------------------------------------------------------------------------------
# RIR bank: one simulate_bank call per room, rooms drawn from a size x reverberation x distance grid
# ---------------------------------------------------------------------------------------------

# Source distance classes, m (rirs.py draws log-uniform within each): the rule table's near / mid /
# far bins, one octave each for near and mid, so every distance class is as common as the others.
DISTANCE_CLASSES: tuple[tuple[float, float], ...] = ((0.5, 1.0), (1.0, 2.0), (2.0, 6.0))
# (area range m², T30 range s) per cell, ordered so that any prefix spreads over size and
# reverberation.
SIZE_REVERB_GRID: tuple[tuple[tuple[float, float], tuple[float, float]], ...] = (
    ((12, 40), (0.10, 0.16)),    # small, dampened
    ((130, 280), (1.3, 1.6)),    # large, highly reverberant
    ((60, 90), (0.3, 0.5)),      # medium, slightly reverberant
    ((12, 40), (0.7, 0.9)),      # small, reverberant
    ((130, 280), (0.10, 0.16)),  # large, dampened
    ((60, 90), (1.3, 1.6)),      # medium, highly reverberant
    ((12, 40), (0.3, 0.5)),      # small, slightly reverberant
    ((130, 280), (0.7, 0.9)),    # large, reverberant
    ((60, 90), (0.10, 0.16)),    # medium, dampened
    ((12, 40), (1.3, 1.6)),      # small, highly reverberant
    ((130, 280), (0.3, 0.5)),    # large, slightly reverberant
    ((60, 90), (0.7, 0.9)),      # medium, reverberant
)
# (area range, T30 range, distance range) per room cell: size x reverberation x distance class, all
# 36 combinations, drawn independently so that none of the three tells another (the first 12 cells
# are the size x reverberation grid in order, so a prefix still spans every size and reverberation).
# A distance class that does not fit a small, low room is drawn near the horizontal plane
# (rirs.sample_position draws the distance first), as in real rooms.
_N_SR, _N_D = len(SIZE_REVERB_GRID), len(DISTANCE_CLASSES)
ROOM_GRID: tuple[tuple[tuple[float, float], tuple[float, float], tuple[float, float]], ...] = tuple(
    (*SIZE_REVERB_GRID[i % _N_SR], DISTANCE_CLASSES[(i + i // _N_SR) % _N_D]) for i in range(_N_SR * _N_D))


def room_splits(n_rooms: int) -> list[str]:
    """Split of each demo room: whole rooms are held out (no room has positions in two splits).

    A quarter of the rooms (at least one) go to test and an eighth (at least one) to validation.
    Rooms are numbered train first, then val, then test."""
    if n_rooms < 3:
        raise ValueError("rooms must be >= 3 (one each for val and test)")
    n_test, n_val = max(1, round(n_rooms / 4)), max(1, round(n_rooms / 8))
    n_train = n_rooms - n_test - n_val
    return ["train"] * n_train + ["val"] * n_val + ["test"] * n_test


_CELL_OFFSET = {"train": 0, "val": 2, "test": 3}


def room_cell(room: int, splits: list[str]) -> int:
    """ROOM_GRID cell of a room: its index among the rooms of its split (plus a per-split offset), so
    every split walks the grid in order and even the smallest demo (4 rooms: 2 / 1 / 1) spans every
    room size and reverberation bin over its splits."""
    split = splits[room]
    return (splits[:room].count(split) + _CELL_OFFSET[split]) % len(ROOM_GRID)


def _simulate_room(args: tuple[str, int, int, int]) -> list[dict]:
    out_dir, room, cell, split, positions, seed = args
    area, t30, distance = ROOM_GRID[cell]
    sub = Path(out_dir) / f"room{room:03d}"
    csv_path = simulate_bank(sub, 1, positions, seed=seed * 1000 + room, workers=1, area_range=area,
                             t30_range=t30, distance_range=distance, early_ms=30.0, max_order=16,
                             max_rir_s=max(0.5, 1.35 * t30[1]))
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    for k, row in enumerate(rows):
        row["rir_id"] = f"room{room:03d}_p{k}"
        row["rir_path"] = f"room{room:03d}/{row['rir_path']}"
        row["room_index"] = room  # simulate_bank numbered it 0 within its own one-room bank
        row["split"] = split
    return rows


def write_rir_bank(out_dir: Path, n_rooms: int, positions_per_room: int, seed: int, workers: int) -> Path:
    """Simulate the demo's rooms into ``out_dir`` and write the merged ``rirs.csv`` (``room_index`` and
    ``split`` columns: whole rooms are held out, see :func:`room_splits`)."""
    if positions_per_room < 1:
        raise ValueError("positions-per-room must be >= 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = room_splits(n_rooms)
    jobs = [(str(out_dir), r, room_cell(r, splits), splits[r], positions_per_room, seed) for r in range(n_rooms)]
    if workers > 1 and n_rooms > 1:
        with pool_context().Pool(min(workers, n_rooms)) as pool:
            per_room = pool.map(_simulate_room, jobs)
            pool.close()
            pool.join()
    else:
        per_room = [_simulate_room(j) for j in jobs]
    rows = [row for room_rows in per_room for row in room_rows]
    return _write_csv_atomic(out_dir / "rirs.csv", rows)


# ---------------------------------------------------------------------------------------------
# The demo
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DemoConfig:
    types: int = 32
    clips_per_type: int = 8
    rooms: int = 288
    positions_per_room: int = 1
    rirs_per_clip: int = 4
    clips_per_rir: int = 4
    shard_size: int = 32
    seed: int = 0


def _inputs_fingerprint(cfg: DemoConfig) -> str:
    return f"demo-inputs v5 types={cfg.types} clips={cfg.clips_per_type} rooms={cfg.rooms} positions={cfg.positions_per_room} seed={cfg.seed}\n"


def run_demo(out_dir: str | Path, cfg: DemoConfig = DemoConfig(), *, workers: int = 1,
             progress: bool = True) -> dict:
    """Generate the corpus and RIR bank under ``{out}/inputs`` (reused when already complete)
    and render ``{out}/{train,val,test}``; returns the render manifest. The folder is locked for the
    whole run (:class:`~disse.pipeline.lock.RenderLock`): a second demo or render into it is refused."""
    out = Path(out_dir)
    with RenderLock(out) as guard:
        if guard.note:
            print(f"note: {guard.note}", file=sys.stderr, flush=True)
        return _run_demo_locked(out, cfg, workers, progress)


def _run_demo_locked(out: Path, cfg: DemoConfig, workers: int, progress: bool) -> dict:
    inputs = out / "inputs"
    stamp = inputs / "inputs.txt"
    clips_csv, rirs_csv = inputs / "dry" / "clips.csv", inputs / "rirs" / "rirs.csv"
    if not (stamp.is_file() and stamp.read_text() == _inputs_fingerprint(cfg)
            and clips_csv.is_file() and rirs_csv.is_file()):
        stamp.unlink(missing_ok=True)
        if progress:
            print(f"demo: generating {cfg.types} x {cfg.clips_per_type} dry clips and "
                  f"{cfg.rooms} x {cfg.positions_per_room} RIRs under {inputs}", flush=True)
        clips_csv = write_dry_corpus(inputs / "dry", cfg.types, cfg.clips_per_type, cfg.seed)
        rirs_csv = write_rir_bank(inputs / "rirs", cfg.rooms, cfg.positions_per_room, cfg.seed, workers)
        stamp.write_text(_inputs_fingerprint(cfg))
    options = RenderOptions(seed=cfg.seed, shard_size=cfg.shard_size, rirs_per_clip=cfg.rirs_per_clip,
                            clips_per_rir=cfg.clips_per_rir)
    plan = plan_from_files(clips_csv, rirs_csv, options)
    # Inputs recorded relative to the output folder, so the manifest does not depend on where it lives.
    plan.inputs.update(clips_csv="inputs/dry/clips.csv", rirs_csv="inputs/rirs/rirs.csv")
    _drop_stale_render(out, plan, progress)
    return run_plan(plan, out, workers=workers, progress=progress, lock=False)  # run_demo holds the lock


def _drop_stale_render(out: Path, plan, progress: bool) -> None:
    """The demo owns its folder: shards of an earlier demo with other settings (even a killed one)
    are removed, where a plain ``render`` refuses to mix renders."""
    wanted = {t.name[:-4]: t.fingerprint for t in plan.shards}
    stale = False
    manifest = out / "manifest.json"
    records = [manifest] if manifest.is_file() else []
    records += sorted((out / "_parts").glob("*.json")) if (out / "_parts").is_dir() else []
    for path in records:
        try:
            fp = json.loads(path.read_text()).get("fingerprint")
        except ValueError:
            fp = None
        expected = plan.fingerprint if path == manifest else wanted.get(path.stem)
        stale = stale or fp != expected
    if not stale:
        return
    if progress:
        print(f"demo: settings changed; removing the earlier shards in {out}", flush=True)
    for name in ("train", "val", "test", "_parts"):
        shutil.rmtree(out / name, ignore_errors=True)
    manifest.unlink(missing_ok=True)
