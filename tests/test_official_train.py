"""disse-train on the official preset (DISSEOfficial) at tiny sizes on CPU: the same loop, the published objective,
exact resume, the release-layout export, fine-tuning with frozen parts, the torch front end, clear errors."""
from __future__ import annotations

import math

import pytest
import torch

from disse.configs import config_path
from disse.schemas import SchemaError
from disse.trainer.cli.train import main as cli_main
from disse.trainer.data.loader import eval_loader, resolve_shards
from disse.trainer.evaluation.inference import official_inputs
from disse.trainer.model.official import (DISSEOfficial, OfficialConfig, build_official, load_official_state,
                                          official_htsat_inputs, physical_units, read_official_state)
from disse.trainer.training.config import load_train_config
from disse.trainer.training.loop import train
from disse.trainer.training.losses import LossConfig, multi_positive_contrastive
from disse.trainer.training.official import OfficialDual, OfficialLoss, OfficialObjective, target_statistics

from test_clap_checkpoint import _toy_roberta_dir

TINY = {"patch_embeds_hidden_size": 16, "hidden_size": 128, "depths": [1, 1, 1, 1], "num_attention_heads": [1, 1, 2, 2]}
TINY_YAML = "{patch_embeds_hidden_size: 16, hidden_size: 128, depths: [1, 1, 1, 1], num_attention_heads: [1, 1, 2, 2]}"


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    return _toy_roberta_dir(tmp_path_factory.mktemp("roberta"))


