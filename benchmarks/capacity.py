"""Capacity plan: what one H100 consumes in the paper configuration, and what feeds it.

    python benchmarks/capacity.py                          # full-size models, counted on CPU (~1-3 min)
    python benchmarks/capacity.py --utilisation 0.25 --loader-rate 420
    python benchmarks/capacity.py --quick                  # tiny stand-in models: checks the script only

Inputs, each printed with its source:
* FLOPs of one training sample (forward + backward) of both presets at full size, counted with
  ``torch.utils.flop_counter.FlopCounterMode`` on CPU at batch 2 / 1 (matrix products and convolutions; the
  element-wise rest is not counted, nor the official preset's CPU-side HTSAT feature extractor):
  ``paper`` = configs/paper.yaml's DELSA (HTSAT-tiny on W, the intensity CNN, RoBERTa-base text at
  ``--text-tokens`` tokens, both heads); ``official`` = the release's DISSEOfficial (fused HTSAT on W, the
  16 kHz CoordConv branch, RoBERTa-base padded to 512 tokens as the release does).
* An H100 SXM's dense bf16 peak (989 TFLOP/s) at ``--utilisation`` (model FLOPs utilisation; 0.30 is a
  stated assumption, typical of mid-sized conv + transformer training in bf16, not a measurement):
  samples/s per GPU = peak x utilisation / FLOPs per sample. benchmarks/gpu_check.py measures it.
* ``--loader-rate``: samples per CPU-second of the data pipeline end to end (benchmarks/data.py, 2 workers)
  for the paper preset; ``--official-loader-rate`` for the official preset, whose front end decodes all
  four channels and computes the 16 kHz features and the CLAP extractor's mel on the CPU (benchmarks/data.py
  prints each cost: ~8 + ~35 + ~10 ms per sample on the build machine, hence 19 per CPU-second).
* Bytes per sample: read (paper: ``w.wav`` + ``iv.npz`` + ``json``, 1.21 MB on the demo renders; official:
  ``w.wav`` + ``yzx.flac`` + ``json``, at most 1.94 MB on real recordings) and stored (every member: the
  issue's Spatial AudioCaps estimate, ~440 GB for ~200,000 samples).
* Data sets at 4 rooms per clip: Spatial AudioCaps (AudioCaps: 49,838 train + 495 val + 975 test
  clips) and Clotho v2.1 (3,839 dev + 1,045 val + 1,045 eval clips).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from disse.configs import config_path
from disse.trainer.model.hf import write_random_roberta
from disse.trainer.model.official import DISSEOfficial, OfficialConfig
from disse.trainer.training.config import load_train_config
from disse.trainer.training.loop import build_model

H100_BF16_DENSE = 989e12  # FLOP/s, H100 SXM dense bf16 (NVIDIA data sheet; 1979 with 2:4 sparsity)
DATASETS = {"Spatial AudioCaps": 51_308, "Clotho": 5_929}  # clips; x rooms per clip = samples


def roberta_stand_in(path: Path, quick: bool = False) -> Path:
    """A local roberta-base-shaped folder (random weights; the vocabulary size does not change FLOPs)."""
    size = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64) if quick else {}
    return write_random_roberta(path, vocab_size=50265, **size)


def _count(step) -> float:
    """FLOPs of ``step()`` (forward + backward)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def paper_flops(roberta: Path, tokens: int, quick: bool) -> float:
    """Forward + backward FLOPs of one sample of configs/paper.yaml's DELSA (random weights)."""
    over = ["data.train=unused", f"model.text.hf_dir={roberta}", "model.text.pretrained=false"]
    if quick:
        over += ["model.audio.htsat.embed_dim=16", "model.audio.htsat.depths=[1,1,1]",
                 "model.audio.htsat.num_heads=[1,2,4]"]
    cfg = load_train_config(config_path("paper.yaml"), over)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    clip, b = 480_000, 2  # batch 2: the branch's batch norm cannot train on 1 sample; FLOPs are per sample
    frames, mels = 1001, 64  # the project's features of a 10 s clip (schemas/features.py defaults)
    waveform = (torch.randn(b, clip) * 3000).to(torch.int16)
    iv = torch.randint(-127, 128, (b, 6, frames, mels), dtype=torch.int8)
    ids = torch.randint(5, 50, (b, tokens))
    ids[:, 0], ids[:, -1] = 0, 2
    text = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def step():
        out = model(waveform, iv, text)
        loss = sum(v.float().sum() for part in out.values() for v in
                   (part.values() if isinstance(part, dict) else [part]) if torch.is_tensor(v)) + \
            sum(v.sum() for v in out["audio"]["phys"].values())
        loss.backward()
    return _count(step) / b


