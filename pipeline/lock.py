"""One writer per shard range of an output folder: lock files that name their owner.

A render writes ``{out}/.render.lock`` (the whole folder), ``{out}/.render-job-{i}-of-{n}.lock``
(``--job-index i --num-jobs n``) or ``{out}/.render-shards-{a}-{b}.lock`` (``--shard-range``). The
file is JSON: host, pid, process start time (Linux), start date and the global shard range
``[a, b)`` it covers (``null`` = every shard). A second writer whose range overlaps a live lock's
is refused with a :class:`LockHeld` (a ``SchemaError``: one line, status 2) naming the lock file
and its owner; jobs of an array lock disjoint ranges and run side by side.

A lock outlives a killed owner. It is **stale**, and taken over with a note, when its owner ran on
this host and that process is gone (no such pid, or the pid now belongs to a process started at
another time), or when it ran on another host and has not been refreshed for
:data:`STALE_AFTER_S` (the owner refreshes it while it renders, :meth:`RenderLock.refresh`).
Creation is atomic (a hard link of a complete file, or ``O_EXCL`` where links are not supported),
so two writers starting at once never both get the same lock.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

from disse.schemas import SchemaError

LOCK_PREFIX = ".render"
LOCK_SUFFIX = ".lock"
STALE_AFTER_S = 600.0     # a lock of another host not refreshed for this long is stale
REFRESH_EVERY_S = 30.0    # how often an owner refreshes its lock (mtime) at most


class LockHeld(SchemaError):
    """Another live render holds a lock that covers shards this one would write."""


def lock_name(job: tuple[int, int] | None = None, shard_range: tuple[int, int | None] | None = None) -> str:
    if job is not None:
        return f"{LOCK_PREFIX}-job-{job[0]}-of-{job[1]}{LOCK_SUFFIX}"
    if shard_range is not None:
        a, b = shard_range
        return f"{LOCK_PREFIX}-shards-{a}-{'end' if b is None else b}{LOCK_SUFFIX}"
    return LOCK_PREFIX + LOCK_SUFFIX


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22, counted after the command name


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    now = _proc_start(pid)
    return start is None or now is None or now == start  # another start time: the pid was reused


def _overlaps(a: list | None, b: list | None) -> bool:
    if a is None or b is None:
        return True
    return max(a[0], b[0]) < min(a[1], b[1]) or a[0] == b[0]  # equal starts: same range, even if empty


def describe(owner: dict) -> str:
    rng = owner.get("shards")
    what = "every shard" if rng is None else f"shards {rng[0]}..{rng[1] - 1}"
    job = f", job {owner['job'][0]} of {owner['job'][1]}" if owner.get("job") else ""
    return f"host {owner.get('host')}, pid {owner.get('pid')}, since {owner.get('started')}{job}, {what}"


class RenderLock:
    """``with RenderLock(out, shards=(a, b), job=(i, n)) as lock: ...``; ``lock.note`` says whether a
    stale lock was taken over. ``shards=None`` covers every shard."""

    def __init__(self, out_dir: str | Path, *, shards: tuple[int, int] | None = None,
                 job: tuple[int, int] | None = None, shard_range: tuple[int, int | None] | None = None) -> None:
        self.out = Path(out_dir)
        self.path = self.out / lock_name(job, shard_range)
        pid = os.getpid()
        self.owner = {"host": socket.gethostname(), "pid": pid, "proc_start": _proc_start(pid),
                      "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "shards": None if shards is None else [int(shards[0]), int(shards[1])],
                      "job": None if job is None else list(job)}
        self.note: str | None = None
        self._held = False
        self._refreshed = 0.0

    # -- reading and judging other locks
    @staticmethod
    def read(path: Path) -> dict | None:
        try:
            owner = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def stale(self, owner: dict, path: Path) -> str | None:
        """Why ``owner``'s lock is stale, or None while its owner may still be running."""
        if owner.get("host") == self.owner["host"]:
            try:
                pid = int(owner.get("pid"))
            except (TypeError, ValueError):
                return "it names no pid"
            return None if _pid_alive(pid, owner.get("proc_start")) else f"pid {pid} is no longer running"
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return None
        return f"not refreshed for {age / 60:.0f} min" if age > STALE_AFTER_S else None

    def _refuse(self, path: Path, owner: dict) -> LockHeld:
        where = "this host" if owner.get("host") == self.owner["host"] else "another host"
        return LockHeld(f"another render writes to {self.out} ({describe(owner)}; on {where}); wait for it to "
                        f"finish, give each concurrent job its own --job-index, or delete {path} if that run "
                        "is gone", file=str(path))

    # -- acquiring and releasing
    def _tag(self) -> str:
        return re.sub(r"[^A-Za-z0-9_-]", "_", self.owner["host"]) + f"-{self.owner['pid']}"

    def _create(self) -> bool:
        data = json.dumps(self.owner, sort_keys=True) + "\n"
        tmp = self.path.with_name(f"{self.path.name}.{self._tag()}.tmp")
        tmp.write_text(data)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here: exclusive create (the file is then written after)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(data)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over(self, owner: dict) -> bool:
        """Move a stale lock aside atomically; False if it changed meanwhile (someone else took it)."""
        aside = self.path.with_name(f"{self.path.name}.{self._tag()}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True  # gone already: try to create ours
        moved = self.read(aside)
        if moved != owner:  # a new owner replaced it between our read and the rename: put it back
            try:
                os.link(aside, self.path)
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def acquire(self) -> "RenderLock":
        self.out.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._create():
                self._held = True
                break
            owner = self.read(self.path)
            if owner is None:  # vanished, or written right now without links: look again
                time.sleep(0.05)
                owner = self.read(self.path)
                if owner is None:
                    continue
            why = self.stale(owner, self.path)
            if why is None:
                raise self._refuse(self.path, owner)
            if self._take_over(owner):
                self.note = f"took over the stale lock {self.path} ({describe(owner)}): {why}"
        if not self._held:
            owner = self.read(self.path) or {}
            raise self._refuse(self.path, owner)
        # another live lock whose shards overlap ours (a whole-folder run and a job, two job splits)
        for other in sorted(self.out.glob(f"{LOCK_PREFIX}*{LOCK_SUFFIX}")):
            if other == self.path:
                continue
            owner = self.read(other)
            if owner and _overlaps(owner.get("shards"), self.owner["shards"]) and self.stale(owner, other) is None:
                self.release()
                raise self._refuse(other, owner)
        self._refreshed = time.monotonic()
        return self

    def refresh(self, force: bool = False) -> None:
        """Mark the lock as alive (its mtime), at most every :data:`REFRESH_EVERY_S`."""
        if self._held and (force or time.monotonic() - self._refreshed >= REFRESH_EVERY_S):
            try:
                os.utime(self.path)
            except OSError:
                pass
            self._refreshed = time.monotonic()

    def release(self) -> None:
        if self._held and self.read(self.path) == self.owner:
            self.path.unlink(missing_ok=True)
        self._held = False

    def __enter__(self) -> "RenderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
