"""Time and peak memory of disse-eval's scoring (evaluate_embeddings) at growing N, on CPU.

Each size runs in a fresh subprocess so its peak RSS (resource.getrusage ru_maxrss, which sees torch's
allocations, unlike tracemalloc) is its own. Embeddings are synthetic but shaped like DELSA's
(source 512-d, spatial 256-d, 5 renders per dry clip, a few hundred spatial conditions), with
physical predictions and zero-shot prompts so every metric is computed.

A plain full-matrix reference (N x N similarities, full argsort) is run on a size it can handle and
its figures are compared with the chunked path.

    .venv/bin/python benchmarks/eval.py                 # 5k reference check, 20k, 100k
    .venv/bin/python benchmarks/eval.py --sizes 20000   # one size
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

D_SOURCE, D_SPACE, RENDERS_PER_CLIP, N_SPACES = 512, 256, 5, 400


def make_embeddings(n: int, seed: int = 0):
    from disse.schemas import load_caption_rules
    from disse.trainer.evaluation.evaluate import Embeddings
    from disse.trainer.evaluation.metrics import direction_from_angles

    rng = np.random.default_rng(seed)
    src = np.arange(n) // RENDERS_PER_CLIP
    spa = rng.integers(0, N_SPACES, n)
    # a partly learned model: each id has a prototype, each item adds noise
    p_src = rng.standard_normal((src.max() + 1, D_SOURCE), dtype=np.float32)
    p_spa = rng.standard_normal((N_SPACES, D_SPACE), dtype=np.float32)

    def noisy(p, ids, scale):
        x = p[ids]
        x += scale * rng.standard_normal(x.shape, dtype=np.float32)
        return x

    az, el = rng.uniform(-180, 180, n), rng.uniform(-60, 60, n)
    rules = load_caption_rules()
    prompts = {a: (np.array(rules.attributes[a].labels),
                   rng.standard_normal((len(rules.attributes[a].labels), D_SPACE), dtype=np.float32))
               for a in rules.attributes}
    physical = {"true_azimuth_deg": az, "true_elevation_deg": el,
                "true_distance_m": rng.uniform(0.5, 5, n), "true_area_m2": rng.uniform(10, 300, n),
                "true_t30_ms": rng.uniform(100, 2000, n),
                "pred_direction": direction_from_angles(az + rng.normal(0, 20, n), el),
                "pred_distance_m": rng.uniform(0.5, 5, n), "pred_area_m2": rng.uniform(10, 300, n),
                "pred_t30_ms": rng.uniform(100, 2000, n)}
    return Embeddings(noisy(p_src, src, 1.0), noisy(p_spa, spa, 1.0), noisy(p_src, src, 1.0),
                      noisy(p_spa, spa, 1.0), src, np.array([f"space{i}" for i in spa]),
                      physical=physical, prompts=prompts), rules


def reference_retrieval(emb, ks=(1, 5, 10), map_k=10) -> dict[str, float]:
    """Plain full-matrix multi-positive retrieval (what the chunked path must reproduce)."""
    out = {}
    for space, text, audio, sets in (
            ("source", emb.text_source, emb.audio_source, (("SRC", emb.source_id, False), ("X-SPA", emb.space_id, True))),
            ("space", emb.text_space, emb.audio_space, (("SPA", emb.space_id, False), ("X-SRC", emb.source_id, True)))):
        t = text / np.linalg.norm(text, axis=1, keepdims=True)
        a = audio / np.linalg.norm(audio, axis=1, keepdims=True)
        sim = t @ a.T
        for direction, s in (("t2a", sim), ("a2t", sim.T)):
            for name, ids, excl in sets:
                s2 = s.copy()
                if excl:
                    np.fill_diagonal(s2, -np.inf)
                order = np.argsort(-s2, axis=1, kind="stable")[:, :max(max(ks), map_k)]
                rel = ids[order] == ids[:, None]
                same = ids[:, None] == ids[None, :]
                m = same.sum(1) - (1 if excl else 0)
                valid = m > 0
                for k in ks:
                    out[f"{name}/{direction}/R@{k}"] = float(rel[valid, :k].any(1).mean())
                prec = np.cumsum(rel[:, :map_k], 1) / np.arange(1, map_k + 1)
                ap = (prec * rel[:, :map_k]).sum(1) / np.minimum(m, map_k).clip(1)
                out[f"{name}/{direction}/mAP@{map_k}"] = float(ap[valid].mean())
    return out


def run_one(n: int, mode: str, chunk: int) -> dict:
    import torch

    from disse.trainer.evaluation.evaluate import evaluate_embeddings

    rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    emb, rules = make_embeddings(n)
    rss_inputs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0, c0 = time.perf_counter(), time.process_time()
    if mode == "chunked":
        r = evaluate_embeddings(emb, rules, chunk_size=chunk)
    else:
        r = reference_retrieval(emb)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"n": n, "mode": mode, "seconds": dt, "cpu_seconds": cpu, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_inputs_mb": rss_inputs, "rss_after_import_mb": rss_import, "threads": torch.get_num_threads(),
            "metrics": {k: v for k, v in r.items() if "/" in k and "chance" not in k}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--reference-size", type=int, default=5_000, help="size for the full-matrix comparison (0: skip)")
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(run_one(int(args._child[0]), args._child[1], args.chunk)))
        return

    def child(n: int, mode: str) -> dict:
        p = subprocess.run([sys.executable, __file__, "--chunk", str(args.chunk), "--_child", str(n), mode],
                           capture_output=True, text=True, check=True)
        return json.loads(p.stdout.strip().splitlines()[-1])

    def row(r: dict) -> None:
        print(f"{r['n']:>8} {r['mode']:<14} {r['seconds']:8.2f} {r['cpu_seconds']:8.1f} {r['peak_rss_mb']:12.0f} "
              f"{r['rss_after_import_mb']:14.0f} {r['rss_after_inputs_mb']:13.0f}")

    print(f"{'N':>8} {'path':<14} {'seconds':>8} {'CPU s':>8} {'peak RSS MB':>12} {'after imports':>14} {'after inputs':>13}")
    if args.reference_size:
        n = args.reference_size
        ref, chk = child(n, "full-matrix"), child(n, "chunked")
        for r in (ref, chk):
            row(r)
        diff = max(abs(ref["metrics"][k] - chk["metrics"][k]) for k in ref["metrics"])
        print(f"         retrieval figures, chunked vs full matrix: max |difference| = {diff:.2e} "
              f"over {len(ref['metrics'])} figures (chunked also computes IR, physical, zero-shot)")
    for n in args.sizes:
        r = child(n, "chunked")
        row(r)
    print(f"(torch threads: {r['threads']}; CPU s = process CPU time, all threads: on a loaded machine wall time "
          f"grows, CPU time much less; chunk {args.chunk}; RSS in MB: peak over the whole process, "
          "including the libraries (after imports) and the embeddings themselves (after inputs))")


if __name__ == "__main__":
    main()
