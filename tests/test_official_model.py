"""The official DISSE model preset: state-dict layout of the release, strict loading, forward semantics.

No real weights: the reference's key table (../shared/reference/disse-official-release.md §1.3) is
written below as data; checkpoints are synthesised from it in each container format of the release.
"""
import math
from pathlib import Path

import pytest
import torch

from disse.schemas import SchemaError
from disse.trainer.model.hf import write_random_roberta
from disse.trainer.model.official import (DISSEOfficial, OfficialConfig, build_official, load_official_state,
                                          map_release_keys, read_official_state)

S = "audio_encoder.spatial_branch"
H = "audio_encoder.htsat.model.audio_encoder"
R = "text_encoder.roberta"


def reference_table(text_width: int = 768) -> dict[str, tuple[int, ...]]:
    """§1.3: every key outside the two Hugging Face backbones -> shape (``text_width`` = RoBERTa hidden)."""
    t: dict[str, tuple[int, ...]] = {}
    bn = lambda p: {f"{p}.weight": (16,), f"{p}.bias": (16,), f"{p}.running_mean": (16,),  # noqa: E731
                    f"{p}.running_var": (16,), f"{p}.num_batches_tracked": ()}
    for b in ("act", "rea"):
        t[f"{S}.{b}.cnn.0.1.weight"], t[f"{S}.{b}.cnn.0.1.bias"] = (16, 5, 3, 3), (16,)
        t.update(bn(f"{S}.{b}.cnn.0.2"))
        for i in range(1, 6):
            t[f"{S}.{b}.cnn.{i}.0.weight"], t[f"{S}.{b}.cnn.{i}.0.bias"] = (16, 16, 3, 3), (16,)
            t.update(bn(f"{S}.{b}.cnn.{i}.1"))
    for name, shape in (("mlp.0", (128, 2400)), ("mlp.2", (32, 128)), ("mlp.4", (44, 32))):
        t[f"{S}.{name}.weight"], t[f"{S}.{name}.bias"] = shape, shape[:1]
    for name, shape in (("audio_encoder.spatial_to_elsa.1", (192, 44)),
                        ("audio_encoder.audio_projection.0", (768, 960)),
                        ("audio_encoder.audio_projection.2", (512, 768)),
                        ("audio_space_head.1", (512, 512)), ("audio_source_head.1", (512, 512)),
                        ("text_encoder.proj1", (640, text_width)), ("text_encoder.proj2", (512, 640)),
                        ("text_space_head.1", (512, 512)), ("text_source_head.1", (512, 512))):
        t[f"{name}.weight"], t[f"{name}.bias"] = shape, shape[:1]
    t["logit_scale"] = ()
    for head in ("direction", "area", "distance", "reverb"):
        t[f"{head}_head.fc1.weight"], t[f"{head}_head.fc1.bias"] = (64, 512), (64,)
        k = 2 if head == "direction" else 1
        t[f"{head}_head.fc2.weight"], t[f"{head}_head.fc2.bias"] = (k, 64), (k,)
    return t


# Spot checks of the fused HTSAT subtree (ClapAudioModel, laion/clap-htsat-fused) and of roberta-base.
HTSAT_SPOTS = {
    f"{H}.patch_embed.proj.weight": (96, 1, 4, 4),
    f"{H}.patch_embed.norm.weight": (96,),
    f"{H}.patch_embed.mel_conv2d.weight": (96, 1, 4, 12),
    f"{H}.patch_embed.fusion_model.local_att.0.weight": (24, 96, 1, 1),
    f"{H}.patch_embed.fusion_model.global_att.5.running_var": (96,),
    f"{H}.layers.0.blocks.0.attention.self.relative_position_bias_table": (225, 4),
    f"{H}.layers.0.blocks.0.attention.self.relative_position_index": (64, 64),
    f"{H}.layers.2.blocks.5.intermediate.dense.weight": (1536, 384),
    f"{H}.layers.2.downsample.reduction.weight": (768, 1536),
    f"{H}.layers.3.blocks.1.attention.self.relative_position_bias_table": (225, 32),
    f"{H}.batch_norm.running_mean": (64,),
    f"{H}.norm.weight": (768,),
}
ROBERTA_SPOTS = {
    f"{R}.embeddings.word_embeddings.weight": (50265, 768),
    f"{R}.embeddings.position_embeddings.weight": (514, 768),
    f"{R}.embeddings.token_type_embeddings.weight": (1, 768),
    f"{R}.encoder.layer.11.output.dense.weight": (768, 3072),
    f"{R}.pooler.dense.weight": (768, 768),
}
HTSAT_TENSORS = 266          # state-dict entries of the fused ClapAudioModel (params + buffers)
ROBERTA_PARAMS = 124_645_632  # reference §1.3
OUTSIDE_PARAMS = 3_481_010    # reference §1.3: parameters outside the two backbones

