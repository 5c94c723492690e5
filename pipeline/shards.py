"""Reproducible, atomic tar shards in the WebDataset layout.

Every member gets a fixed mtime, owner and mode, and samples are written in the given order with
their members sorted by extension, so the same samples give byte-identical tars. A shard is
written to a hidden temporary name in the same directory and renamed into place only when
complete, so a killed run never leaves a half-written ``.tar`` behind.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Iterable

from disse.schemas.atomic import atomic_write, stale_tmp_files  # noqa: F401  (stale_tmp_files: render imports it here)
from disse.schemas.shard import group_tar_members

# 2024-01-01T00:00:00Z: any constant works; a plausible date keeps tar tools from warning.
FIXED_MTIME = 1704067200


def shard_name(split: str, index: int) -> str:
    """``{split}-{index:06d}.tar`` (the brace pattern ``{split}-{000000..N}.tar`` lists a split)."""
    return f"{split}-{index:06d}.tar"


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = FIXED_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_tar_atomic(path: str | Path, samples: Iterable[dict]) -> int:
    """Write ``samples`` (dicts with ``__key__`` and ``ext -> bytes``) to ``path``; returns the count.

    Members are named ``{key}.{ext}``; within a sample the extensions are sorted.
    """
    n = 0
    with atomic_write(path) as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for sample in samples:
                key = sample["__key__"]
                for ext in sorted(k for k in sample if not k.startswith("__")):
                    data = sample[ext]
                    tar.addfile(_tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))
                n += 1
    return n


def write_json_atomic(path: str | Path, obj: object) -> None:
    """JSON with sorted keys and a trailing newline, written atomically."""
    with atomic_write(path, "w") as f:
        f.write(json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def read_tar_samples(path: str | Path) -> list[dict]:
    """Group a shard's members into sample dicts (``__key__`` + ``ext -> bytes``), with plain tarfile."""
    with tarfile.open(path) as tar:
        return [{"__key__": key, **{ext: tar.extractfile(info).read() for ext, info in group.items()}}
                for key, group in group_tar_members(tar)]
