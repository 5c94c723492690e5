"""The one device resolver of disse-train, disse-eval and disse-embed."""
from __future__ import annotations

import torch

from disse.schemas.errors import SchemaError


def resolve_device(name: str = "auto", local_rank: int = 0, *, field: str = "--device") -> torch.device:
    """``auto`` -> this rank's GPU when one is visible, else the CPU; ``cpu``, ``cuda`` (this rank's GPU) or
    ``cuda:i``. A GPU asked for where none is visible, or a name torch does not know, is a SchemaError
    naming ``field``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SchemaError(f"{name} asked for, but no GPU is visible on this machine (use cpu or auto)", field=field)
    if name == "cuda":
        return torch.device("cuda", local_rank)
    try:
        return torch.device(name)
    except RuntimeError:
        raise SchemaError(f"not a device: {name!r} (auto, cpu, cuda or cuda:N)", field=field) from None
