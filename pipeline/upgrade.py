"""``disse-synth upgrade SRC DST``: rewrite schema v1 / v2 / v3 shards as v4 without rendering again.

Version 4 (schemas/shard.py, docs/synthesis.md "Shard size") stores each FOA channel once at 16 bits:
W as 16-bit PCM ``w.wav`` (what training reads), Y, Z, X as 3-channel 16-bit ``yzx.flac``, and the
project's intensity features as int8 in a deflated ``iv.npz``: about half of a v2 sample's bytes.
Upgrading a v1 / v2 sample decodes its ``foa.flac``, rounds it to 16 bits exactly as the renderer
does (round(x * 2**15), no dither), writes ``w.wav`` and ``yzx.flac`` from those samples
(``foa.flac`` and a v2 ``w.wav`` are replaced). Every older sample's ``iv.npy`` becomes ``iv.npz``:
quantised to int8 (project features only; another preset's features keep their float16 values), and
``schema_version`` becomes 4 in its ``json`` (every other JSON field, known to this reader or not, is
kept). A v3 sample keeps its audio members byte for byte. The 24 -> 16-bit step is lossy by design
(error <= 2**-16 of full scale); keep the source if you need the 24-bit FOA. Samples that are already
v4 are copied unchanged. A sample that cannot be upgraded (unreadable JSON, FLAC or npy, a missing
member) is left out and reported, and the destination's ``sizes.json`` counts what was written.
Output is deterministic: the same input gives byte-identical shards, whatever ``--workers``. Only
shards and ``sizes.json`` are written: the render ``manifest.json`` stays with the source as the
record of how the samples were made.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

from tqdm import tqdm

from disse.pipeline.inspect import find_shards
from disse.pipeline.render import pool_context
from disse.pipeline.shards import read_tar_samples, write_json_atomic, write_tar_atomic
from disse.schemas import SchemaError
from disse.schemas.shard import (SCHEMA_VERSION, check_members, decode_foa, decode_iv, decode_meta, encode_flac,
                                 encode_iv_npz, encode_pcm16_wav, foa_to_pcm16, interleave, iv_is_bounded)


def upgrade_sample(sample: dict, *, where: str = "sample") -> dict:
    """A raw sample dict (``__key__`` + ``ext -> bytes``) of schema v1, v2 or v3 -> the same sample in v4.

    v4 samples are returned unchanged. Raises :class:`SchemaError` naming the member at fault.
    """
    if "json" not in sample:
        raise SchemaError("missing member 'json'", file=where, field="json")
    meta = decode_meta(sample["json"], where=where)
    check_members(sample, meta.schema_version, where=where)
    if meta.schema_version >= SCHEMA_VERSION:
        return sample
    # edit the JSON as a dict, not through ShardMeta, so that fields this reader does not know survive
    d = json.loads(sample["json"].decode("utf-8"))
    d["schema_version"] = SCHEMA_VERSION
    out = {k: v for k, v in sample.items() if k not in ("w.wav", "foa.flac", "iv.npy")}
    out["json"] = json.dumps(d, sort_keys=True, ensure_ascii=False).encode("utf-8")
    if meta.schema_version >= 3:   # the 16-bit audio members are already v4's
        out["w.wav"] = sample["w.wav"]
    else:
        foa, sr = decode_foa(sample["foa.flac"], where=where)
        pcm = foa_to_pcm16(foa)
        out["w.wav"] = encode_pcm16_wav(pcm[0], sr)
        out["yzx.flac"] = encode_flac(interleave(pcm[1:]), sr)
    bounded = iv_is_bounded(meta.features)
    iv = decode_iv(sample["iv.npy"], where=where, dequantise=not bounded)
    out["iv.npz"] = encode_iv_npz(iv, quantise=bounded)
    return out


def upgrade_shard(src: Path, dst: Path) -> dict:
    """Upgrade one tar to ``dst`` (written atomically). Returns counts and the samples left out."""
    written, upgraded, skipped = [], 0, []
    try:
        samples = read_tar_samples(src)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise SchemaError(f"cannot read tar ({exc})", file=str(src)) from None
    for sample in samples:
        where = f"{src}:{sample['__key__']}"
        try:
            new = upgrade_sample(sample, where=where)
        except SchemaError as err:
            skipped.append({"key": sample["__key__"], "field": err.field, "reason": err.reason})
            continue
        upgraded += new is not sample
        written.append(new)
    write_tar_atomic(dst, written)
    return {"shard": str(src), "samples": len(written), "upgraded": upgraded, "skipped": skipped}


def _upgrade_task(args: tuple[str, str]) -> dict:
    return upgrade_shard(Path(args[0]), Path(args[1]))


def upgrade_tree(src: str | Path, dst: str | Path, *, workers: int = 1, progress: bool = True) -> dict:
    """Upgrade every shard under ``src`` (a folder, brace pattern or tar) into ``dst``, keeping the
    folder layout; writes each folder's ``sizes.json`` from the samples written. Returns a report."""
    shards = find_shards(src)
    src_root = Path(src) if Path(src).is_dir() else shards[0].parent
    dst_root = Path(dst)
    if dst_root.resolve() == src_root.resolve() or src_root.resolve() in dst_root.resolve().parents:
        raise SchemaError("the destination must not be the source folder or inside it", file=str(dst))
    jobs = [(str(s), str(dst_root / (s.relative_to(src_root) if s.is_relative_to(src_root) else s.name)))
            for s in shards]
    bar = tqdm(total=len(jobs), unit="shard", desc="upgrade", disable=not progress, dynamic_ncols=True)
    results = []
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            results.append(_upgrade_task(job))
            bar.update()
    else:
        with pool_context().Pool(min(workers, len(jobs))) as pool:
            for record in pool.imap(_upgrade_task, jobs):
                results.append(record)
                bar.update()
            pool.close()
            pool.join()
    bar.close()
    sizes: dict[Path, dict[str, int]] = {}
    for (s, d), record in zip(jobs, results):
        sizes.setdefault(Path(d).parent, {})[Path(d).name] = record["samples"]
    for folder, table in sizes.items():
        write_json_atomic(folder / "sizes.json", dict(sorted(table.items())))
    return {
        "shards": len(results), "samples": sum(r["samples"] for r in results),
        "upgraded": sum(r["upgraded"] for r in results),
        "skipped": [dict(s, shard=r["shard"]) for r in results for s in r["skipped"]],
    }
