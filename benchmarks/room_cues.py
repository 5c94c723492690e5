"""How well can room area, source distance and T30 be told on held-out rooms, and from what?

    python benchmarks/room_cues.py --demo demo/          # a `disse-synth demo` output folder
    python benchmarks/room_cues.py --demo demo/ --oracle-only   # the RIR rows only (seconds)

Sets of features, each fed to the same two fits on log targets, fitted on the train split's rooms
and scored on the test split's rooms, which they never saw: gradient-boosted trees and a linear fit
(ridge on standardised features). Both are printed, ``trees / linear``: the question is whether the
information is there, so neither regressor's bias should decide it.

* ``oracle: RIR early decay``: the W channel of each **RIR itself**, its energy in 26 log-spaced lag
  bins from 0 to 80 ms after the direct sound, in dB relative to the direct sound's bin (so the
  absolute level, which the renderer normalises away, is not used; it would give distance as 1 / r).
  This is the early-decay profile an ideal blind deconvolution would recover.
* ``oracle: DRR + T30``: each RIR's true direct-to-reverberant ratio
  (:func:`disse.pipeline.rirs.direct_to_reverberant_db`) and true T30, the two scalars classical
  acoustics tells distance and room size from. In a diffuse field DRR ~ V / (T60 r²): with T30
  known it fixes r² / V, not r or V alone. ``+ area`` adds the true floor area (distance only),
  to show what is missing.
* ``blind: rendered FOA``: the same lag bins of the relative transfer functions X/W, Y/W, Z/W
  estimated from each **rendered sample** (Welch cross-spectra, 8192-point frames): what one can
  compute from the sound field without knowing the source.
* ``blind: shard features``: per mel band, the mean and spread over time of the active and reactive
  intensity magnitudes and the frame-to-frame turn of the active direction, from the shard's
  ``iv``: statistics of exactly what the model reads.

Each row prints the test MAE divided by the MAE of the constant train-median guess (1.0 = no
information; issue 11 asks <= 0.7 of the learned model) for area, distance and T30, and the
held-out balanced accuracy of the rule table's room-size and distance classes (small / medium /
large, near / mid / far; chance 0.33, issue 11 asks the zero-shot classifier for >= 0.48) from
class-balanced trees / logistic regression. The learned model's figures are in ``metrics.json``
of ``disse-eval`` (docs/spatial.md). The fits need scikit-learn (the ``dev`` extra).
"""
from __future__ import annotations

import argparse
import csv
import glob
import itertools
import sys
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile as sf
from tqdm import tqdm

from disse.pipeline.rirs import direct_onset, direct_to_reverberant_db
from disse.pipeline.shards import read_tar_samples
from disse.schemas.captions import load_caption_rules
from disse.schemas.shard import decode_foa_sample, decode_iv, decode_meta, iv_member

LAG_EDGES_MS = np.concatenate([[0.0, 0.4], np.geomspace(0.8, 80.0, 25)])
TARGETS = ("area", "distance", "t30")


def lag_profile_db(energy: np.ndarray, sample_rate: int) -> np.ndarray:
    """``(L,)`` energy per lag sample from lag 0 -> ``(26,)`` dB per :data:`LAG_EDGES_MS` bin."""
    lag_ms = np.arange(len(energy)) * 1e3 / sample_rate
    return np.array([10 * np.log10(energy[(lag_ms >= a) & (lag_ms < b)].sum() + 1e-12)
                     for a, b in zip(LAG_EDGES_MS[:-1], LAG_EDGES_MS[1:])])


def oracle_features(rir_w: np.ndarray, sample_rate: int) -> np.ndarray:
    """W of a RIR ``(T,)`` -> its early-decay profile relative to the direct sound (dB)."""
    onset = direct_onset(rir_w)
    profile = lag_profile_db(rir_w[onset:] ** 2, sample_rate)
    return profile - profile[0]


