"""DELSA model: shapes and normalisation, gradients to every trainable parameter, text modes, freezing,
the FFT spectrogram, configs, and the physics conventions. Small random-init audio sizes keep it fast."""
import dataclasses
import math
from dataclasses import dataclass, field

import pytest
import torch
import yaml

from disse.configs import config_path
from disse.schemas import SchemaError
from disse.schemas.config import load_config
from disse.trainer.model import physics
from disse.trainer.model.audio_encoder import FFTSpectrogram, HTSATBranch
from disse.trainer.model.htsat import LAION_AUDIO_CFG, LogMel
from disse.trainer.model.spatial import ROOM_STATS_DIM
from disse.trainer.training.losses import DELSALoss, LossConfig
from disse.trainer.model.delsa import DELSA, AudioConfig, HTSATConfig, ModelConfig, SpatialConfig, TextConfig
from disse.trainer.model.text_encoder import TextEncoder
from laion_reference import laion_clap_module, laion_htsat, needs_laion_clap

SMALL_HTSAT = dict(spec_size=64, mel_bins=16, n_fft=1024, hop_size=1920, embed_dim=16, depths=[1, 1, 1],
                   num_heads=[1, 1, 2], drop_path_rate=0.0)


def small_config(**text) -> ModelConfig:
    return ModelConfig(
        audio=AudioConfig(htsat=HTSATConfig(**SMALL_HTSAT),
                          spatial=SpatialConfig(channels=[4, 4, 8, 8, 8, 8], input_pool=[4, 1], mlp_hidden=32),
                          fusion_hidden=[64]),
        text=TextConfig(num_layers=1, max_length=32, **text),
        shared_dim=64, source_dim=32, space_dim=16, head_hidden=32, phys_hidden=16)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DELSA(small_config())


def make_batch(b: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    az = torch.rand(b, generator=g) * 360 - 180
    el = torch.rand(b, generator=g) * 100 - 50
    return {
        "waveform": 0.1 * torch.randn(b, 480000, generator=g),
        "iv": 0.3 * torch.randn(b, 6, 1001, 64, generator=g),
        "source_text": [f"a {w} barks" for w in ("dog", "cat", "dog", "seal", "fox", "owl")[:b]],
        "space_text": [f"far to the {w} in a large hall" for w in ("left", "right", "front", "left", "back", "top")[:b]],
        "caption": [f"caption number {i}: something happens somewhere" for i in range(b)],
        "source_id": torch.tensor([0, 1, 0, 2, 3, 4][:b]),
        "space_id": torch.tensor([0, 1, 2, 0, 3, 4][:b]),
        "targets": {"azimuth_deg": az, "elevation_deg": el, "direction": physics.direction_from_angles(az, el),
                    "area_m2": torch.rand(b, generator=g) * 150 + 10,
                    "distance_m": torch.rand(b, generator=g) * 3 + 0.5,
                    "t30_ms": torch.rand(b, generator=g) * 1500 + 100},
    }


def test_encoders_give_normalised_embeddings_and_physical_predictions(model):
    batch = make_batch(3)
    model.eval()
    with torch.no_grad():
        audio = model.encode_audio(batch["waveform"], batch["iv"])
        text = model.encode_text(model.tokenize(batch["source_text"]))
    assert audio["source"].shape == (3, 32) and audio["space"].shape == (3, 16)
    assert text["source"].shape == (3, 32) and text["space"].shape == (3, 16)
    for e in (audio["source"], audio["space"], text["source"], text["space"], audio["phys"]["direction"]):
        assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    for k in ("area", "distance", "t30"):
        assert audio["phys"][k].shape == (3,)
    real = physics.to_real_units(audio["phys"])
    assert (real["area_m2"] > 0).all() and (real["t30_ms"] > 0).all() and real["direction"].shape == (3, 3)
    # Embeddings depend on the input (not a constant head).
    assert not torch.allclose(audio["source"][0], audio["source"][1])


def test_compact_batch_dtypes_give_the_same_embeddings(model):
    """Loaders ship W as int16 PCM and iv as float16: the model must see exactly their float values."""
    batch = make_batch(2, seed=3)
    pcm = torch.clamp(torch.round(batch["waveform"] * 32768), -32768, 32767).to(torch.int16)
    iv16 = batch["iv"].half()
    model.eval()
    with torch.no_grad():
        compact = model.encode_audio(pcm, iv16)
        full = model.encode_audio(pcm.float() / 32768, iv16.float())
    for k in ("source", "space"):
        assert torch.equal(compact[k], full[k])
    with pytest.raises(TypeError, match="int16 PCM or floating point"):
        model.encode_audio(pcm.int(), iv16)


def test_gradients_reach_every_trainable_parameter(model):
    batch = make_batch(4, seed=1)
    model.train()
    model.zero_grad(set_to_none=True)
    audio = model.encode_audio(batch["waveform"], batch["iv"])
    text = model.encode_batch_text(batch)
    total, terms = DELSALoss(LossConfig())(audio, text, batch, model.logit_scale_source, model.logit_scale_space)
    assert torch.isfinite(total)
    total.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in trainable if p.grad is None or not torch.any(p.grad != 0)]
    assert no_grad == []
    assert any(n.startswith("text.backbone.") for n, _ in trainable)  # the text backbone trains too
    assert any(n.startswith("audio.source.htsat.audio_encoder.layers.") for n, _ in trainable)
    # every HTSAT parameter is on the embedding path (no AudioSet classifier); the mel filters are a
    # constant buffer, not a parameter
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("audio.source."))
    assert "audio.source.front.mel" in dict(model.named_buffers())


