"""report.md and the console say whether each embedding is disentangled by DESIGN.md's rule: every leakage
check's R@1 within 1.5x its chance level and the invariance ratio at least 3.5."""
from __future__ import annotations

import numpy as np
from scipy.stats import binom

from disse.trainer.evaluation.evaluate import chance_tail, disentanglement
from disse.trainer.evaluation.report import console_summary, render_markdown


def _metrics(leak: float, ir_space: float, ir_source: float = 5.0) -> dict:
    m = {"IR_space": ir_space, "IR_source": ir_source}
    for key in ("X-SRC/t2a/R@1", "X-SRC/a2t/R@1", "AX-SRC/a2a/R@1"):
        m[key], m[f"{key}/chance"] = leak, 0.03
    for key in ("X-SPA/t2a/R@1", "X-SPA/a2t/R@1", "AX-SPA/a2a/R@1"):
        m[key], m[f"{key}/chance"] = 0.02, 0.02
    return m


def test_the_rule_decides_each_embedding():
    v = disentanglement(_metrics(leak=0.045, ir_space=3.5))   # 1.5 x chance exactly, IR at the bound
    assert v["space"]["disentangled"] is True and v["source"]["disentangled"] is True
    v = disentanglement(_metrics(leak=0.046, ir_space=9.0))   # one leak just over
    assert v["space"]["disentangled"] is False
    assert [c[0] for c in v["space"]["checks"] if c[3] is False] == ["X-SRC/t2a/R@1", "X-SRC/a2t/R@1",
                                                                     "AX-SRC/a2a/R@1"]
    v = disentanglement(_metrics(leak=0.01, ir_space=3.49))   # leaks at chance, ratio short
    assert v["space"]["disentangled"] is False and v["source"]["disentangled"] is True
    m = _metrics(leak=0.01, ir_space=5.0)
    del m["IR_space"]                                          # undefined (one RIR per clip)
    assert disentanglement(m)["space"]["disentangled"] is None


def test_report_and_console_state_the_verdict():
    m = _metrics(leak=0.20, ir_space=2.19)
    md = render_markdown(m, {}, {})
    assert "## Disentanglement" in md
    assert "**spatial embedding: not disentangled (" in md and "IR_space 2.1900 < 3.5000" in md
    assert "**source embedding: disentangled**" in md
    text = console_summary(m)
    assert "spatial embedding: not disentangled" in text and "source embedding: disentangled" in text


def test_chance_tail_says_whether_an_excess_over_chance_is_noise():
    key = "X-SPA/a2t/R@1"
    m = {key: 5 / 288, f"{key}/chance": 0.0112, "X-SPA/a2t/n_queries": 288}   # 5 hits where chance gives 3.2
    assert 0.15 < chance_tail(m, key) < 0.3                                     # over 1.5x chance, yet common
    m[key] = 20 / 288
    assert chance_tail(m, key) < 1e-6                                           # a real leak
    m[key] = 0.0
    assert chance_tail(m, key) == 1.0                                           # no hits: as likely as can be
    # a model at chance, drawn many times, gets P <= 0.05 about 5 % of the time or less (discrete, conservative)
    rng = np.random.default_rng(0)
    draws = rng.binomial(288, 0.0112, 20000)
    ps = [chance_tail({key: h / 288, f"{key}/chance": 0.0112, "X-SPA/a2t/n_queries": 288}, key) for h in draws]
    assert sum(p <= 0.05 for p in ps) / len(ps) <= 0.05 + 0.005
    assert chance_tail({key: 0.1}, key) is None                                 # no chance or count: undefined
    assert binom.sf(4, 288, 0.0112) == chance_tail(dict(m, **{key: 5 / 288}), key)


def test_report_gives_the_chance_tail_of_each_leakage_check():
    m = _metrics(leak=0.20, ir_space=2.19)
    m.update({k.rsplit("/", 1)[0] + "/n_queries": 300 for k in list(m) if k.endswith("R@1")})
    md = render_markdown(m, {}, {})
    assert "| P at chance |" in md
    row = next(line for line in md.splitlines() if line.startswith("| spatial embedding | X-SRC/t2a/R@1"))
    assert row.rstrip(" |").endswith("0.000")        # 60 hits where chance gives 9: no noise