def cfg_for(demo, out, roberta, *extra):
    return load_train_config(config_path("official.yaml"), [
        f"data.train={demo / 'train'}", f"train.out_dir={out}", f"model.official.roberta_dir={roberta}",
        f"model.official.htsat_overrides={TINY_YAML}", "model.official.text_max_length=96", "data.batch_size=4",
        "data.num_workers=0", "log.progress=false", "log.every_steps=1", "train.threads=2", "optim.warmup_steps=1",
        "optim.lr=1e-4", "train.save_every_steps=0", *extra])


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_resume_mid_epoch_equals_straight_run_and_export_loads_strictly(demo_shards, roberta, tmp_path):
    # 16 samples at batch 4: 4 steps an epoch, so stopping after 1 of 2 steps is mid-epoch
    straight = cfg_for(demo_shards, tmp_path / "a", roberta, "train.max_steps=2")
    train(straight)
    part = cfg_for(demo_shards, tmp_path / "b", roberta, "train.max_steps=2", "train.stop_after=1")
    assert train(part).step == 1
    rest = cfg_for(demo_shards, tmp_path / "b", roberta, "train.max_steps=2")
    assert train(rest, resume="latest").step == 2
    a, b = _weights(tmp_path / "a/checkpoints/latest.pt"), _weights(tmp_path / "b/checkpoints/latest.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]

    # the release layout: {"model_state_dict", "epoch", "target_stats"}, release key names, strict load
    raw = torch.load(tmp_path / "a/checkpoints/latest_release.pt", map_location="cpu", weights_only=True)
    assert set(raw) == {"model_state_dict", "epoch", "target_stats"} and raw["epoch"] == 0
    state, entries = read_official_state(tmp_path / "a/checkpoints/latest_release.pt")
    fresh = DISSEOfficial(OfficialConfig(roberta_dir=str(roberta), text_max_length=96), audio_config_overrides=TINY)
    load_official_state(fresh, state, strict=True)
    fresh.eval()
    trained = DISSEOfficial(OfficialConfig(roberta_dir=str(roberta), text_max_length=96), audio_config_overrides=TINY)
    trained.load_state_dict(a)
    trained.eval()
    batch = next(iter(eval_loader(demo_shards / "val", 2, preset="foa")))
    with torch.no_grad():
        x = official_inputs(batch, "cpu")
        for m in (fresh, trained):
            m.out = {**m.encode_audio(x), **m.encode_text(batch["caption"])}
    assert all(torch.equal(fresh.out[k], trained.out[k]) for k in fresh.out)
    # statistics of the training split travel with it: the heads in m², m, ms
    stats = read_official_state(tmp_path / "a/checkpoints/latest_release.pt")[1]["target_stats"]
    built = build_official(OfficialConfig(roberta_dir=str(roberta), text_max_length=96, htsat_overrides=TINY),
                           checkpoint=str(tmp_path / "a/checkpoints/latest_release.pt"))
    units = physical_units(fresh.out, built.target_stats)
    assert torch.allclose(units["area_m2"], fresh.out["area"].squeeze(-1).double() * stats[0, 1] + stats[0, 0])
    with pytest.raises(SchemaError, match="target_stats"):
        physical_units(fresh.out, None, source="disse_epoch20.pt")


def test_published_objective_learns_one_batch(demo_shards, roberta):
    """Five optimiser steps of the published objective on one batch lower its loss (every term is wired)."""
    torch.manual_seed(0)
    model = DISSEOfficial(OfficialConfig(roberta_dir=str(roberta), text_max_length=96), audio_config_overrides=TINY)
    model.target_stats = target_statistics(resolve_shards(str(demo_shards / "train")))
    objective, net, loss_fn = OfficialObjective(source_text=True), OfficialDual(model), OfficialLoss(LossConfig())
    batch = next(iter(eval_loader(demo_shards / "train", 4, preset="foa")))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    inputs = objective.micro_inputs(model, batch, torch.device("cpu"))
    meta = objective.micro_meta(model, batch, torch.device("cpu"))
    assert meta["targets_z"]["direction"].shape == (4, 2)  # [az, el] in radians
    assert torch.allclose(meta["targets_z"]["direction"][:, 0], torch.deg2rad(batch["targets"]["azimuth_deg"]))
    losses = []
    model.train()
    for _ in range(5):
        out = net(*inputs)
        loss, terms = loss_fn(out["audio"], out["text"], meta, out["scales"]["logit"])
        assert {"source", "space", "direction", "area", "distance", "t30", "scale"} <= set(terms)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.5, losses
    nophys = OfficialLoss(LossConfig(physics=False))(out["audio"], out["text"], meta, out["scales"]["logit"])[1]
    assert "direction" not in nophys and math.isclose(float(nophys["total"]), float(nophys["source"] + nophys["space"]),
                                                      rel_tol=1e-6)
    # the project preset's disentanglement penalties apply to the official model by the same fields
    hsic = OfficialLoss(LossConfig(physics=False, independence_weight=1.0, source_independence_weight=2.0,
                                   text_source_independence_weight=3.0, room_independence_weight=4.0,
                                   source_caption_distill_weight=5.0))(
        out["audio"], out["text"], meta, out["scales"]["logit"])[1]
    penalties = ("independence", "source_independence", "text_source_independence", "room_independence",
                 "source_caption_distill")
    assert all(0.0 < float(hsic[name]) <= 1.0 for name in penalties), {n: float(hsic[n]) for n in penalties}
    assert math.isclose(float(hsic["total"]), float(hsic["source"] + hsic["space"] + hsic["independence"]
                                                     + 2.0 * hsic["source_independence"]
                                                     + 3.0 * hsic["text_source_independence"]
                                                     + 4.0 * hsic["room_independence"]
                                                     + 5.0 * hsic["source_caption_distill"]), rel_tol=1e-5)
    # full_caption_source_grad false: the source pair is two contrasts, the audio side against the own captions
    split = OfficialLoss(LossConfig(physics=False, full_caption_source_grad=False))(
        out["audio"], out["text"], meta, out["scales"]["logit"])[1]
    norm = lambda x: torch.nn.functional.normalize(x.float(), dim=-1)  # noqa: E731
    scale = torch.exp(torch.clamp(out["scales"]["logit"].float(), max=math.log(100.0)))
    ids = meta["source_id"]
    expected = (multi_positive_contrastive(norm(out["audio"]["source"]), norm(out["text"]["source_of_source_text"]),
                                           ids, scale)
                + multi_positive_contrastive(norm(out["audio"]["source"]), norm(out["text"]["source"]), ids, scale))
    assert math.isclose(float(split["source"].detach()), float(expected.detach()), rel_tol=1e-5)
    # the clips' own captions went through the text source head: the distillation's target
    model.eval()
    with torch.no_grad():
        fresh = net(*inputs)["text"]["source_of_source_text"]
        own = model.encode_text(list(batch["source_text"]))["text_source_emb"]
    torch.testing.assert_close(fresh, own, rtol=1e-4, atol=1e-5)


def test_fine_tuning_a_release_file_keeps_every_frozen_tensor(demo_shards, roberta, tmp_path):
    torch.manual_seed(5)
    start = DISSEOfficial(OfficialConfig(roberta_dir=str(roberta), text_max_length=96), audio_config_overrides=TINY)
    torch.save({"model_state_dict": start.state_dict(), "epoch": 20}, tmp_path / "disse_epoch20.pt")
    cfg = cfg_for(demo_shards, tmp_path / "ft", roberta, "train.max_steps=1",
                  f"model.official.checkpoint={tmp_path / 'disse_epoch20.pt'}",
                  "train.freeze=[audio_encoder.htsat, text_encoder, audio_encoder.spatial_branch]")
    train(cfg)
    after = _weights(tmp_path / "ft/checkpoints/latest.pt")
    before = start.state_dict()
    frozen = ("audio_encoder.htsat.", "text_encoder.", "audio_encoder.spatial_branch.")
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith(frozen))  # BN statistics included
    assert not torch.equal(after["audio_encoder.audio_projection.0.weight"],
                           before["audio_encoder.audio_projection.0.weight"])


