"""How well can room area, source distance and T30 be told on held-out rooms, and from what?

    python benchmarks/room_cues.py --demo demo/          # a `disse-synth demo` output folder

Two sets of features, each fed to the same non-linear regressor (gradient-boosted trees on log
targets, fitted on the train split's rooms, scored on the test split's rooms, which it never saw):

* ``oracle (RIR)``: the W channel of each **RIR itself**, its energy in 26 log-spaced lag bins from
  0 to 80 ms after the direct sound, in dB relative to the direct sound's bin (so the absolute level,
  which the renderer normalises away, is not used; it would give distance as 1 / r). This is the
  early-decay profile an ideal blind deconvolution would recover.
* ``blind (rendered FOA)``: the same lag bins of the relative transfer functions X/W, Y/W, Z/W
  estimated from each **rendered sample** (Welch cross-spectra, 8192-point frames): what one can
  compute from the sound field without knowing the source.
* ``blind (shard features)``: per mel band, the mean and spread over time of the active and reactive
  intensity magnitudes and the frame-to-frame turn of the active direction, from the shard's
  ``iv``: statistics of exactly what the model reads.

Each row prints the test MAE divided by the MAE of the constant train-median guess (1.0 = no
information; issue 11 asks <= 0.7 of the learned model), for area, distance and T30. The learned
model's figures are in ``metrics.json`` of ``disse-eval`` (docs/spatial.md). The regressor needs
scikit-learn (the ``dev`` extra).
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

from disse.pipeline.shards import read_tar_samples
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
    onset = int(np.argmax(np.abs(rir_w) > 0.1 * np.abs(rir_w).max()))
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


def read_oracle(demo: Path) -> dict[str, np.ndarray]:
    rirs_csv = demo / "inputs" / "rirs" / "rirs.csv"
    with open(rirs_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    feats, meta = [], {k: [] for k in (*TARGETS, "split")}
    for row in tqdm(rows, desc="RIRs", unit="rir"):
        rir, sr = sf.read(rirs_csv.parent / row["rir_path"], dtype="float64", always_2d=True)
        feats.append(oracle_features(rir[:, 0], sr))  # AmbiX: W is channel 0
        meta["area"].append(float(row["area_m2"]))
        meta["distance"].append(float(row["source_distance_m"]))
        meta["t30"].append(float(row["fullband_T30_ms"]))
        meta["split"].append(row["split"])
    return {"X": np.array(feats), **{k: np.array(v) for k, v in meta.items()}}


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


def held_out_ratios(data: dict[str, np.ndarray], seed: int = 0) -> dict[str, float]:
    """Test MAE / MAE of the train-median guess, per target, for trees fitted on the train rooms."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    train, test = data["split"] == "train", data["split"] == "test"
    out = {}
    for name in TARGETS:
        y = data[name]
        model = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, random_state=seed)
        model.fit(data["X"][train], np.log(y[train]))
        pred = np.exp(model.predict(data["X"][test]))
        guess = np.abs(np.median(y[train]) - y[test]).mean()
        out[name] = float(np.abs(pred - y[test]).mean() / guess)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", required=True, help="a `disse-synth demo` output folder")
    ap.add_argument("--max-samples", type=int, default=2000, help="rendered samples read per split")
    args = ap.parse_args(argv)
    demo = Path(args.demo)
    if not (demo / "inputs" / "rirs" / "rirs.csv").is_file():
        sys.exit(f"error: {demo} has no inputs/rirs/rirs.csv (give a `disse-synth demo` folder)")
    transfer, shard_features = read_blind(demo, args.max_samples)
    rows = [("oracle (RIR)", read_oracle(demo)), ("blind (rendered FOA)", transfer),
            ("blind (shard features)", shard_features)]
    print(f"{'features':24s} {'train':>6s} {'test':>6s}  " + "  ".join(f"{t + ' / guess':>16s}" for t in TARGETS))
    for label, data in rows:
        r = held_out_ratios(data)
        n_train, n_test = int((data["split"] == "train").sum()), int((data["split"] == "test").sum())
        print(f"{label:24s} {n_train:6d} {n_test:6d}  " + "  ".join(f"{r[t]:16.2f}" for t in TARGETS))
    print("1.00 = the constant median guess; issue 11's goal for the learned model is <= 0.70")


if __name__ == "__main__":
    main()
