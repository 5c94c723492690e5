"""DELSA model benchmark: parameter counts per branch and forward/backward time per sample.

    .venv/bin/python benchmarks/model.py                 # demo (batch 32) and paper (batch 2) on CPU, 2 threads
    .venv/bin/python benchmarks/model.py --threads 2 --demo-batch 32 --paper-batch 2 --steps 3

One "step" = encode_audio + text (as the trainer does: source and spatial texts, or the caption) +
DELSALoss + backward + AdamW step, on random inputs of the Batch contract's shapes (10 s at 48 kHz,
intensity features 1001 frames x 64 mel). The demo's frozen text backbone is cached, so its first step
("cold") costs more than the next ones ("warm"). The paper config uses CLAP's RoBERTa text branch;
without a local roberta-base folder it is built here with roberta-base's sizes and random weights
(timing and counts are the same). On a GPU the same runs under bf16 autocast.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
import yaml

from disse.configs import config_path
from disse.schemas.config import _build
from disse.trainer.training.losses import DELSALoss, LossConfig
from disse.trainer.model.delsa import DELSA, ModelConfig
from disse.trainer.model.hf import write_random_roberta


def load_sections(name: str) -> tuple[ModelConfig, LossConfig]:
    with open(config_path(name)) as f:
        data = yaml.safe_load(f)
    return (_build(ModelConfig, data["model"], "model", name), _build(LossConfig, data.get("loss", {}), "loss", name))


def roberta_base_stand_in(folder: Path) -> Path:
    """roberta-base's config (random weights) and a character vocabulary: the sizes without the download."""
    return write_random_roberta(folder, vocab_size=50265)


def random_batch(b: int, device: torch.device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    texts = [f"sound number {i} with some words about what it is" for i in range(b)]
    spaces = [f"heard from the left {i} in a large reverberant hall far away" for i in range(b)]
    d = torch.nn.functional.normalize(torch.randn(b, 3, generator=g), dim=-1)
    return {
        "waveform": (0.1 * torch.randn(b, 480000, generator=g)).to(device),
        "iv": (0.3 * torch.randn(b, 6, 1001, 64, generator=g)).to(device),
        "source_text": texts, "space_text": spaces, "caption": [f"{s} {p}" for s, p in zip(texts, spaces)],
        "source_id": (torch.arange(b) % max(1, b // 2)).to(device), "space_id": (torch.arange(b) % 3).to(device),
        "targets": {"direction": d.to(device), "area_m2": (torch.rand(b, generator=g) * 100 + 10).to(device),
                    "distance_m": (torch.rand(b, generator=g) * 3 + 0.5).to(device),
                    "t30_ms": (torch.rand(b, generator=g) * 1000 + 100).to(device)},
    }


def print_counts(model: DELSA) -> None:
    for name, (total, trainable) in model.param_counts().items():
        print(f"    {name:<16} {total / 1e6:9.3f} M total {trainable / 1e6:9.3f} M trainable")


def time_steps(model: DELSA, loss_fn: DELSALoss, batch: dict, steps: int, device: torch.device,
               bf16: bool, fixed_tokens: dict | None) -> list[tuple[float, float]]:
    """(wall s / sample, process CPU s / sample) of each training step."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    b = batch["waveform"].shape[0]
    out = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        w, c = time.perf_counter(), time.process_time()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            audio = model.encode_audio(batch["waveform"], batch["iv"])
            if fixed_tokens is None:
                text = model.encode_batch_text(batch, device)
            else:  # paper stand-in: realistic token counts without a real BPE vocabulary
                t = model.encode_text(fixed_tokens)
                text = {"source": t["source"][:b], "space": t["space"][b:]} if model.cfg.text_input == "separate" else t
            if loss_fn.cfg.reads_own_captions:  # the trainer's extra pass over the clips' own captions
                with torch.no_grad():
                    own = fixed_tokens if fixed_tokens is not None else \
                        {k: v.to(device) for k, v in model.tokenize(list(batch["source_text"])).items()}
                    text["source_of_source_text"] = model.encode_text(own)["source"][:b]
        total, _ = loss_fn(audio, text, batch, model.logit_scale_source, model.logit_scale_space)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(((time.perf_counter() - w) / b, (time.process_time() - c) / b))
    return out


def bench(name: str, cfg: ModelConfig, loss_cfg: LossConfig, batch_size: int, steps: int,
          device: torch.device, bf16: bool, tmp: Path) -> None:
    fixed_tokens = None
    if cfg.text.kind == "clap_roberta" and not cfg.text.hf_dir:
        cfg = dataclasses.replace(cfg, text=dataclasses.replace(
            cfg.text, hf_dir=str(roberta_base_stand_in(tmp / "roberta")), pretrained=False, checkpoint=None))
        rows = batch_size if cfg.text_input == "full" else 2 * batch_size
        g = torch.Generator().manual_seed(1)
        fixed_tokens = {"input_ids": torch.randint(5, 50265, (rows, 32), generator=g).to(device),
                        "attention_mask": torch.ones(rows, 32, dtype=torch.long).to(device)}
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = DELSA(cfg).to(device)
    print(f"\n== {name} on {device.type}{' (bf16 autocast)' if bf16 else ''}: batch {batch_size}, "
          f"built in {time.perf_counter() - t0:.1f} s; HTSAT pooled dim {model.audio.source.out_dim}")
    print_counts(model)
    batch = random_batch(batch_size, device)
    times = time_steps(model, DELSALoss(loss_cfg).to(device), batch, steps, device, bf16, fixed_tokens)
    for i, (wall, cpu) in enumerate(times):
        tag = "cold" if i == 0 else "warm"
        print(f"    step {i} ({tag}): {wall * 1e3:8.1f} ms/sample wall ({1 / wall:6.1f} samples/s), "
              f"{cpu * 1e3:8.1f} ms/sample process CPU")
    if device.type == "cuda":
        print(f"    peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        torch.cuda.reset_peak_memory_stats()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the demo target: 2 cores)")
    ap.add_argument("--demo-batch", type=int, default=32)
    ap.add_argument("--paper-batch", type=int, default=2)
    ap.add_argument("--gpu-batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--only", choices=["demo", "paper"], default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} CPU threads, cuda available: {torch.cuda.is_available()}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, bs in (("demo", args.demo_batch), ("paper", args.paper_batch)):
            if args.only and name != args.only:
                continue
            cfg, loss_cfg = load_sections(f"{name}.yaml")
            bench(name, cfg, loss_cfg, bs, args.steps, torch.device("cpu"), False, Path(tmp))
            if torch.cuda.is_available():
                bench(name, cfg, loss_cfg, args.gpu_batch, args.steps, torch.device("cuda"), True, Path(tmp))


if __name__ == "__main__":
    main()