def test_torch_front_end_equals_the_release_call_and_is_batch_independent(demo_shards):
    batch = next(iter(eval_loader(demo_shards / "val", 2, preset="foa")))
    x = official_inputs(batch, "cpu")
    assert x["i_act"].shape == x["i_rea"].shape == (2, 3, 201, 1601) and x["omni_48k"].shape == (2, 480000)
    one = official_inputs({"foa": batch["foa"][1:], "w_scale": batch["w_scale"][1:]}, "cpu")
    assert torch.allclose(one["i_act"][0], x["i_act"][1], atol=1e-5)
    from disse.trainer.model.official import ClapHTSAT
    mel = ClapHTSAT(TINY).features(x["omni_48k"])
    ref = official_htsat_inputs(x["omni_48k"])["input_features"]
    assert mel.shape == ref.shape == (2, 1, 1001, 64)
    # float32 power in torch vs the extractor's numpy: at most hundredths of a dB, at -90 dB cells
    diff = (mel - ref).abs()
    assert float(diff.max()) < 0.05 and float(diff.mean()) < 1e-3, (float(diff.max()), float(diff.mean()))


def test_longest_padding_gives_the_512_padded_embeddings(roberta):
    torch.manual_seed(1)
    model = DISSEOfficial(OfficialConfig(roberta_dir=str(roberta), text_max_length=96, modalities=["text"])).eval()
    texts = ["a dog barks.", "the sound of rain far away in a large echoey room."]
    enc = model.text_encoder
    short = enc.tokenize(texts)
    assert short["input_ids"].shape[1] < 96
    padded = enc.tokenizer(texts, padding="max_length", truncation=True, max_length=96, return_tensors="pt")
    with torch.no_grad():
        a = model.encode_text(short)
        b = model.encode_text({"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]})
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(args)
    return exc.value.code, capsys.readouterr().err.strip().splitlines()


def test_bad_inputs_are_one_line_errors(demo_shards, roberta, tmp_path, capsys):
    base = ["--config", "official", f"data.train={demo_shards / 'train'}", f"train.out_dir={tmp_path / 'r'}",
            f"model.official.roberta_dir={roberta}", f"model.official.htsat_overrides={TINY_YAML}",
            "model.official.text_max_length=96", "log.progress=false"]
    # a project checkpoint where the release layout is wanted
    torch.save({"model": {"audio.x": torch.zeros(1)}, "config": {"model": {}}}, tmp_path / "proj.pt")
    code, err = run_cli(base + [f"model.official.checkpoint={tmp_path / 'proj.pt'}"], capsys)
    assert code == 2 and len(err) == 1 and "proj.pt" in err[0] and "model.official.checkpoint" in err[0], err
    # a release file given to the project preset
    torch.save({"model_state_dict": {"logit_scale": torch.zeros(())}}, tmp_path / "rel.pt")
    code, err = run_cli(["--config", "demo", f"data.train={demo_shards / 'train'}", f"train.out_dir={tmp_path / 'p'}",
                         "--resume", str(tmp_path / "rel.pt")], capsys)
    assert code == 2 and len(err) == 1 and "rel.pt" in err[0] and "official" in err[0], err
    # missing LAION-CLAP file; a RoBERTa folder without weights
    code, err = run_cli(base + [f"model.official.htsat_init={tmp_path / 'nope.pt'}"], capsys)
    assert code == 2 and len(err) == 1 and "nope.pt" in err[0] and "htsat_init" in err[0], err
    code, err = run_cli(base + ["model.official.roberta_init=true"], capsys)
    assert code == 2 and len(err) == 1 and "model.safetensors" in err[0] and "roberta_dir" in err[0], err
    assert not (tmp_path / "r" / "checkpoints").exists()  # nothing half-written


def test_study_script_runs_end_to_end_and_writes_its_table(demo_shards, tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from official_study import main as study

    study(["--shards", str(demo_shards), "--steps", "1", "--seeds", "0", "--batch-size", "4", "--workers", "0",
           "--out", str(tmp_path / "study"), "train.threads=2"])
    table = (tmp_path / "study" / "study.md").read_text()
    assert "| SPA t2a R@1 |" in table and "| area MAE (m²) |" in table and "official (DISSEOfficial)" in table