def test_text_input_modes(model):
    batch = make_batch(3, seed=2)
    model.eval()
    with torch.no_grad():
        sep = model.encode_batch_text(batch)
        want_src = model.encode_text(model.tokenize(batch["source_text"]))["source"]
        want_spa = model.encode_text(model.tokenize(batch["space_text"]))["space"]
        assert torch.allclose(sep["source"], want_src, atol=1e-5)
        assert torch.allclose(sep["space"], want_spa, atol=1e-5)
        saved = model.cfg
        model.cfg = dataclasses.replace(saved, text_input="full")
        try:
            full = model.encode_batch_text(batch)
            assert model.text_pairs(batch) == (batch["caption"], batch["caption"])
        finally:
            model.cfg = saved
        want = model.encode_text(model.tokenize(batch["caption"]))
    assert torch.allclose(full["source"], want["source"], atol=1e-5)
    assert torch.allclose(full["space"], want["space"], atol=1e-5)
    assert not torch.allclose(full["source"], sep["source"], atol=1e-3)


@pytest.mark.parametrize("pooling", ["mean", "tokens"])
def test_frozen_text_backbone_is_cached_and_exact(pooling):
    torch.manual_seed(0)
    enc = TextEncoder(TextConfig(num_layers=1, freeze_backbone=True, pooling=pooling), out_dim=8)
    assert not any(p.requires_grad for p in enc.backbone.parameters())
    calls = []
    enc.backbone.register_forward_hook(lambda *a: calls.append(1))
    from disse.trainer.model.text_encoder import Tokenizer

    tok = Tokenizer(enc.cfg)
    enc.train()
    out1 = enc(tok(["rain on a roof", "a bell rings twice slowly", "rain on a roof"]))
    assert len(calls) == 1 and len(enc._cache) == 2
    out2 = enc(tok(["a bell rings twice slowly", "rain on a roof"]))  # other padding, same texts
    assert len(calls) == 1  # served from the cache
    assert torch.allclose(out2[0], out1[1], atol=1e-6) and torch.allclose(out2[1], out1[0], atol=1e-6)
    with torch.no_grad():
        t = tok(["a bell rings twice slowly"])
        out = enc._backbone_out(t["input_ids"], t["attention_mask"])
        direct = enc.projection(enc._token_pool(out, t["attention_mask"]) if pooling == "tokens" else out)
    assert torch.allclose(direct[0], out2[0], atol=1e-5)
    out2.sum().backward()  # the projection still learns
    assert enc.projection.weight.grad is not None


def test_frozen_htsat_has_no_gradient_and_is_deterministic_in_train_mode():
    branch = HTSATBranch(HTSATConfig(**SMALL_HTSAT, freeze=True, spec_augment=True)).train()
    assert not any(p.requires_grad for p in branch.parameters())
    x = 0.1 * torch.randn(2, 480000)
    a, b = branch(x), branch(x)
    assert not a.requires_grad and torch.equal(a, b)  # no SpecAugment, BN statistics untouched


@needs_laion_clap
def test_fft_spectrogram_equals_torchlibrosa():
    Spectrogram = laion_clap_module("htsat").Spectrogram  # torchlibrosa's, as HTSAT uses it
    ref = Spectrogram(n_fft=1024, hop_length=480, win_length=1024, window="hann", center=True,
                      pad_mode="reflect", freeze_parameters=True)
    x = torch.randn(2, 48000)
    want = ref(x)
    got = FFTSpectrogram(1024, 480)(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * want.max().item())


