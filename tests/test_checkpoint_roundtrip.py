"""A checkpoint of either layout, written as the trainer (project) or the release (official) writes it, loads
through the one reader and gives the embeddings of the model that was saved, bit for bit.

Project: ``{"model", "config", "optimizer", "step", ...}`` through training's ``save_atomic`` (what main has
written since schema v4); loaded by ``Embedder.load``, ``load_model`` and the factory. Official: the release's
containers (``{"model": sd, "epoch"}`` and a DDP ``{"model_state_dict": {"module.*"}}``).
"""
from __future__ import annotations

import numpy as np
import torch

from disse.schemas.config import config_to_dict
from disse.trainer.evaluation.embedder import Embedder
from disse.trainer.evaluation.inference import OfficialEncoder, ProjectEncoder
from disse.trainer.model import physics
from disse.trainer.model.delsa import DELSA
from disse.trainer.model.factory import load_delsa, load_official
from disse.trainer.model.official import DISSEOfficial, OfficialConfig
from disse.trainer.model.weights import read_checkpoint
from disse.trainer.training.checkpoint import load_model, save_atomic
from disse.trainer.training.config import TrainConfig

from test_model import make_batch, small_config
from test_official_model import SMALL_HTSAT, _roberta_dir

CAPTIONS = ["A dog barks to the left in a small room.", "Rain falls far behind in a large hall."]


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        x, y = (np.asarray(v.detach() if torch.is_tensor(v) else v) for v in (a[k], b[k]))
        assert x.dtype == y.dtype and np.array_equal(x, y), k


def test_project_checkpoint_loads_to_the_same_embeddings(tmp_path):
    torch.manual_seed(3)
    cfg = TrainConfig(model=small_config())
    model = DELSA(cfg.model).eval()
    opt = torch.optim.AdamW(model.parameters())
    save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 7, "epoch": 0,
                 "config": config_to_dict(cfg)}, tmp_path / "latest.pt")
    batch = make_batch(3, seed=1)

    want = ProjectEncoder(model)
    with torch.no_grad():
        audio, text = want.audio(batch["waveform"], batch["iv"]), want.text(CAPTIONS)
        raw = model.encode_audio(batch["waveform"], batch["iv"])
    # the encoder's columns are the model's own outputs in real units
    assert np.array_equal(audio["est_direction"], physics.to_real_units(raw["phys"])["direction"].numpy())

    ckpt = read_checkpoint(tmp_path / "latest.pt")
    assert ckpt.kind == "project" and ckpt.entries["step"] == 7
    loaded = [Embedder.load(tmp_path / "latest.pt").model, load_model(tmp_path / "latest.pt")[0], load_delsa(ckpt)]
    for m in loaded:
        assert not m.training
        got = ProjectEncoder(m)
        with torch.no_grad():
            _same(audio, got.audio(batch["waveform"], batch["iv"]))
            _same(text, got.text(CAPTIONS))


def test_release_checkpoints_load_to_the_same_embeddings(tmp_path):
    rb = _roberta_dir(tmp_path / "roberta", full=False)
    cfg = OfficialConfig(roberta_dir=str(rb), text_max_length=24)
    torch.manual_seed(4)
    model = DISSEOfficial(cfg, audio_config_overrides=SMALL_HTSAT).eval()
    state = model.state_dict()
    torch.save({"model": state, "epoch": 20}, tmp_path / "release.pt")
    torch.save({"model_state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "ddp.pt")
    g = torch.Generator().manual_seed(2)
    w = (0.1 * torch.randn(2, 480000, generator=g)).to(torch.float32)
    iv = torch.randn(2, 6, 201, 1601, generator=g)

    want = OfficialEncoder(model)
    with torch.no_grad():
        audio, text = want.audio(w, iv), want.text(CAPTIONS)
    for name, epoch in (("release.pt", 20), ("ddp.pt", None)):
        ckpt = read_checkpoint(tmp_path / name)
        assert ckpt.kind == "official"
        got_model = load_official(ckpt, cfg, audio_config_overrides=SMALL_HTSAT)
        assert got_model.epoch == epoch and not got_model.training
        got = OfficialEncoder(got_model)
        with torch.no_grad():
            _same(audio, got.audio(w, iv))
            _same(text, got.text(CAPTIONS))
