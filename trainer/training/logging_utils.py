"""Run logging: a local JSONL log always, Weights & Biases only when asked (offline by default).

Only rank 0 builds a :class:`RunLogger`; other ranks log nothing.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from disse.schemas import SchemaError

log = logging.getLogger("disse.train")


def _clean(value: Any) -> Any:
    """JSON-safe scalars: NaN / inf -> None, numpy / torch scalars -> Python numbers."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLogger:
    """Appends one JSON object per line to ``out_dir/log.jsonl``; mirrors to wandb when enabled."""

    def __init__(self, out_dir: str | Path, *, config: dict, use_wandb: bool = False, project: str = "disse",
                 mode: str = "offline", run_name: str = "") -> None:
        self.path = Path(out_dir) / "log.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        self._wandb = None
        if use_wandb:
            try:
                import wandb  # local: optional dependency (the wandb extra), only with log.wandb=true
            except ImportError:
                raise SchemaError("wandb is not installed: pip install wandb (or set log.wandb=false)",
                                  field="log.wandb") from None
            os.environ.setdefault("WANDB_MODE", mode)  # an explicit WANDB_MODE wins
            self._wandb = wandb.init(project=project, name=run_name or Path(out_dir).name, config=config,
                                     dir=str(Path(out_dir)), resume="allow")

    def write(self, record: dict[str, Any]) -> None:
        record = {k: _clean(v) for k, v in record.items()}
        record.setdefault("time", time.time())
        self._file.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            step = record.get("step")
            self._wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"},
                            step=step)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_log(path: str | Path) -> list[dict]:
    """All records of a ``log.jsonl``."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
