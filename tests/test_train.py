"""disse-train on the rendered demo shards (CPU): it learns, resumes exactly, and fails clearly."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from disse.configs import config_path
from disse.schemas import SchemaError
from disse.trainer.training.checkpoint import load_checkpoint, load_model
from disse.trainer.training.config import load_train_config
from disse.trainer.training.logging_utils import read_log
from disse.trainer.training.loop import lr_factor, objective_for, train
from disse.trainer.cli.train import main as cli_main

# The demo config, shrunk so a run takes seconds on 2 cores: a smaller HTSAT and coarser
# intensity features in; everything else (text encoder, heads, losses, loop) as in the demo.
SMALL = ["model.audio.htsat.embed_dim=16", "model.audio.htsat.depths=[1,1,1]", "model.audio.htsat.num_heads=[1,2,4]",
         "model.audio.htsat.mel_bins=16", "model.audio.htsat.spec_size=64", "model.audio.htsat.hop_size=1920",
         "model.audio.htsat.window_size=4", "model.audio.spatial.input_pool=[16,2]", "log.progress=false",
         "train.threads=2", "data.val_num_workers=0"]


def cfg_for(demo, out, *extra):
    return load_train_config(config_path("demo.yaml"),
                             [f"data.train={demo / 'train'}", f"data.val={demo / 'val'}", f"train.out_dir={out}",
                              *SMALL, *extra])


def test_lr_schedule():
    assert lr_factor(0, 100, 10, 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_short_run_learns(demo_shards, tmp_path):
    """Loss goes down and validation SPA R@1 rises above the untrained model's.

    The fixture's splits hold 4 rooms each (16 samples): 20 steps cannot generalise from 4 training
    rooms to 4 others, so "validation" here scores the training shards with the validation
    machinery (disse-eval's metrics); the full demo (README) validates on its val split.
    """
    cfg = cfg_for(demo_shards, tmp_path / "run", "train.max_steps=20", "data.batch_size=8", "optim.lr=1e-3",
                  "optim.warmup_steps=2", "eval.at_start=true", "eval.every_steps=10", "eval.each_epoch=false",
                  "log.every_steps=1", "data.num_workers=1", f"data.val={demo_shards / 'train'}")
    result = train(cfg)
    records = read_log(tmp_path / "run" / "log.jsonl")
    losses = [r["loss"] for r in records if r["event"] == "train"]
    vals = [r for r in records if r["event"] == "val"]
    assert len(losses) == 20 and len(vals) == 3
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4
    spa = [v["val/SPA/t2a/R@1"] for v in vals]
    assert max(spa[1:]) > spa[0], spa
    # run folder: resolved config (reloadable), checkpoints loadable for evaluation
    again = load_train_config(tmp_path / "run" / "config.yaml")
    assert again == cfg
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file() and result.best["step"] in (10, 20)
    model, mcfg = load_model(tmp_path / "run" / "checkpoints" / "latest.pt", "cpu")
    assert mcfg == cfg and not model.training
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert state["step"] == 20 and set(state) >= {"model", "optimizer", "scheduler", "scaler", "rng", "config"}


@pytest.fixture(scope="module")
def train_with_bad_shard(demo_shards, tmp_path_factory):
    """The demo's training shards plus a corrupt one that sizes.json lists like any other."""
    d = tmp_path_factory.mktemp("bad") / "train"
    shutil.copytree(demo_shards / "train", d)
    sizes = json.loads((d / "sizes.json").read_text())
    (d / "zz-corrupt.tar").write_bytes(b"\x00garbage, not a tar archive" * 64)
    sizes["zz-corrupt.tar"] = 4
    (d / "sizes.json").write_text(json.dumps(sizes))
    return d


def test_resume_mid_epoch_reaches_the_same_weights(demo_shards, train_with_bad_shard, tmp_path):
    """Stopped after 2 of 3 steps (mid-epoch, accumulation on, a corrupt shard in the list) and resumed
    with --resume latest == run straight through. The corrupt shard is skipped and counted."""
    common = [f"data.train={train_with_bad_shard}", "train.max_steps=3", "data.batch_size=2", "train.accum_steps=2",
              "data.num_workers=1", "eval.each_epoch=false", "eval.at_start=false", "data.val=",
              "model.dropout=0.1", "log.every_steps=1"]
    straight = train(cfg_for(demo_shards, tmp_path / "a", *common))
    assert straight.bad_data["bad_shards"] >= 1
    first = train(cfg_for(demo_shards, tmp_path / "b", *common, "train.stop_after=2"))
    assert first.step == 2
    resumed = train(cfg_for(demo_shards, tmp_path / "b", *common), resume="latest")
    assert resumed.step == 3
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "latest.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    records = read_log(tmp_path / "a" / "log.jsonl")
    assert records[-1]["event"] == "end" and records[-1]["bad_shards"] >= 1


def test_freeze_keeps_parameters(demo_shards, tmp_path):
    cfg = cfg_for(demo_shards, tmp_path / "f", "train.max_steps=1", "data.batch_size=4", "data.num_workers=0",
                  "eval.each_epoch=false", "data.val=", "train.freeze=[audio.spatial]")
    torch.manual_seed(cfg.train.seed)
    from disse.trainer.training.loop import build_model
    init = build_model(cfg).state_dict()
    train(cfg)
    after = load_checkpoint(tmp_path / "f" / "checkpoints" / "latest.pt")["model"]
    changed = {k for k in init if not torch.equal(init[k], after[k])}
    assert changed and not any(k.startswith("audio.spatial.") and "running" not in k and "num_batches" not in k
                               for k in changed)
    with pytest.raises(SchemaError, match="train.freeze"):
        train(cfg_for(demo_shards, tmp_path / "g", "train.freeze=[no_such_module]", "data.val="))


def _rows_matter(monkeypatch):
    """Make the text backbone's output depend on how many rows share its pass, as cuBLAS or bf16 can in the
    last bits (MiniLM on one CPU thread seldom does): a pass that holds other rows than it would have held
    unprepared then changes the result."""
    from disse.trainer.model.text_encoder import TextEncoder

    backbone_out = TextEncoder._backbone_out
    monkeypatch.setattr(TextEncoder, "_backbone_out",
                        lambda self, ids, mask: backbone_out(self, ids, mask) + 1e-3 * ids.shape[0])


def test_prepared_ahead_trains_the_same_run(demo_shards, tmp_path, monkeypatch):
    """train.prefetch (step k + 1's tokens and new frozen-text states made in a helper thread while step k
    trains) changes nothing: the same loss at every step, the same validations, and the same weights and
    data position in mid-run checkpoints (saved while the next batch is already prepared) as a run that
    prepares each step in turn. The run crosses validations (the cache gains their texts); the clips' own
    captions recur from step to step, and the training captions are new, so the helper computes texts
    on most steps, some of them first seen in the step before."""
    _rows_matter(monkeypatch)
    common = ["train.max_steps=7", "data.batch_size=4", "data.num_workers=1", "train.threads=1",
              "eval.at_start=false", "eval.every_steps=3", "eval.each_epoch=false", "log.every_steps=1",
              "train.save_every_steps=2"]
    runs = {}
    for prefetch in ("true", "false"):
        train(cfg_for(demo_shards, tmp_path / prefetch, *common, f"train.prefetch={prefetch}"))
        records = read_log(tmp_path / prefetch / "log.jsonl")
        runs[prefetch] = {"loss": [r["loss"] for r in records if r["event"] == "train"],
                          "val": [{k: v for k, v in r.items() if k.startswith("val/") and "seconds" not in k}
                                  for r in records if r["event"] == "val"],
                          "states": [load_checkpoint(tmp_path / prefetch / "checkpoints" / f"step_{n:07d}.pt")
                                     for n in (2, 4, 6)]}
    a, b = runs["true"], runs["false"]
    assert len(a["loss"]) == 7 and len(a["val"]) == 2
    assert a["loss"] == b["loss"] and a["val"] == b["val"]
    for sa, sb in zip(a["states"], b["states"]):
        assert sa["data"] == sb["data"]
        for k, v in sa["model"].items():
            assert torch.equal(v, sb["model"][k]), k


def test_text_states_made_ahead_equal_the_forward_pass(demo_shards, monkeypatch):
    """TextEncoder.missing_states + admit, then forward == forward alone, bit for bit, and the cache ends
    the same: a text twice in a set, a second set that repeats texts of the first, texts already cached,
    a second step that repeats a new text of the first (prepared once the first is admitted, as the loop
    does), a full cache that evicts a text the second set was prepared to find, and a cache too small
    for the step's texts."""
    from disse.trainer.training.loop import build_model

    _rows_matter(monkeypatch)
    model = build_model(cfg_for(demo_shards, "unused"))
    text = model.text
    step1 = [model.tokenize(["a dog barks, far away on the left", "rain on a roof", "a dog barks, far away on the left",
                             "a siren, close by"]),
             model.tokenize(["rain on a roof", "a bell rings", "a siren, close by, in a small room"])]
    step2 = [model.tokenize(["a siren, close by", "wind in the trees"]), model.tokenize(["a bell rings"])]
    warm = model.tokenize(["a bell rings", "an owl hoots", "a door creaks"])  # the bell oldest: evicted first

    def run(ahead: bool, cache_size: int) -> tuple[list[torch.Tensor], list]:
        text.cfg.cache_size = cache_size
        text._cache.clear()
        text(warm)
        out = []
        for sets in (step1, step2):
            if ahead:
                with torch.no_grad():
                    states = text.missing_states(sets)
                if sets is step1:
                    assert [len(s) for s in states] == [3, 1]  # the repeats and the cached text are not run
                text.admit(sets, states)
            out += [text(s) for s in sets]
        return out, [(k, v.clone()) for k, v in text._cache.items()]

    for cache_size in (1000, 5, 3):
        plain, plain_cache = run(False, cache_size)
        ahead, ahead_cache = run(True, cache_size)
        assert all(torch.equal(x, y) for x, y in zip(plain, ahead)), cache_size
        assert [k for k, _ in plain_cache] == [k for k, _ in ahead_cache], cache_size
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(plain_cache, ahead_cache)), cache_size


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(args)
    return e.value.code, capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    code, err = run_cli(["--config", "demo", "optim.lrr=1"], capsys)
    assert code == 2 and err.startswith("error:") and "optim.lrr" in err and len(err.strip().splitlines()) == 1
    code, err = run_cli(["--config", "demo", "data.batch_size=many"], capsys)
    assert code == 2 and "data.batch_size" in err and "Traceback" not in err
    code, err = run_cli(["--config", "demo", "train.precision=fp8"], capsys)
    assert code == 2 and "train.precision" in err
    code, err = run_cli(["--config", "demo", f"data.train={tmp_path}/nope-{{000..003}}.tar"], capsys)
    assert code == 2 and "data.train" in err and "not found" in err
    code, err = run_cli(["--config", "no-such-preset"], capsys)
    assert code == 2 and "--config" in err
    code, err = run_cli(["--config", "demo", f"train.out_dir={tmp_path}", "--resume", "latest"], capsys)
    assert code == 2 and "--resume" in err


