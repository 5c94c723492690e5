"""Short, unique labels for ids shown to a person (plot legends, tables).

Ids stay what they are in shards, metrics and embeddings files; only what is *displayed* is
shortened. A clips CSV with absolute paths makes source ids such as
``/usr/share/sounds/freedesktop/stereo/bell.oga``: cut to a fixed width, every such id shows the
same directory prefix. :func:`display_labels` keeps the part that tells them apart instead.
Pure (no I/O), so synthesis and the trainer can both use it.
"""
from __future__ import annotations

import hashlib
import re
from typing import Iterable

_SEP = re.compile(r"[/\\]")
_EXT = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,4}$")
ELLIPSIS = "…"


def _strip_common_dirs(ids: list[str]) -> list[str]:
    """Drop the directory components every id shares (never an id's last component)."""
    parts = [_SEP.split(i) for i in ids]
    limit = min(len(p) for p in parts) - 1
    k = 0
    while k < limit and all(p[k] == parts[0][k] for p in parts):
        k += 1
    # cut at the character after the k-th separator, so the ids' own separators are kept
    return [i[sum(len(c) + 1 for c in p[:k]):] for i, p in zip(ids, parts)]


def _strip_common_extension(ids: list[str]) -> list[str]:
    """Drop a file extension (``.wav``, ``.oga``, ...) that every id ends with."""
    m = _EXT.search(_SEP.split(ids[0])[-1])
    if m is None:
        return ids
    ext = m.group(0)
    if all(i.endswith(ext) and len(_SEP.split(i)[-1]) > len(ext) for i in ids):
        return [i[:-len(ext)] for i in ids]
    return ids


def _shorten(label: str, max_len: int) -> str:
    """Middle ellipsis: the start (e.g. the sub-folder) and the end (the file name) stay readable."""
    if len(label) <= max_len:
        return label
    tail = (max_len - 1) // 2 + (max_len - 1) % 2
    head = max_len - 1 - tail
    return label[:head] + ELLIPSIS + label[len(label) - tail:]


def _tag(ident: str, n: int) -> str:
    return hashlib.sha1(ident.encode("utf-8")).hexdigest()[:n]


def display_labels(ids: Iterable[object], max_len: int = 28) -> list[str]:
    """Labels for ``ids`` (same order and length; equal ids get equal labels, distinct ids distinct ones).

    The directory prefix common to all distinct ids and a file extension common to all of them are
    dropped; a label still longer than ``max_len`` characters keeps its start and end around ``…``.
    Ids whose labels would still coincide get ``~`` and a few hex digits of a hash of the full id.
    Deterministic: a label depends only on the set of distinct ids, not on their order or count.
    """
    ids = ["" if i is None else str(i) for i in ids]
    uniq = sorted(set(ids))
    if not uniq:
        return []
    short = _strip_common_extension(_strip_common_dirs(uniq)) if len(uniq) > 1 else [
        _strip_common_extension([_SEP.split(uniq[0])[-1] or uniq[0]])[0]]
    max_len = max(int(max_len), 8)
    labels = {u: _shorten(s, max_len) or "(empty)" for u, s in zip(uniq, short)}
    n = 4
    while True:
        groups: dict[str, list[str]] = {}
        for u in uniq:
            groups.setdefault(labels[u], []).append(u)
        clashes = [g for g in groups.values() if len(g) > 1]
        if not clashes:
            break
        stem = dict(zip(uniq, short))
        for group in clashes:
            for u in group:
                suffix = "~" + _tag(u, n)
                labels[u] = _shorten(stem[u], max_len - len(suffix)) + suffix
        n += 2
        if n > 40:  # sha1 prefixes of distinct ids differ well before this
            break
    return [labels[i] for i in ids]
