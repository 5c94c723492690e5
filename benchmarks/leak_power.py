"""How often does a leak-free embedding pass report.md's disentanglement rule on a given test set?

    disse-eval --checkpoint runs/demo/checkpoints/best.pt --shards demo/test --save-embeddings emb.npz
    python benchmarks/leak_power.py emb.npz                 # 1000 draws per row (seconds)

The rule (trainer/evaluation/evaluate.py ``disentanglement``) asks every leakage check's R@1 to be at most
1.5x its chance level. On a few hundred items a chance level of ~0.01 is ~3 expected hits, and 1.5x of it is
4-5 hits, so the rule is a statistical statement about small counts. This prints, for the ids of the test set
in the ``.npz`` (its ``source_id`` and ``space_id``, in the same gallery the evaluator scores):

* ``at chance``: text and audio embeddings drawn at random (independent Gaussians): a model that knows
  nothing of either factor. Its checks sit at chance on average and pass the 1.5x rule only as often as
  the count's noise allows.
* ``oracle``: each embedding built from its own id alone (a one-hot of ``source_id`` for the source side,
  of ``space_id`` for the spatial side) plus a little noise, so that ties break at random: a model that
  knows its factor perfectly and nothing of the other. On a balanced design (a source never twice in one
  space) its top-1 is always its own id, and its leakage checks score 0.
* ``measured``: the embeddings in the file, with each check's hits, the hits expected at chance, and
  P(hits >= measured) for a model at chance (report.md's "P at chance").

Each simulated row gives the share of draws in which each check passes and in which all three checks of an
embedding pass (the invariance ratio, the rule's fourth condition, is not drawn: it is > 3.5 for the oracle
and 1 at chance by construction). docs/spatial.md ("rows p") reads it for the demo's 288-item test split.
"""
from __future__ import annotations

import argparse

import numpy as np

from disse.trainer.evaluation import metrics as M
from disse.trainer.evaluation.evaluate import DISENTANGLEMENT_CHECKS, LEAK_FACTOR, chance_tail

DIM = 64  # of the random embeddings; any width well above 1 gives the same ranks in distribution


def leak_checks(text_source: np.ndarray, audio_source: np.ndarray, text_space: np.ndarray, audio_space: np.ndarray,
                source_id: np.ndarray, space_id: np.ndarray) -> dict[str, float]:
    """The six leakage checks' R@1, chance and query counts, scored as ``evaluate_embeddings`` scores them."""
    out = M.paired_retrieval(text_source, audio_source, [M.IdSet("X-SPA", space_id, exclude_self=True)], (1,), 1)
    out.update(M.paired_retrieval(text_space, audio_space, [M.IdSet("X-SRC", source_id, exclude_self=True)], (1,), 1))
    out.update(M.self_retrieval(audio_space, [M.IdSet("AX-SRC", source_id, exclude_self=True)], (1,), 1))
    out.update(M.self_retrieval(audio_source, [M.IdSet("AX-SPA", space_id, exclude_self=True)], (1,), 1))
    return out


def passes(m: dict[str, float]) -> dict[str, bool]:
    """Per leakage key of the rule, and per embedding (``space``, ``source``): within ``LEAK_FACTOR`` x chance."""
    out = {}
    for emb, (keys, _) in DISENTANGLEMENT_CHECKS.items():
        for key in keys:
            out[key] = m[key] <= LEAK_FACTOR * m[f"{key}/chance"]
        out[emb] = all(out[k] for k in keys)
    return out


def one_hot(ids: np.ndarray) -> np.ndarray:
    """``(N,)`` ids -> ``(N, n_ids)`` float32 one-hot rows."""
    _, codes = np.unique(ids, return_inverse=True)
    x = np.zeros((len(ids), codes.max() + 1), np.float32)
    x[np.arange(len(ids)), codes] = 1.0
    return x


def draw(kind: str, source_id: np.ndarray, space_id: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One draw of the four embeddings of a leak-free model: ``chance`` (random) or ``oracle`` (one-hot of
    the embedding's own id; text and audio get independent noise of 0.05, so ties break at random)."""
    n = len(source_id)
    if kind == "chance":
        return {k: rng.standard_normal((n, DIM)).astype(np.float32)
                for k in ("text_source", "audio_source", "text_space", "audio_space")}
    src, spa = one_hot(source_id), one_hot(space_id)
    noisy = lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(np.float32)  # noqa: E731
    return {"text_source": noisy(src), "audio_source": noisy(src), "text_space": noisy(spa), "audio_space": noisy(spa)}


def pass_rates(kind: str, source_id: np.ndarray, space_id: np.ndarray, draws: int, seed: int
               ) -> tuple[dict[str, float], dict[str, float]]:
    """Over ``draws`` draws: the share passing each check and each embedding, and each check's mean R@1."""
    rng = np.random.default_rng(seed)
    passed, values = [], []
    for _ in range(draws):
        m = leak_checks(**draw(kind, source_id, space_id, rng), source_id=source_id, space_id=space_id)
        passed.append(passes(m))
        values.append(m)
    rates = {k: float(np.mean([p[k] for p in passed])) for k in passed[0]}
    means = {k: float(np.mean([v[k] for v in values])) for k in values[0] if k.endswith("/R@1")}
    return rates, means


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("embeddings", help="a disse-eval --save-embeddings .npz")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    z = np.load(args.embeddings, allow_pickle=False)
    source_id, space_id = z["source_id"], z["space_id"]
    measured = leak_checks(z["text_source"], z["audio_source"], z["text_space"], z["audio_space"], source_id, space_id)
    verdict = passes(measured)
    print(f"{len(source_id)} items, {len(np.unique(source_id))} source ids, {len(np.unique(space_id))} space ids; "
          f"rule: R@1 <= {LEAK_FACTOR} x chance; {args.draws} draws per simulated row")
    rows = {kind: pass_rates(kind, source_id, space_id, args.draws, args.seed) for kind in ("chance", "oracle")}
    print(f"{'check':16s} {'chance':>7s} {'limit':>7s} {'measured':>12s} {'P at chance':>11s}   "
          f"{'pass: at chance':>15s} {'pass: oracle':>12s} {'oracle R@1':>10s}")
    for emb, (keys, _) in DISENTANGLEMENT_CHECKS.items():
        for key in keys:
            n = measured[key.rsplit("/", 1)[0] + "/n_queries"]
            chance = measured[f"{key}/chance"]
            hits = round(measured[key] * n)
            print(f"{key:16s} {chance:7.4f} {LEAK_FACTOR * chance:7.4f} {measured[key]:6.4f} ({hits:3d}) "
                  f"{chance_tail(measured, key):11.3f}   {rows['chance'][0][key]:15.3f} {rows['oracle'][0][key]:12.3f} "
                  f"{rows['oracle'][1][key]:10.4f}")
        print(f"{'  all three':16s} {'':7s} {'':7s} {'pass' if verdict[emb] else 'fail':>12s} {'':11s}   "
              f"{rows['chance'][0][emb]:15.3f} {rows['oracle'][0][emb]:12.3f}   ({emb} embedding)")


if __name__ == "__main__":
    main()