SMALL_HTSAT = {"depths": [1, 1, 1, 1], "num_attention_heads": [1, 2, 2, 4]}  # same widths, fewer blocks


def _roberta_dir(path: Path, *, full: bool) -> Path:
    from test_clap_checkpoint import _toy_roberta_dir

    if full:  # roberta-base's config.json values
        return write_random_roberta(path, vocab_size=50265, layer_norm_eps=1e-5)
    return _toy_roberta_dir(path)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    return _roberta_dir(tmp_path_factory.mktemp("roberta"), full=False)


@pytest.fixture(scope="module")
def model(toy_dir):
    torch.manual_seed(0)
    return DISSEOfficial(OfficialConfig(roberta_dir=str(toy_dir), text_max_length=24),
                         audio_config_overrides=SMALL_HTSAT).eval()


def test_full_size_state_dict_equals_the_reference_table(tmp_path):
    with torch.device("meta"):  # full size, no memory: only names and shapes are checked
        m = DISSEOfficial(OfficialConfig(roberta_dir=str(_roberta_dir(tmp_path / "rb", full=True))))
    sd = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    table = reference_table()
    outside = {k: s for k, s in sd.items() if not k.startswith((H + ".", R + "."))}
    assert outside == table
    assert sd[f"{S}.act.cnn.0.2.num_batches_tracked"] == () and m.state_dict()["logit_scale"].dim() == 0
    assert {k: sd[k] for k in HTSAT_SPOTS} == HTSAT_SPOTS
    assert {k: sd[k] for k in ROBERTA_SPOTS} == ROBERTA_SPOTS
    assert sum(k.startswith(H + ".") for k in sd) == HTSAT_TENSORS
    assert not any(k.startswith("audio_encoder.htsat.") and not k.startswith(H + ".") for k in sd)
    assert sum(p.numel() for n, p in m.named_parameters() if n.startswith(R + ".")) == ROBERTA_PARAMS
    assert sum(p.numel() for n, p in m.named_parameters() if not n.startswith((H, R))) == OUTSIDE_PARAMS
    assert isinstance(m.text_encoder.reru, torch.nn.ReLU) and type(m.direction_head).__name__ == \
        "RegressionHead_for_physicalValue"


def _release_state(model: DISSEOfficial, seed: int) -> dict[str, torch.Tensor]:
    """A state dict in the release layout: the §1.3 keys from the table, backbones from another init."""
    g = torch.Generator().manual_seed(seed)
    table = reference_table(model.text_encoder.proj1.in_features)
    state = {}
    for k, shape in table.items():
        state[k] = (torch.randint(0, 100, shape, generator=g) if k.endswith("num_batches_tracked")
                    else torch.rand(shape, generator=g) + 0.5 if k.endswith("running_var")
                    else torch.randn(shape, generator=g) * 0.05)
    for k, v in model.state_dict().items():
        if k.startswith((H + ".", R + ".")):
            state[k] = v.clone() if not v.is_floating_point() else torch.randn(v.shape, generator=g) * 0.05
    return state