def official_flops(roberta: Path, quick: bool) -> float:
    """Forward + backward FLOPs of one sample of the release's DISSEOfficial (random weights)."""
    over = {"depths": [1, 1, 1, 1], "hidden_size": 96, "patch_embeds_hidden_size": 12,
            "num_attention_heads": [1, 2, 4, 8]} if quick else None
    torch.manual_seed(0)
    model = DISSEOfficial(OfficialConfig(roberta_dir=str(roberta), text_max_length=64 if quick else 512),
                          audio_config_overrides=over).train()
    audio = {"i_act": torch.randn(1, 3, 201, 1601), "i_rea": torch.randn(1, 3, 201, 1601),
             "omni_48k": torch.randn(1, 480_000) * 0.1}

    def step():
        out = model(audio, ["a dog barks in a small room to the left"])
        sum(v.float().sum() for v in out.values()).backward()
    return _count(step)


def plan(flops: dict[str, float], args: argparse.Namespace) -> list[str]:
    """The printed capacity table."""
    lines = [f"H100 bf16 dense peak {H100_BF16_DENSE / 1e12:.0f} TFLOP/s at {args.utilisation:.0%} utilisation "
             f"(assumed); loader {args.loader_rate:.0f} (paper) and {args.official_loader_rate:.0f} (official) samples "
             f"per CPU-second (benchmarks/data.py); read {args.read_mb:.2f} / {args.official_read_mb:.2f} MB, "
             f"stored {args.stored_mb:.2f} MB per sample; "
             f"{args.rooms} rooms per clip",
             "",
             "| preset | GFLOP/sample (fwd+bwd) | samples/s per GPU | loader cores per GPU | read MB/s per GPU "
             "| per 8-GPU node: cores, MB/s |",
             "| --- | --- | --- | --- | --- | --- |"]
    rates = {}
    loader = {"paper": (args.loader_rate, args.read_mb), "official": (args.official_loader_rate, args.official_read_mb)}
    for name, f in flops.items():
        rate = H100_BF16_DENSE * args.utilisation / f
        rates[name] = rate
        cores = rate / loader[name][0]
        mbs = rate * loader[name][1]
        lines.append(f"| {name} | {f / 1e9:,.0f} | {rate:,.0f} | {cores:.1f} | {mbs:,.0f} | "
                     f"{8 * cores:.0f}, {8 * mbs:,.0f} |")
    lines += ["", "| data set | clips | samples | stored GB (whole set = one node's copy) | GB per GPU "
              "(1/8 of an epoch) | epoch on one 8-GPU node, paper / official |", "| --- | --- | --- | --- | --- | --- |"]
    for name, clips in DATASETS.items():
        n = clips * args.rooms
        gb = n * args.stored_mb / 1e3
        epoch = " / ".join(f"{n / (8 * rates[p]):,.0f} s" for p in flops)
        lines.append(f"| {name} | {clips:,} | {n:,} | {gb:,.0f} | {gb / 8:,.0f} | {epoch} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utilisation", type=float, default=0.30, help="assumed model FLOPs utilisation of an H100")
    ap.add_argument("--loader-rate", type=float, default=435.0,
                    help="samples per CPU-second of the data pipeline (benchmarks/data.py, 2 workers)")
    ap.add_argument("--official-loader-rate", type=float, default=19.0,
                    help="samples per CPU-second of the official preset's CPU front end (benchmarks/data.py)")
    ap.add_argument("--read-mb", type=float, default=1.21, help="MB read per sample (w.wav + iv.npz + json)")
    ap.add_argument("--official-read-mb", type=float, default=1.94, help="MB read per official-preset sample")
    ap.add_argument("--stored-mb", type=float, default=2.2, help="MB stored per sample (every member)")
    ap.add_argument("--rooms", type=int, default=4, help="rooms (renders) per clip")
    ap.add_argument("--text-tokens", type=int, default=40, help="caption tokens of the paper model's RoBERTa")
    ap.add_argument("--quick", action="store_true", help="tiny stand-in models (checks the script, not figures)")
    ap.add_argument("--json", default="", help="also write the figures to this JSON file")
    ap.add_argument("--flops-from", default="", help="take the FLOPs from an earlier --json file (no recount)")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.flops_from:
        flops = json.loads(Path(args.flops_from).read_text())["flops_per_sample"]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            roberta = roberta_stand_in(Path(tmp) / "roberta-base", args.quick)
            print("counting FLOPs on CPU (full-size models unless --quick) ...", file=sys.stderr)
            flops = {"paper": paper_flops(roberta, args.text_tokens, args.quick),
                     "official": official_flops(roberta, args.quick)}
    if args.quick:
        print("--quick: tiny stand-in models; the figures below check the script, they are not a plan")
    for line in plan(flops, args):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"flops_per_sample": flops, **vars(args)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