def blind_features(foa: np.ndarray, sample_rate: int, n_fft: int = 8192) -> np.ndarray:
    """Rendered FOA ``(4, T)`` -> lag profile (dB) of the relative transfer functions [Y, Z, X] / W."""
    _, _, spec = scipy.signal.stft(foa, fs=sample_rate, nperseg=n_fft, noverlap=n_fft - n_fft // 4,
                                   boundary=None, padded=False)
    w = spec[0]
    ratio = (spec[1:] * np.conj(w)[None]).sum(-1) / ((np.abs(w) ** 2).sum(-1) + 1e-12)
    impulse = np.fft.irfft(ratio, n_fft, axis=-1)
    return lag_profile_db((impulse ** 2).sum(0), sample_rate)


def iv_statistics(iv: np.ndarray) -> np.ndarray:
    """Features ``(6, F, M)`` -> per band: mean and std over live frames of |I_act| and |I_rea|, and the
    mean cosine between consecutive frames' active directions ``(5 M,)``."""
    act, rea = np.linalg.norm(iv[:3], axis=0), np.linalg.norm(iv[3:], axis=0)
    live = (act + rea) > 1e-3  # frames of silence hold zeros, not a field
    out = []
    for x in (act, rea):
        masked = np.ma.masked_array(x, ~live)
        out += [masked.mean(0).filled(0.0), masked.std(0).filled(0.0)]
    unit = iv[:3] / (act[None] + 1e-6)
    turn = np.ma.masked_array((unit[:, 1:] * unit[:, :-1]).sum(0), ~(live[1:] & live[:-1]))
    out.append(turn.mean(0).filled(0.0))
    return np.concatenate(out).astype(np.float32)


def read_oracle(demo: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(early-decay profile rows, [DRR dB, log T30, log area] rows) of every RIR of the demo bank."""
    rirs_csv = demo / "inputs" / "rirs" / "rirs.csv"
    with open(rirs_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    profiles, drr, meta = [], [], {k: [] for k in (*TARGETS, "split")}
    for row in tqdm(rows, desc="RIRs", unit="rir"):
        rir, sr = sf.read(rirs_csv.parent / row["rir_path"], dtype="float64", always_2d=True)
        profiles.append(oracle_features(rir[:, 0], sr))  # AmbiX: W is channel 0
        drr.append(direct_to_reverberant_db(rir[:, 0], sr))
        meta["area"].append(float(row["area_m2"]))
        meta["distance"].append(float(row["source_distance_m"]))
        meta["t30"].append(float(row["fullband_T30_ms"]))
        meta["split"].append(row["split"])
    targets = {k: np.array(v) for k, v in meta.items()}
    scalars = np.column_stack([drr, np.log(targets["t30"]), np.log(targets["area"])])
    return {"X": np.array(profiles), **targets}, {"X": scalars, **targets}


def read_blind(demo: Path, max_per_split: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(transfer-function rows, shard-feature rows) of the train and test samples."""
    feats, stats, meta = [], [], {k: [] for k in (*TARGETS, "split")}
    for split in ("train", "test"):
        # one shard in memory at a time (a sample holds ~2 MB of audio)
        samples = (s for tar in sorted(glob.glob(str(demo / split / "*.tar"))) for s in read_tar_samples(tar))
        for s in tqdm(itertools.islice(samples, max_per_split), desc=f"{split} samples", unit="sample"):
            m = decode_meta(s["json"])
            foa, sr = decode_foa_sample(s, m)
            feats.append(blind_features(foa, sr))
            stats.append(iv_statistics(decode_iv(s[iv_member(s, where=split)]).astype(np.float32)))
            meta["area"].append(m.area_m2)
            meta["distance"].append(m.source_distance_m)
            meta["t30"].append(m.t30_ms)
            meta["split"].append(split)
    targets = {k: np.array(v) for k, v in meta.items()}
    return {"X": np.array(feats), **targets}, {"X": np.array(stats), **targets}


def _regressors(seed: int) -> dict:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {"trees": HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, random_state=seed),
            "linear": make_pipeline(StandardScaler(), Ridge(alpha=1.0))}


def _classifiers(seed: int) -> dict:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {"trees": HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=seed,
                                                    class_weight="balanced"),
            "linear": make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000))}


