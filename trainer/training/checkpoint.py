"""Checkpoints (docs/internals.md): atomic writes, ``latest.pt`` / periodic / best, safe loading.

A checkpoint is ``torch.save`` of plain containers and tensors only:
``{"model", "optimizer", "scheduler", "scaler", "step", "epoch", "rng", "config", "data", ...}``,
so it always loads with ``weights_only=True`` (nothing is unpickled but tensors and builtins).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from disse.schemas import SchemaError
from disse.schemas.atomic import atomic_write
from disse.trainer.model.delsa import DELSA
from disse.trainer.model.factory import load_delsa
from disse.trainer.model.weights import read_checkpoint
from disse.trainer.training.config import TrainConfig, config_from_dict

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.pt"
BEST = "best.pt"


def save_atomic(state: dict, path: str | Path) -> Path:
    """``torch.save`` through :func:`disse.schemas.atomic.atomic_write`: a crash mid-write leaves the previous
    file intact, so readers see the old or the new one, never half."""
    with atomic_write(path) as f:
        torch.save(state, f)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict:
    """A ``disse-train`` checkpoint as it was saved (``{"model", "optimizer", ...}``), read by the one reader
    (:func:`disse.trainer.model.weights.read_checkpoint`): another kind of file is one SchemaError."""
    return read_checkpoint(path, expect=("project",), what="--resume").training_state()


def resolve_resume(arg: str | None, out_dir: str | Path) -> Path | None:
    """``--resume latest`` -> ``out_dir/checkpoints/latest.pt``; a path -> that path; None -> None."""
    if not arg:
        return None
    path = Path(out_dir) / CHECKPOINT_DIR / LATEST if arg == "latest" else Path(arg)
    if not path.is_file():
        raise SchemaError("no checkpoint to resume from", file=str(path), field="--resume")
    return path


# --------------------------------------------------------------------------- RNG state

def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states as tensors / builtins."""
    np_state = np.random.get_state()
    state = {
        "python": _to_builtin(random.getstate()),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _to_builtin(x: Any) -> Any:
    return [_to_builtin(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list) else x


# --------------------------------------------------------------------------- models for evaluation

def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[DELSA, TrainConfig]:
    """Rebuild the DELSA model of a training checkpoint -> ``(model in eval mode on device, TrainConfig)``."""
    ckpt = read_checkpoint(path, expect=("project",))
    return load_delsa(ckpt, device), config_from_dict(ckpt.config, source=str(path))