CONTAINERS = {
    "research": lambda sd: {"model": sd, "opt": {"state": {}}, "epoch": 20},
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 20},
    "model_state_dict": lambda sd: {"model_state_dict": sd},
    "bare": lambda sd: sd,
    "ddp": lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
}


@pytest.mark.parametrize("container", sorted(CONTAINERS))
def test_release_checkpoint_loads_strictly_in_every_container(model, toy_dir, tmp_path, container):
    state = _release_state(model, seed=1)
    path = tmp_path / "disse_epoch20.pt"
    torch.save(CONTAINERS[container](state), path)
    loaded = build_official(OfficialConfig(roberta_dir=str(toy_dir), text_max_length=24), checkpoint=str(path),
                            audio_config_overrides=SMALL_HTSAT)
    got = loaded.state_dict()
    assert set(got) == set(state)
    assert all(torch.equal(got[k], state[k]) for k in state)
    assert loaded.epoch == (None if container in ("bare", "model_state_dict", "ddp") else 20)
    assert not loaded.training
    # and it round-trips: what this model saves loads back the same
    torch.save({"model": got}, tmp_path / "again.pt")
    again, _ = read_official_state(tmp_path / "again.pt")
    assert all(torch.equal(again[k], v) for k, v in got.items())


def test_mismatch_is_one_error_listing_missing_unexpected_and_shapes(model, tmp_path):
    state = _release_state(model, seed=2)
    del state["direction_head.fc2.bias"]
    state["audio_encoder.extra.weight"] = torch.zeros(3)
    state["logit_scale"] = torch.zeros(2)
    torch.save({"model": state}, tmp_path / "bad.pt")
    sd, _ = read_official_state(tmp_path / "bad.pt")
    with pytest.raises(SchemaError) as err:
        load_official_state(model, sd, source=str(tmp_path / "bad.pt"))
    msg = str(err.value)
    assert "1 missing: direction_head.fc2.bias" in msg
    assert "1 unexpected: audio_encoder.extra.weight" in msg
    assert "logit_scale (2,) != model ()" in msg and "bad.pt" in msg


class Custom:  # a class inside a checkpoint: only a full unpickle (arbitrary code) could rebuild it
    pass


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"model": {"w": torch.zeros(1)}, "extra": Custom()}, tmp_path / "evil.pt")
    with pytest.raises(SchemaError, match="weights_only"):
        read_official_state(tmp_path / "evil.pt")


def test_transformers_version_mapping_of_derived_buffers(model):
    """Buffers transformers versions save or recompute differently (4.52.4 vs installed) load either way."""
    state = _release_state(model, seed=3)
    own = model.state_dict()
    idx = f"{H}.layers.0.blocks.0.attention.self.relative_position_index"
    older = dict(state, **{f"{R}.embeddings.position_ids": torch.arange(100)[None]})  # pre-4.31 RoBERTa
    newer = {k: v for k, v in state.items() if k != idx}                               # index recomputed
    for variant in (older, newer):
        mapped, notes = map_release_keys(variant, own)
        assert set(mapped) == set(own) and notes
    assert torch.equal(map_release_keys(newer, own)[0][idx], own[idx])
    # a real (learned) key is never filled in from the model
    with pytest.raises(SchemaError, match="missing"):
        load_official_state(model, {k: v for k, v in state.items() if k != "logit_scale"})


def _audio(b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"i_act": torch.randn(b, 3, 201, 1601, generator=g), "i_rea": torch.randn(b, 3, 201, 1601, generator=g),
            "omni_48k": 0.1 * torch.randn(b, 480000, generator=g)}