def test_overrides_accept_scientific_notation():
    cfg = load_train_config(config_path("demo.yaml"), ["optim.lr=3e-4", "optim.eps=1E-8"])
    assert cfg.optim.lr == 3e-4 and cfg.optim.eps == 1e-8


def _split(batch: dict, parts: int) -> list[dict]:
    """A batch dict cut into ``parts`` equal micro-batches (tensors, lists and the targets dict)."""
    n = len(batch["key"]) // parts

    def cut(v, i):
        if isinstance(v, dict):
            return {k: cut(x, i) for k, x in v.items()}
        return v[i * n:(i + 1) * n]
    return [{k: cut(v, i) for k, v in batch.items()} for i in range(parts)]


def test_accumulation_gives_the_big_batch_step(demo_shards):
    """2 micro-batches of 4 with feature caching == one batch of 8: the same weights after a step.

    The model runs in eval mode (no dropout, BatchNorm on running statistics) so that a sample's
    features do not depend on which micro-batch it is in; a plain sum of per-micro-batch losses
    (negatives from 4 items only) is shown to differ. The step is plain SGD: AdamW's first step,
    ``lr * g / (|g| + eps)``, turns float round-off in gradients near ``eps`` into differences of
    order ``lr`` (the gradients themselves are compared exactly in the test below).
    """
    from disse.trainer.data.loader import eval_loader
    from disse.trainer.training.distributed import DistInfo
    from disse.trainer.training.loop import DualEncoder, StepContext, build_loss, build_model, train_step

    cfg = cfg_for(demo_shards, "unused", "optim.grad_clip=0", "optim.weight_decay=0")
    batch = next(iter(eval_loader(demo_shards / "train", batch_size=8)))

    def one_step(micro: list[dict]) -> dict:
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        raw = DualEncoder(model)
        sgd = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        ctx = StepContext(raw, raw, model, build_loss(cfg), sgd,
                          torch.amp.GradScaler("cpu", enabled=False), DistInfo(), "fp32", 0.0,
                          [p for p in model.parameters() if p.requires_grad], objective_for(cfg))
        train_step(ctx, micro)
        return {k: v.clone() for k, v in model.state_dict().items()}

    big = one_step([batch])
    acc = one_step(_split(batch, 2))
    for k in big:
        torch.testing.assert_close(acc[k], big[k], rtol=1e-4, atol=1e-6, msg=k)
    # without the cache each half only sees its own negatives: a different step
    naive = one_step(_split(batch, 2)[:1])
    assert any(not torch.allclose(naive[k], big[k], atol=1e-6) for k in big)


