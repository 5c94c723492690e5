"""GPU check: the paper configuration in bf16 on one GPU, both presets, in at most ~8 minutes.

    python benchmarks/gpu_check.py                      # writes gpu_check.json
    python benchmarks/gpu_check.py --seconds 60 --out /tmp/gpu.json --paper-batch 64 --official-batch 32

Without a CUDA GPU it says so and exits 0 (nothing to measure).

* ``paper``: configs/paper.yaml's DELSA (HTSAT-tiny, the intensity CNN, RoBERTa-base text: random weights,
  a roberta-base-shaped stand-in folder with a character vocabulary, so captions are longer in tokens
  than with the real BPE vocabulary), trained with disse-train's own step (``train_step``: AdamW, bf16
  autocast, grad clipping) on a small rendered demo set streamed by the real loader (``train_loader``,
  ``--workers`` workers, pinned memory): samples/s, peak GPU memory and the share of the step spent waiting
  for the next batch.
* ``official``: the release's DISSEOfficial (fused HTSAT, 16 kHz CoordConv branch, RoBERTa-base padded to
  512 tokens), forward + backward + AdamW in bf16 autocast on batches held in memory (the CLAP feature
  extractor of W runs on the CPU inside the forward, as in the release; its time is part of the step): a
  contrastive loss on both pairs plus the physical heads. Data wait: not measured (no official-preset
  training loader yet).

Each preset runs ``--seconds`` of timed steps after ``--warmup`` steps; the JSON holds every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from capacity import roberta_stand_in  # benchmarks/ is the script's folder, hence on sys.path


def _sync() -> None:
    torch.cuda.synchronize()


def check_paper(tmp: Path, roberta: Path, args: argparse.Namespace) -> dict:
    """The paper config trained by disse-train's step on the real loader."""
    from disse.configs import config_path
    from disse.pipeline.demo import DemoConfig, run_demo
    from disse.trainer.data.loader import resolve_shards, strip_private, train_loader
    from disse.trainer.training.config import load_train_config
    from disse.trainer.training.distributed import DistInfo
    from disse.trainer.training.loop import (DualEncoder, StepContext, build_loss, build_model, make_optimizer,
                                             objective_for, train_step)

    print("rendering a small demo set for the loader ...", file=sys.stderr)
    run_demo(tmp / "demo", DemoConfig(types=8, clips_per_type=3, rooms=4, positions_per_room=3, rirs_per_clip=4,
                                      clips_per_rir=4, shard_size=16, seed=0), workers=os.cpu_count() or 1,
             progress=False)
    cfg = load_train_config(config_path("paper.yaml"), [
        f"data.train={tmp / 'demo' / 'train'}", f"model.text.hf_dir={roberta}", "model.text.pretrained=false",
        f"data.batch_size={args.paper_batch}", f"data.num_workers={args.workers}", "data.shuffle_buffer=64"])
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    loss_fn = build_loss(cfg)
    if isinstance(loss_fn, torch.nn.Module):
        loss_fn.to(device)
    opt = make_optimizer(model, cfg)
    raw = DualEncoder(model)
    params = [p for p in model.parameters() if p.requires_grad]
    ctx = StepContext(raw, raw, model, loss_fn, opt, torch.amp.GradScaler("cuda", enabled=False),
                      DistInfo(device=device), "bf16", cfg.optim.grad_clip, params, objective_for(cfg))
    batches = iter(train_loader(resolve_shards(cfg.data.train), cfg.data, pin_memory=True))
    for _ in range(args.warmup):
        train_step(ctx, [strip_private(next(batches))])
    _sync()
    torch.cuda.reset_peak_memory_stats()
    wait = total = 0.0
    steps = 0
    t_end = time.perf_counter() + args.seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        batch = strip_private(next(batches))
        t1 = time.perf_counter()
        train_step(ctx, [batch])
        _sync()
        wait, total, steps = wait + t1 - t0, total + time.perf_counter() - t0, steps + 1
    return {"batch": args.paper_batch, "steps": steps, "samples_per_s": steps * args.paper_batch / total,
            "data_wait_share": wait / total, "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
            "workers": args.workers, "trainable_params_m": sum(p.numel() for p in params) / 1e6}


def _official_loss(out: dict, target: dict) -> torch.Tensor:
    """Symmetric InfoNCE on the space and source pairs (one temperature) + MSE of the physical heads."""
    scale = out["logit_scale"]
    labels = torch.arange(out["audio_space_emb"].shape[0], device=scale.device)
    loss = 0.0
    for a, t in (("audio_space_emb", "text_space_emb"), ("audio_source_emb", "text_source_emb")):
        logits = scale * F.normalize(out[a].float(), dim=-1) @ F.normalize(out[t].float(), dim=-1).T
        loss = loss + (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    for name, value in target.items():
        loss = loss + F.mse_loss(out[name].float(), value)
    return loss


def check_official(roberta: Path, args: argparse.Namespace) -> dict:
    """DISSEOfficial forward + backward + AdamW in bf16 on batches held in memory."""
    from disse.trainer.model.official import DISSEOfficial, OfficialConfig

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = DISSEOfficial(OfficialConfig(roberta_dir=str(roberta))).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    b = args.official_batch
    audio = {"i_act": torch.randn(b, 3, 201, 1601, device=device), "i_rea": torch.randn(b, 3, 201, 1601, device=device),
             "omni_48k": torch.randn(b, 480_000) * 0.1}
    texts = [f"a sound number {i} comes from the left in a small, dampened room" for i in range(b)]
    target = {"direction": torch.randn(b, 2, device=device), "area": torch.randn(b, 1, device=device),
              "distance": torch.randn(b, 1, device=device), "reverb": torch.randn(b, 1, device=device)}

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(audio, texts)
        _official_loss(out, target).backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    _sync()
    torch.cuda.reset_peak_memory_stats()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        step()
        _sync()
        steps += 1
    total = time.perf_counter() - t0
    return {"batch": b, "steps": steps, "samples_per_s": steps * b / total, "data_wait_share": None,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
            "trainable_params_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_check.json", help="JSON file for the figures")
    ap.add_argument("--seconds", type=float, default=90.0, help="timed seconds per preset")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--paper-batch", type=int, default=64, help="configs/paper.yaml's data.batch_size")
    ap.add_argument("--official-batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=min(12, max(1, (os.cpu_count() or 2) - 2)))
    ap.add_argument("--presets", default="paper,official")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing to check (run this script where one is lent)")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = True
    result: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "precision": "bf16",
                    "cpu_cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        roberta = roberta_stand_in(Path(tmp) / "roberta-base")
        for name in args.presets.split(","):
            fn = {"paper": lambda: check_paper(Path(tmp), roberta, args), "official": lambda: check_official(roberta, args)}[name]
            try:
                result[name] = fn()
            except torch.cuda.OutOfMemoryError as exc:
                result[name] = {"error": f"out of GPU memory: {exc}".splitlines()[0]}
            torch.cuda.empty_cache()
            print(name, json.dumps(result[name]))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
