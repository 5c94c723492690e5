"""Train / validation / test assignment and clip x RIR pairing, both deterministic.

Splits are disjoint by *group*: dry clips are grouped by recording (their ``source_id``: caption
rows of one audio file stay together) and RIRs by room (every position of a room in one split),
and each group goes to one split by a hash of the group id and the *split seed* alone. The split
seed is not the render seed: re-rendering with another ``--seed`` (new phrasings, new gains) never
moves an item between splits, and an item's split does not depend on the number of workers, the
order of the CSV or the other items (adding clips to a corpus does not move existing ones). An
explicit ``split`` column overrides the hash for a whole group; a group whose rows name two
splits is an error.

Within a split, clips and RIRs are paired in *blocks*: each block takes the next L clips and the
next K RIRs of two seeded streams and pairs all of them (L x K samples). So every clip is
heard in at least K spaces, every RIR holds at least L sources, and a renderer that walks the
samples in order loads each clip once per block and transforms each RIR once per block. Each
stream is reshuffled every time it wraps around (deterministically), so the RIRs that share a
clip change from cycle to cycle.
"""
from __future__ import annotations

import hashlib
import math
import re

import numpy as np

from disse.schemas import SchemaError

SPLITS = ("train", "val", "test")
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]")


def stable_uint(text: str, bits: int = 64) -> int:
    """A non-negative integer hash of ``text`` that is the same on every machine and run."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=bits // 8).digest(), "little")


def unit_hash(seed: int, item_id: str) -> float:
    """Uniform in [0, 1), fixed by (seed, id)."""
    return stable_uint(f"split:{seed}:{item_id}") / 2.0 ** 64


def assign_splits(ids: list[str], val_fraction: float, test_fraction: float, seed: int,
                  fixed: dict[str, str] | None = None) -> dict[str, str]:
    """Map each id to 'train' / 'val' / 'test' by a seeded hash of the id.

    ``fixed`` (id -> split) overrides the hash for the ids it names. When a split with a positive
    fraction would come out empty (tiny inputs), the hashed item nearest to that split's band
    moves there, so small corpora still get all three splits when they have >= 3 items.
    """
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise SchemaError(f"need 0 <= val, test fractions and val + test < 1, got "
                          f"{val_fraction}, {test_fraction}", field="split fractions")
    fixed = fixed or {}
    for i, s in fixed.items():
        if s not in SPLITS:
            raise SchemaError(f"split of {i!r} must be one of {SPLITS}, got {s!r}", field="split")
    u = {i: unit_hash(seed, i) for i in ids if i not in fixed}
    out = dict(fixed)
    for i, x in u.items():
        out[i] = "val" if x < val_fraction else "test" if x < val_fraction + test_fraction else "train"
    if not fixed and len(ids) >= 3:
        # Band centres; move the closest item of the largest split into an empty split.
        centres = {"val": val_fraction / 2, "test": val_fraction + test_fraction / 2}
        for split, frac in (("val", val_fraction), ("test", test_fraction)):
            if frac > 0 and split not in out.values():
                counts = {s: list(out.values()).count(s) for s in SPLITS}
                donor = max(SPLITS, key=lambda s: counts[s])
                cand = sorted((abs(u[i] - centres[split]), i) for i in u if out[i] == donor)
                out[cand[0][1]] = split
    return {i: out[i] for i in ids}


def assign_group_splits(item_groups: dict[str, str], val_fraction: float, test_fraction: float,
                        seed: int, fixed: dict[str, str] | None = None, *, kind: str = "item",
                        file: str | None = None) -> dict[str, str]:
    """Map each item id to a split so that every item of one group shares it.

    ``item_groups``: item id -> group id (a clip's recording, a RIR's room). Fractions are of
    groups. ``fixed`` (item id -> split, e.g. a CSV's split column) fixes its group's split; two
    items of one group fixed to different splits raise a :class:`SchemaError` naming the group.
    """
    fixed_groups: dict[str, str] = {}
    for item, split in (fixed or {}).items():
        g = item_groups[item]
        if fixed_groups.setdefault(g, split) != split:
            raise SchemaError(f"{kind} group {g!r} is given two splits ({fixed_groups[g]!r} and "
                              f"{split!r}, the latter for {item!r}); one group must stay in one split",
                              file=file, field="split")
    groups = list(dict.fromkeys(item_groups.values()))
    group_split = assign_splits(groups, val_fraction, test_fraction, seed, fixed_groups or None)
    return {item: group_split[g] for item, g in item_groups.items()}


def seeded_order(ids: list[str], seed: int, salt: str) -> list[str]:
    """The ids in a seeded pseudo-random order that does not depend on their input order."""
    return sorted(ids, key=lambda i: (stable_uint(f"order:{seed}:{salt}:{i}"), i))


def _cyclic_stream(ids: list[str], seed: int, salt: str):
    """An endless stream of ``ids``: one seeded permutation per cycle, a new one every cycle.

    Cycle 0 is :func:`seeded_order` with ``salt``; cycle ``c >= 1`` reorders with the salt
    ``f"{salt}:cycle{c}"``. Reshuffling every cycle is what makes K-RIR blocks mix: with a fixed
    cyclic order, 100 RIRs in blocks of 4 would only ever form the same 25 sets.
    """
    cycle = 0
    while True:
        yield from seeded_order(ids, seed, salt if cycle == 0 else f"{salt}:cycle{cycle}")
        cycle += 1


def _take_distinct(stream, pending: list[str], n: int) -> list[str]:
    """The next ``n`` distinct ids: first the ``pending`` ones (deferred from the last block), then
    the stream; an id already in the block (a cycle seam can repeat one) is deferred to the next."""
    block: list[str] = []
    deferred: list[str] = []
    source = list(pending)
    pending.clear()
    while len(block) < n:
        item = source.pop(0) if source else next(stream)
        (deferred if item in block else block).append(item)
    pending.extend(source + deferred)
    return block


def pair_blocks(clip_ids: list[str], rir_ids: list[str], rirs_per_clip: int, clips_per_rir: int,
                seed: int, salt: str = "") -> list[tuple[str, str]]:
    """(clip, rir) pairs: every clip with >= K RIRs, every RIR with >= L clips, no pair twice.

    Blocks of L clips x K RIRs are taken from two seeded streams until both sets are covered
    (the first cycle of each stream holds every id once). Each stream is reshuffled every cycle
    (deterministically, from ``seed`` and ``salt``), so a RIR shares clips with many different
    RIRs across cycles instead of always the same K - 1 (and likewise clips). The pairs come out
    block by block, clip-major inside a block (so consecutive samples share a clip and a block's
    RIRs are reused L times). The result does not depend on the input order of the ids.
    """
    if not clip_ids or not rir_ids:
        return []
    if rirs_per_clip < 1 or clips_per_rir < 1:
        raise SchemaError("rirs_per_clip and clips_per_rir must be >= 1", field="pairing")
    clip_ids, rir_ids = list(dict.fromkeys(clip_ids)), list(dict.fromkeys(rir_ids))
    k = min(rirs_per_clip, len(rir_ids))
    l_ = min(clips_per_rir, len(clip_ids))
    clip_stream = _cyclic_stream(clip_ids, seed, f"clips{salt}")
    rir_stream = _cyclic_stream(rir_ids, seed, f"rirs{salt}")
    clip_pending: list[str] = []
    rir_pending: list[str] = []
    n_blocks = max(math.ceil(len(clip_ids) / l_), math.ceil(len(rir_ids) / k))
    pairs, seen = [], set()
    for _ in range(n_blocks):
        block_clips = _take_distinct(clip_stream, clip_pending, l_)
        block_rirs = _take_distinct(rir_stream, rir_pending, k)
        for c in block_clips:
            for r in block_rirs:
                if (c, r) not in seen:  # a clip can meet a RIR again in a later cycle
                    seen.add((c, r))
                    pairs.append((c, r))
    return pairs


def sample_key(clip_id: str, rir_id: str) -> str:
    """A dot- and slash-free WebDataset key for one (clip, RIR) pair."""
    return _KEY_BAD.sub("_", f"{clip_id}__{rir_id}")


def per_sample_rng(seed: int, key: str) -> np.random.Generator:
    """The RNG of one sample: fixed by the run seed and the sample key, whatever the worker."""
    return np.random.default_rng([int(seed), stable_uint(f"sample:{key}")])