@needs_laion_clap
def test_log_mel_front_end_equals_laion_clap():
    """The torch front end (FFT power, Slaney mel from transformers, 10 log10) equals laion-clap's
    torchlibrosa Spectrogram + LogmelFilterBank (librosa's filterbank) on HTSAT-tiny's settings."""
    ref = laion_htsat(HTSATConfig(preset="tiny")).eval()
    x = 0.1 * torch.randn(2, 96000)
    with torch.no_grad():
        want = ref.logmel_extractor(ref.spectrogram_extractor(x))
        got = LogMel(LAION_AUDIO_CFG)(x)
    assert torch.allclose(LogMel(LAION_AUDIO_CFG).mel, ref.logmel_extractor.melW, atol=1e-6)
    assert got.shape == want.shape == (2, 1, 201, 64)
    assert torch.allclose(got, want, atol=1e-3)  # dB


@needs_laion_clap
@pytest.mark.parametrize("sizes", ["demo", "small"])
def test_htsat_equals_laion_clap_with_the_same_weights(sizes):
    """DISSE's HTSAT (ClapAudioModel) and laion-clap's, same random weights, same embedding, also where a
    stage is smaller than the attention window (the demo's last stage; laion-clap shrinks the window)."""
    kw = SMALL_HTSAT if sizes == "small" else yaml.safe_load(open(config_path("demo.yaml")))["model"]["audio"]["htsat"]
    cfg = HTSATConfig(**kw)
    torch.manual_seed(3)
    ref = laion_htsat(cfg).eval()
    ours = HTSATBranch(cfg).eval()
    ours.load_state_dict({"htsat." + k: v for k, v in ref.state_dict().items()})  # a pre-swap DISSE layout
    x = 0.1 * torch.randn(2, 480000)
    with torch.no_grad():
        want, got = ref({"waveform": x})["embedding"], ours(x)
    assert torch.allclose(got, want, atol=1e-5 * want.abs().max().item())


def test_spec_augment_runs_in_training_only():
    branch = HTSATBranch(HTSATConfig(**SMALL_HTSAT, spec_augment=True))
    x = 0.1 * torch.randn(2, 480000)
    branch.eval()
    with torch.no_grad():
        a, b = branch(x), branch(x)
    assert torch.equal(a, b)
    branch.train()
    torch.manual_seed(0)
    with torch.no_grad():
        c = branch(x)
    torch.manual_seed(1)
    with torch.no_grad():
        d = branch(x)
    assert not torch.allclose(c, d)  # random stripes differ between draws


def test_audio_encoder_init_is_seeded():
    from disse.trainer.model.audio_encoder import AudioEncoder

    cfg = small_config().audio
    torch.manual_seed(5)
    a = AudioEncoder(cfg, 32)
    torch.manual_seed(5)
    b = AudioEncoder(cfg, 32)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("change, field_name", [
    (dict(num_heads=[1, 2]), "num_heads"),
    (dict(hop_size=480), "hop_size"),            # 1001 frames do not fit a 64 x 64 image
    (dict(spec_size=60), "spec_size"),           # not a multiple of mel_bins
    (dict(preset="huge"), "preset"),
])
def test_bad_htsat_sizes_are_config_errors(change, field_name):
    with pytest.raises(SchemaError, match=field_name):
        HTSATBranch(HTSATConfig(**{**SMALL_HTSAT, **change}))


def test_bad_model_options_are_config_errors():
    with pytest.raises(SchemaError, match="text_input"):
        DELSA(dataclasses.replace(small_config(), text_input="both"))
    with pytest.raises(SchemaError, match="kind"):
        TextEncoder(TextConfig(kind="gpt"))


@dataclass
class _ModelAndLoss:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)


def _load_sections(name: str, tmp_path) -> _ModelAndLoss:
    """The model: and loss: sections of a packaged config (other sections belong to the trainer)."""
    with open(config_path(name)) as f:
        data = yaml.safe_load(f)
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"model": data["model"], "loss": data["loss"]}))
    return load_config(_ModelAndLoss, path)


def test_packaged_configs_build(tmp_path):
    paper = _load_sections("paper.yaml", tmp_path)
    assert paper.model.text.kind == "clap_roberta" and paper.model.audio.htsat.preset == "tiny"
    assert (paper.model.source_dim, paper.model.space_dim, paper.model.shared_dim) == (512, 256, 512)
    assert paper.model.audio.spatial.bottleneck == 44 and paper.model.audio.spatial.out_dim == 192
    with pytest.raises(SchemaError, match="hf_dir"):  # the paper needs a local roberta-base
        TextEncoder(paper.model.text)

    demo = _load_sections("demo.yaml", tmp_path)
    torch.manual_seed(0)
    m = DELSA(demo.model)
    assert m.audio.source.out_dim == 256  # 32 * 2**3: the fusion input follows from the HTSAT sizes
    # the fusion reads HTSAT, the spatial features and (fusion_room_stats) the full room statistics, while the
    # spatial features read them through the rank-4 room_dim map
    assert m.audio.fusion[0].in_features == 256 + 192 + ROOM_STATS_DIM
    assert m.audio.spatial.room_proj.out_features == 4
    counts = m.param_counts()
    assert counts["text_backbone"][1] == 0 and counts["total"][1] > 0  # frozen MiniLM
    batch = make_batch(2)
    m.eval()
    with torch.no_grad():
        out = m.encode_audio(batch["waveform"], batch["iv"])
        text = m.encode_batch_text(batch)
    assert out["source"].shape == (2, 512) and out["space"].shape == (2, 256)
    assert text["source"].shape == (2, 512) and text["space"].shape == (2, 256)


