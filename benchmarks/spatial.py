"""Spatial learning curve: held-out direction error against the number of training rooms.

    .venv/bin/python benchmarks/spatial.py --shards demo                    # the README demo's shards
    .venv/bin/python benchmarks/spatial.py --shards demo --rooms 2,8,30 --steps 300 --threads 2

For each N in ``--rooms`` it trains, on the training samples of the first N training rooms only,
(a) the intensity-attention direction (trainer/model/spatial.py, what DELSA uses) and (b) the plain
reference: the original spatial branch (two intensity CNNs, MLP) with an MLP direction head
(``direction: head``), both with the cosine direction loss, same steps and batch; then scores both
on the *test rooms* (never trained on) beside the parameter-free intensity-vector estimate
(``|I_act| >= 0.95`` cells summed) on the same items. Figures are angular errors in degrees.
The point of the curve: a model that learns the physics is good with few rooms and stays good;
one that memorises positions needs many rooms and still trails the physics.
"""
from __future__ import annotations

import argparse
import time
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from disse.trainer.data.loader import eval_loader
from disse.trainer.model.physics import angular_error_deg, intensity_direction
from disse.trainer.model.spatial import IntensityAttentionDirection, SpatialBranch, SpatialConfig, mlp

DEMO_CNN = SpatialConfig(channels=[8, 16, 16, 32, 32, 32], pools=[[2, 2]] * 4 + [[1, 1]] * 2, input_pool=[4, 1],
                         mlp_hidden=128, direction="head", room_stats=False)


def load_split(folder: str) -> dict:
    """iv ``(N, 6, F, M)`` float16, direction ``(N, 3)``, room of each item (from ``rir_id``)."""
    ivs, dirs, rooms = [], [], []
    for b in eval_loader(folder, 32, with_audio=False):
        ivs.append(b["iv"])
        dirs.append(b["targets"]["direction"])
        rooms += [k.split("__", 1)[1].rsplit("_p", 1)[0] for k in b["key"]]
    return {"iv": torch.cat(ivs), "direction": torch.cat(dirs), "room": np.array(rooms)}


class CNNDirection(nn.Module):
    """The plain reference: spatial CNN branch + MLP head -> unit vector."""

    def __init__(self) -> None:
        super().__init__()
        self.branch = SpatialBranch(DEMO_CNN)
        self.head = mlp([DEMO_CNN.out_dim, 128, 3])

    def forward(self, iv: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.branch(iv)["features"]), dim=-1, eps=1e-6)


class AttentionDirection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = IntensityAttentionDirection()

    def forward(self, iv: torch.Tensor) -> torch.Tensor:
        return self.net(iv)[0]


def train(model: nn.Module, iv: torch.Tensor, target: torch.Tensor, steps: int, batch: int, lr: float,
          seed: int) -> float:
    """Cosine-loss training; returns seconds per step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.05)
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(iv), (batch,), generator=g)
        loss = (1 - F.cosine_similarity(model(iv[idx]), target[idx], dim=-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / max(steps, 1)


@torch.no_grad()
def errors(model: nn.Module, iv: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    model.eval()
    pred = torch.cat([model(iv[i:i + 32]) for i in range(0, len(iv), 32)])
    return angular_error_deg(pred, target).numpy()


def summary(err: np.ndarray) -> str:
    return f"{np.median(err):6.1f} {err.mean():6.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default="demo", help="a demo folder with train/ and test/ shards")
    ap.add_argument("--rooms", default="2,4,8,16,all", help="training-room counts (comma list; 'all')")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    train_set, test_set = load_split(f"{args.shards}/train"), load_split(f"{args.shards}/test")
    print(f"loaded {len(train_set['iv'])} train / {len(test_set['iv'])} test samples in "
          f"{time.perf_counter() - t0:.0f} s")
    train_rooms = list(OrderedDict.fromkeys(sorted(set(train_set["room"]))))
    shared = set(train_rooms) & set(test_set["room"])
    if shared:
        raise SystemExit(f"test rooms also in training: {sorted(shared)[:5]}: not a held-out test")
    print(f"{len(train_rooms)} training rooms, {len(set(test_set['room']))} held-out test rooms")
    base = angular_error_deg(intensity_direction(test_set["iv"], 0.95), test_set["direction"]).numpy()
    counts = [len(train_rooms) if c == "all" else min(int(c), len(train_rooms)) for c in args.rooms.split(",")]

    print(f"\nheld-out direction error (deg), median and mean over {len(base)} test items; "
          f"random directions: 90.0 mean")
    print(f"{'rooms':>5} {'items':>5} | {'IV estimate':>13} | {'attention':>13} | {'CNN head (ref)':>14} | "
          f"{'s/step att / ref':>16}")
    for n in counts:
        keep = np.isin(train_set["room"], train_rooms[:n])
        iv, tgt = train_set["iv"][keep], train_set["direction"][keep]
        row = []
        for make in (AttentionDirection, CNNDirection):
            torch.manual_seed(args.seed)
            model = make()
            sec = train(model, iv, tgt, args.steps, args.batch, args.lr, args.seed)
            row.append((errors(model, test_set["iv"], test_set["direction"]), sec))
        print(f"{n:5d} {int(keep.sum()):5d} | {summary(base)} | {summary(row[0][0])} | {summary(row[1][0]):>14} | "
              f"{row[0][1]:7.3f} / {row[1][1]:.3f}", flush=True)


if __name__ == "__main__":
    main()