def test_forward_semantics(model):
    audio = _audio()
    with torch.no_grad():
        a = model(audio, ["rain falls", "a dog barks"])
        b = model(audio, ["a bell rings far away", "silence"])
        t = model.encode_text(["rain falls", "a dog barks"])
        direction = model.direction_head(a["audio_space_emb"])
    for k in ("audio_space_emb", "audio_source_emb", "direction", "area"):  # audio ignores the text
        assert torch.equal(a[k], b[k])
    assert torch.allclose(a["text_space_emb"], t["text_space_emb"], atol=1e-6)  # text ignores the audio
    shapes = {k: tuple(v.shape) for k, v in a.items()}
    assert shapes == {"audio_space_emb": (2, 512), "audio_source_emb": (2, 512), "text_space_emb": (2, 512),
                      "text_source_emb": (2, 512), "direction": (2, 2), "area": (2, 1), "distance": (2, 1),
                      "reverb": (2, 1), "logit_scale": (), "tau": ()}
    assert torch.equal(a["direction"], direction)  # physical heads read the raw spatial embedding
    assert not torch.allclose(a["audio_space_emb"].norm(dim=1), torch.ones(2))  # raw, not normalised
    assert math.isclose(a["logit_scale"].item(), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
        out = model(audio, ["x", "y"])
        model.logit_scale.fill_(math.log(1 / 0.07))
    assert math.isclose(out["logit_scale"].item(), 100.0, rel_tol=1e-5) and math.isclose(out["tau"].item(), 0.01,
                                                                                         rel_tol=1e-5)
    with pytest.raises(ValueError, match="201, 1601"):
        model.encode_audio({**audio, "i_act": audio["i_act"][:, :, :200]})


def test_htsat_input_is_the_release_processor_call(model):
    feats = model.audio_encoder.htsat.features(_audio()["omni_48k"])
    assert tuple(feats.shape) == (2, 1, 1001, 64)  # tests/test_official_train.py: equal to the extractor's


def test_text_is_padded_to_the_longest_caption(model):
    tokens = model.text_encoder.tokenize(["a", "a longer one"])
    assert 2 < tokens["input_ids"].shape[1] < 24 and tokens["attention_mask"][0].sum() < tokens["attention_mask"][1].sum()
    assert tuple(model.text_encoder.tokenize(["a " * 40])["input_ids"].shape) == (1, 24)  # cut at max_length
    with pytest.raises(TypeError):
        model.text_encoder.tokenize("not a list")


def test_single_modality_models_drop_the_other_side(model, toy_dir, tmp_path):
    state = _release_state(model, seed=4)
    torch.save({"model": state}, tmp_path / "full.pt")
    audio_only = build_official(OfficialConfig(modalities=["audio"]), checkpoint=str(tmp_path / "full.pt"),
                                audio_config_overrides=SMALL_HTSAT)
    assert audio_only.text_encoder is None and not any(k.startswith("text_") for k in audio_only.state_dict())
    assert torch.equal(audio_only.state_dict()["direction_head.fc2.bias"], state["direction_head.fc2.bias"])
    text_only = build_official(OfficialConfig(roberta_dir=str(toy_dir), text_max_length=24, modalities=["text"]),
                               checkpoint=str(tmp_path / "full.pt"))
    assert text_only.audio_encoder is None and text_only.direction_head is None
    assert set(text_only.state_dict()) == {k for k in state if k.startswith("text_") or k == "logit_scale"}
    with pytest.raises(SchemaError, match="roberta_dir"):
        DISSEOfficial(OfficialConfig())
    with pytest.raises(SchemaError, match="modalities"):
        DISSEOfficial(OfficialConfig(modalities=["video"]))


def test_packaged_official_config_parses(tmp_path):
    from disse.trainer.model.official import load_official_config

    cfg = load_official_config(None, ["model.official.roberta_dir=/data/roberta-base"])
    assert cfg.text_max_length == 512 and cfg.strict and cfg.modalities == ["audio", "text"]
    assert cfg.roberta_dir == "/data/roberta-base" and cfg.checkpoint is None
    (tmp_path / "bad.yaml").write_text("model:\n  preset: delsa\n")
    with pytest.raises(SchemaError, match="preset"):
        load_official_config(tmp_path / "bad.yaml")
    with pytest.raises(SchemaError, match="strictness|strict"):
        load_official_config(None, ["model.official.strictness=false"])