# ---------------------------------------------------------------------------------------- physics

def test_direction_axes_follow_ambix_convention():
    v = physics.direction_from_angles(torch.tensor([0.0, 90.0, -90.0, 180.0, 0.0]),
                                      torch.tensor([0.0, 0.0, 0.0, 0.0, 90.0]))
    want = torch.tensor([[1, 0, 0], [0, 1, 0], [0, -1, 0], [-1, 0, 0], [0, 0, 1]], dtype=v.dtype)
    assert torch.allclose(v, want, atol=1e-6)  # front, left, right, behind, up


def test_physics_round_trips_to_real_units():
    g = torch.Generator().manual_seed(0)
    az = torch.rand(50, generator=g) * 358 - 179
    el = torch.rand(50, generator=g) * 170 - 85
    targets = {"azimuth_deg": az, "elevation_deg": el, "area_m2": torch.rand(50, generator=g) * 500 + 5,
               "distance_m": torch.rand(50, generator=g) * 10 + 0.3, "t30_ms": torch.rand(50, generator=g) * 3000 + 50}
    norm = physics.normalize_targets(targets)
    real = physics.to_real_units(norm)
    for k in ("area_m2", "distance_m", "t30_ms"):
        assert torch.allclose(real[k], targets[k], rtol=1e-5)
    assert torch.allclose(real["azimuth_deg"], az, atol=1e-3) and torch.allclose(real["elevation_deg"], el, atol=1e-3)
    assert physics.angular_error_deg(real["direction"], physics.direction_from_angles(az, el)).max() < 1e-3
    # Normalised values are O(1) over realistic rooms.
    assert all(norm[k].abs().max() < 3 for k in ("area", "distance", "t30"))
    custom = physics.PhysicsStats(t30_log_mean=math.log(1000.0), t30_log_std=0.5)
    n = physics.normalize_scalar(torch.tensor([1000.0]), "t30", custom)
    assert n.item() == pytest.approx(0.0, abs=1e-6)
    assert physics.denormalize_scalar(n, "t30", custom).item() == pytest.approx(1000.0, rel=1e-5)


def test_angular_error():
    a = physics.direction_from_angles(torch.tensor([0.0, 0.0, 10.0]), torch.tensor([0.0, 0.0, 0.0]))
    b = physics.direction_from_angles(torch.tensor([90.0, 180.0, 10.0]), torch.tensor([0.0, 0.0, 0.0]))
    assert torch.allclose(physics.angular_error_deg(a, b), torch.tensor([90.0, 180.0, 0.0], dtype=torch.float64),
                          atol=1e-4)


def test_fusion_room_stats_gives_the_source_side_what_room_dim_keeps_from_the_spatial_features():
    """With ``spatial.room_dim`` a room-statistics change in the null space of the rank-k map leaves the spatial
    features alone; with ``fusion_room_stats`` the shared (source-side) embedding still moves with it."""
    from dataclasses import replace

    from disse.trainer.model.audio_encoder import AudioEncoder

    base = small_config().audio
    cfg = replace(base, fusion_room_stats=True, spatial=replace(base.spatial, channels=[], room_dim=4))
    torch.manual_seed(0)
    enc = AudioEncoder(cfg, 32).eval()
    x, iv = 0.1 * torch.randn(2, 480000), torch.rand(2, 6, 251, 64) - 0.5
    with torch.no_grad():
        shared, spatial = enc(x, iv)
        weight = enc.spatial.room_proj.weight
        null = torch.randn(2, weight.shape[1])
        null -= null @ torch.linalg.pinv(weight) @ weight
        hook = enc.spatial.room_norm.register_forward_hook(lambda m, i, o: o + 10.0 * null)
        moved_shared, moved = enc(x, iv)
        hook.remove()
    assert torch.allclose(moved["features"], spatial["features"], atol=1e-4)
    assert not torch.allclose(moved_shared, shared, atol=1e-3)
    with pytest.raises(SchemaError, match="fusion_room_stats"):
        AudioEncoder(replace(cfg, spatial=replace(cfg.spatial, room_stats=False, room_dim=0)), 32)