def test_accumulation_gradients_equal_the_big_batch_gradients(demo_shards):
    """4 micro-batches of 2 accumulate, parameter by parameter, the .grad of one batch of 8.

    Compared before any optimiser step (a zero-lr SGD leaves .grad as train_step built it), so
    AdamW's first step, which depends on the sign of each gradient only, cannot hide a wrong
    magnitude. The logit scales are checked by name: they are used by every micro-batch's replay,
    and must still get the big batch's gradient once, not accum_steps times. The physical heads
    are checked by name too: each replay must add only its own micro-batch's share of those terms.
    """
    from disse.trainer.data.loader import eval_loader
    from disse.trainer.training.distributed import DistInfo
    from disse.trainer.training.loop import DualEncoder, StepContext, build_loss, build_model, train_step

    cfg = cfg_for(demo_shards, "unused", "optim.grad_clip=0")
    batch = next(iter(eval_loader(demo_shards / "train", batch_size=8)))

    def grads(micro: list[dict]) -> tuple[dict, dict]:
        torch.manual_seed(0)
        model = build_model(cfg).eval()  # eval: a sample's features do not depend on its micro-batch
        raw = DualEncoder(model)
        params = [p for p in model.parameters() if p.requires_grad]
        ctx = StepContext(raw, raw, model, build_loss(cfg), torch.optim.SGD(params, lr=0.0),
                          torch.amp.GradScaler("cpu", enabled=False), DistInfo(), "fp32", 0.0, params,
                          objective_for(cfg))  # the demo config's own-caption pass, as the loop makes it
        _, terms, _ = train_step(ctx, micro)
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, terms

    big, big_terms = grads([batch])
    acc, acc_terms = grads(_split(batch, 4))
    assert set(acc) == set(big) and {"logit_scale_source", "logit_scale_space"} <= set(big)
    for name in ("logit_scale_source", "logit_scale_space"):
        assert big[name].abs() > 1e-4, (name, big[name])  # a real gradient, so a factor of 4 shows
        torch.testing.assert_close(acc[name], big[name], rtol=1e-4, atol=0.0,
                                   msg=lambda m, n=name: f"{n}: accumulated {acc[n].item():.6g}, "
                                                         f"big batch {big[n].item():.6g}\n{m}")
    phys = [n for n in big if n.startswith("phys_heads.")]
    assert phys and all(big[n].abs().max() > 0 for n in phys)
    # float32 round-off of a sum of 4 vs 1 is ~1e-5 of a tensor's largest gradient; a tensor whose
    # true gradient is ~0 (a bias before a normalisation) holds only round-off, hence the floor
    floor = 1e-6 * max(g.abs().max().item() for g in big.values())
    for name in big:
        torch.testing.assert_close(acc[name], big[name], rtol=1e-4,
                                   atol=max(1e-4 * big[name].abs().max().item(), floor),
                                   msg=lambda m, n=name: f"{n}\n{m}")
    # the reported loss and terms are those of the whole batch of 8 as well
    for k in big_terms:
        assert acc_terms[k] == pytest.approx(big_terms[k], rel=1e-5, abs=1e-7), k


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch):
    import sys as _sys

    from disse.trainer.training.logging_utils import RunLogger
    monkeypatch.setitem(_sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(SchemaError, match="log.wandb.*pip install wandb|pip install wandb.*log.wandb"):
        RunLogger(tmp_path, config={}, use_wandb=True)
    logger = RunLogger(tmp_path, config={})  # without wandb: the JSONL log only
    logger.write({"event": "x", "step": 1, "loss": float("nan")})
    logger.close()
    assert read_log(tmp_path / "log.jsonl")[0]["loss"] is None