def held_out_ratios(data: dict[str, np.ndarray], seed: int = 0,
                    targets: tuple[str, ...] = TARGETS) -> dict[str, dict[str, float]]:
    """``{target: {fit: test MAE / MAE of the train-median guess}}`` for fits on the train rooms."""
    train, test = data["split"] == "train", data["split"] == "test"
    out: dict[str, dict[str, float]] = {}
    for name in targets:
        y = data[name]
        guess = np.abs(np.median(y[train]) - y[test]).mean()
        out[name] = {}
        for fit, model in _regressors(seed).items():
            model.fit(data["X"][train], np.log(y[train]))
            # clipped to the training range: a linear fit must not extrapolate to a 1000 m² room
            pred = np.clip(np.exp(model.predict(data["X"][test])), y[train].min(), y[train].max())
            out[name][fit] = float(np.abs(pred - y[test]).mean() / guess)
    return out


CLASSES = {"size": ("room_size", "area"), "dist": ("distance", "distance")}


def held_out_class_accuracy(data: dict[str, np.ndarray], seed: int = 0,
                            classes: tuple[str, ...] = tuple(CLASSES)) -> dict[str, dict[str, float]]:
    """``{class set: {fit: balanced accuracy on the test rooms}}`` for the rule table's bins."""
    from sklearn.metrics import balanced_accuracy_score

    rules = load_caption_rules()
    train, test = data["split"] == "train", data["split"] == "test"
    out: dict[str, dict[str, float]] = {}
    for name in classes:
        attribute, quantity = CLASSES[name]
        labels = np.array([rules.attributes[attribute].label_of(float(v)) for v in data[quantity]])
        out[name] = {}
        for fit, model in _classifiers(seed).items():
            model.fit(data["X"][train], labels[train])
            out[name][fit] = float(balanced_accuracy_score(labels[test], model.predict(data["X"][test])))
    return out


def _row(label: str, data: dict[str, np.ndarray], skip: tuple[str, ...] = ()) -> str:
    ratios = held_out_ratios(data, targets=tuple(t for t in TARGETS if t not in skip))
    accuracy = held_out_class_accuracy(data, classes=tuple(c for c in CLASSES if CLASSES[c][1] not in skip))
    n_train, n_test = int((data["split"] == "train").sum()), int((data["split"] == "test").sum())

    def pair(d: dict[str, dict[str, float]], key: str) -> str:
        return f"{d[key]['trees']:.2f} / {d[key]['linear']:.2f}" if key in d else "-"
    cells = [pair(ratios, t) for t in TARGETS] + [pair(accuracy, c) for c in CLASSES]
    return f"{label:30s} {n_train:5d} {n_test:5d}  " + "  ".join(f"{c:>12s}" for c in cells)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", required=True, help="a `disse-synth demo` output folder")
    ap.add_argument("--max-samples", type=int, default=2000, help="rendered samples read per split")
    ap.add_argument("--oracle-only", action="store_true", help="only the rows computed from the RIRs")
    args = ap.parse_args(argv)
    demo = Path(args.demo)
    if not (demo / "inputs" / "rirs" / "rirs.csv").is_file():
        sys.exit(f"error: {demo} has no inputs/rirs/rirs.csv (give a `disse-synth demo` folder)")
    profile, scalars = read_oracle(demo)
    rows = [("oracle: RIR early decay", profile, ()),
            ("oracle: DRR + T30", {**scalars, "X": scalars["X"][:, :2]}, ("t30",)),
            ("oracle: DRR + T30 + area", scalars, ("t30", "area"))]
    if not args.oracle_only:
        transfer, shard_features = read_blind(demo, args.max_samples)
        rows += [("blind: rendered FOA", transfer, ()), ("blind: shard features", shard_features, ())]
    print("held-out rooms; MAE / MAE of the median guess (1.00 = no information, goal <= 0.70) and balanced")
    print("accuracy of the rule table's classes (chance 0.33, zero-shot goal >= 0.48); each cell: trees / linear")
    print(f"{'features':30s} {'train':>5s} {'test':>5s}  "
          + "  ".join(f"{h:>12s}" for h in ("area", "distance", "T30", "size class", "dist class")))
    for label, data, skip in rows:
        print(_row(label, data, skip))


if __name__ == "__main__":
    main()
