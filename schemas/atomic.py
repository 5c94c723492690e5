"""The one atomic write: a file appears under its name complete, or not at all.

Shards, manifests, checkpoints, embeddings files and metrics are all written through :func:`atomic_write`:
to a hidden temporary name in the same folder (so the rename is atomic), tagged with host and pid (jobs of
an array may share a network file system), flushed to disk, then renamed over the target. A killed writer
leaves only a temporary file, which :func:`stale_tmp_files` finds.
"""
from __future__ import annotations

import os
import re
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"


def tmp_path_for(path: Path) -> Path:
    """The temporary name ``path`` is written under: hidden, same folder, tagged with host and pid."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())
    return path.with_name(f"{TMP_PREFIX}{path.name}.{host}-{os.getpid()}{TMP_SUFFIX}")


def stale_tmp_files(path: Path) -> list[Path]:
    """Temporary files left by killed writers of ``path`` (any host, any pid)."""
    return sorted(path.parent.glob(f"{TMP_PREFIX}{path.name}.*{TMP_SUFFIX}"))


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", *, newline: str | None = None) -> Iterator[IO]:
    """``with atomic_write(path, "w") as f: ...``: ``f`` is the temporary file; on a clean exit it is
    fsynced and renamed over ``path`` (parent folders made), on any error removed and ``path`` left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        with open(tmp, mode, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
