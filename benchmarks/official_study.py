"""Side-by-side study: the published architecture (DISSEOfficial, --config official) against this project's (DELSA,
--config demo) on the same demo shards, the same step budget and the same text encoder, two seeds each.

    python benchmarks/official_study.py --out study/                       # CPU sizes: renders a demo set
    python benchmarks/official_study.py --shards demo/ --roberta-dir /data/roberta-base --steps 2000 \
        --full-size --out study/                                            # a GPU, both arms at full size

Both arms are trained by ``disse-train``'s loop (``train()``), then scored on the held-out **test** split (rooms
neither saw) by the metric functions ``disse-eval`` uses (``evaluate_embeddings``), through each preset's own
validation path. Text encoder: both arms read the same RoBERTa folder (``--roberta-dir``; the project arm as
``model.text.kind=clap_roberta``). Without one, a random character-level RoBERTa (hidden 64, 2 layers) is written
and used by both, untrained weights: the contrast is then between the audio sides and objectives only.
CPU sizes shrink both audio sides (the project arm: the demo config; the official arm: ``htsat_overrides``
below, spatial branch at full size since its input shape is fixed); ``--full-size`` keeps the release's sizes.

Writes ``study.md`` (the table, mean ± half-range over seeds, with chance and baselines) and ``study.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from disse.pipeline.demo import DemoConfig, run_demo
from disse.trainer.cli.train import resolve_config_path
from disse.trainer.data.loader import resolve_shards
from disse.trainer.model.hf import write_random_roberta
from disse.trainer.training.checkpoint import load_checkpoint
from disse.trainer.training.config import load_train_config
from disse.trainer.training.loop import build_model, objective_for, resolve_caption_rules, train

CPU_HTSAT = "{patch_embeds_hidden_size: 16, hidden_size: 128, depths: [1, 1, 1, 1], num_attention_heads: [1, 1, 2, 2]}"
ROWS = (  # (label, metric key of evaluate_embeddings, chance / baseline key or None)
    ("SRC t2a R@1", "SRC/t2a/R@1", "SRC/t2a/R@1/chance"),
    ("SRC a2t R@1", "SRC/a2t/R@1", "SRC/a2t/R@1/chance"),
    ("SPA t2a R@1", "SPA/t2a/R@1", "SPA/t2a/R@1/chance"),
    ("SPA a2t R@1", "SPA/a2t/R@1", "SPA/a2t/R@1/chance"),
    ("X-SRC t2a R@1 (space emb. finds the source: leak)", "X-SRC/t2a/R@1", "X-SRC/t2a/R@1/chance"),
    ("X-SPA t2a R@1 (source emb. finds the space: leak)", "X-SPA/t2a/R@1", "X-SPA/t2a/R@1/chance"),
    ("AX-SRC a2a R@1 (audio space emb.: leak)", "AX-SRC/a2a/R@1", "AX-SRC/a2a/R@1/chance"),
    ("AX-SPA a2a R@1 (audio source emb.: leak)", "AX-SPA/a2a/R@1", "AX-SPA/a2a/R@1/chance"),
    ("IR_space (IIDR of the space emb.)", "IR_space", "IR_space/chance"),
    ("IR_source (IIDR of the source emb.)", "IR_source", "IR_source/chance"),
    ("direction error (deg), model", "phys/direction_err_deg/mean", "phys/direction_err_deg/iv_baseline/mean"),
    ("distance MAE (m)", "phys/distance_m/mae", "phys/distance_m/mae/chance"),
    ("area MAE (m²)", "phys/area_m2/mae", "phys/area_m2/mae/chance"),
    ("T30 MAE (ms)", "phys/t30_ms/mae", "phys/t30_ms/mae/chance"),
)


def toy_roberta(path: Path) -> Path:
    """A local Hugging Face folder: character-level BPE vocabulary and a small RoBERTa config (random weights)."""
    return write_random_roberta(path, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


def arm_overrides(arm: str, roberta: Path, full_size: bool, pretrained: bool) -> tuple[str, list[str]]:
    if arm == "official":
        extra = [f"model.official.roberta_dir={roberta}", f"model.official.roberta_init={str(pretrained).lower()}"]
        if not full_size:
            extra += [f"model.official.htsat_overrides={CPU_HTSAT}", "model.official.text_max_length=128"]
        return "official", extra
    return ("paper" if full_size else "demo"), [
        "model.text.kind=clap_roberta", f"model.text.hf_dir={roberta}", f"model.text.pretrained={str(pretrained).lower()}",
        "model.text.freeze_backbone=false", "model.text.cache_frozen=false", "model.text.max_length=128",
        "model.text.pooling=mean"]  # CLAP's RoBERTa is read through its pooler, as the official arm reads it


def run_arm(arm: str, seed: int, shards: Path, out: Path, args, roberta: Path) -> dict:
    config, extra = arm_overrides(arm, roberta, args.full_size, args.roberta_dir is not None)
    run_dir = out / f"{arm}_seed{seed}"
    cfg = load_train_config(resolve_config_path(config), [
        f"data.train={shards / 'train'}", "data.val=", f"train.out_dir={run_dir}", f"train.seed={seed}",
        f"data.seed={seed}", f"train.max_steps={args.steps}", f"data.batch_size={args.batch_size}",
        f"optim.lr={args.lr}", "optim.warmup_steps=2", "log.progress=false", "eval.each_epoch=false",
        "train.save_every_steps=0", f"data.num_workers={args.workers}", "data.val_num_workers=0", *extra,
        *args.overrides])
    train(cfg)
    objective = objective_for(cfg)
    test = resolve_shards(str(shards / "test"), what="--shards")
    rules = resolve_caption_rules(cfg, resolve_shards(cfg.data.train))
    model = objective.build_model(cfg) if arm == "official" else None
    state = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    if model is None:
        model = build_model(cfg)
    model.load_state_dict(state["model"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    return objective.validate(model, test, cfg, device, rules)


def fmt(values: list[float]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    mean = sum(vals) / len(vals)
    return f"{mean:.3f} ± {(max(vals) - min(vals)) / 2:.3f}" if len(vals) > 1 else f"{mean:.3f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default="", help="a demo folder with train/ and test/ (default: render one)")
    ap.add_argument("--roberta-dir", default=None, help="local roberta-base folder for both arms (pretrained)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--full-size", action="store_true", help="the release's / paper sizes (a GPU)")
    ap.add_argument("--out", default="study")
    ap.add_argument("overrides", nargs="*", help="section.field=value overrides for both arms")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory()
    shards = Path(args.shards) if args.shards else None
    if shards is None:
        print("rendering a small demo set ...", file=sys.stderr)
        shards = Path(tmp.name) / "demo"
        run_demo(shards, DemoConfig(types=8, clips_per_type=3, rooms=6, positions_per_room=3, rirs_per_clip=2,
                                    clips_per_rir=2, shard_size=8, seed=0), workers=os.cpu_count() or 1, progress=False)
    roberta = Path(args.roberta_dir) if args.roberta_dir else toy_roberta(Path(tmp.name) / "roberta")
    results: dict[str, list[dict]] = {"project": [], "official": []}
    for arm in ("project", "official"):
        for seed in args.seeds:
            print(f"training {arm} seed {seed} ({args.steps} steps) ...", file=sys.stderr)
            results[arm].append(run_arm(arm, seed, shards, out, args, roberta))
    lines = [f"Same demo shards ({shards}), {args.steps} steps of batch {args.batch_size}, lr {args.lr}, seeds "
             f"{args.seeds}, scored on the held-out test split; text encoder: "
             f"{'pretrained ' + str(args.roberta_dir) if args.roberta_dir else 'random char-level RoBERTa (both)'}; "
             f"{'full sizes' if args.full_size else 'CPU sizes'}.", "",
             "| metric | project (DELSA) | official (DISSEOfficial) | chance / baseline |", "| --- | --- | --- | --- |"]
    for label, key, ref in ROWS:
        p = [r.get(key) for r in results["project"]]
        o = [r.get(key) for r in results["official"]]
        base = fmt([r.get(ref) for r in results["project"] + results["official"]]) if ref else ""
        lines.append(f"| {label} | {fmt(p)} | {fmt(o)} | {base} |")
    zs = sorted({k for r in results["project"] + results["official"] for k in r if k.startswith("zeroshot/")
                 and k.endswith("/balanced_acc")})
    for key in zs:
        lines.append(f"| zero-shot {key.split('/')[1]} (balanced acc.) | {fmt([r.get(key) for r in results['project']])}"
                     f" | {fmt([r.get(key) for r in results['official']])} | "
                     f"{fmt([r.get(key + '/chance') for r in results['project'] + results['official']])} |")
    lines += ["", "Baseline column: chance for retrieval and zero-shot, the intensity-vector estimate for direction "
              "(the official 2-d head gives no direction: docs/official.md), the median guess for distance / area / T30."]
    (out / "study.md").write_text("\n".join(lines) + "\n")
    (out / "study.json").write_text(json.dumps(results, indent=1, default=float))
    print("\n".join(lines))
    tmp.cleanup()


if __name__ == "__main__":
    main()
