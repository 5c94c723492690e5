"""`disse-embed` / :class:`disse.trainer.evaluation.embedder.Embedder`: real FOA files (AmbiX / FuMa, 48 / 44.1 kHz,
WAV / FLAC, any length) and captions -> the .npz layout disse-eval reads. Random small models."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from disse.pipeline.foa import ambix_to_fuma, encode_plane_wave
from disse.schemas import SchemaError
from disse.schemas.config import config_to_dict
from disse.trainer.training.config import TrainConfig
from disse.trainer.cli.embed import _cli
from disse.trainer.evaluation.embedder import Embedder, FoaFormatWarning, read_foa, windows
from disse.trainer.evaluation.evaluate import Embeddings, evaluate_embeddings
from disse.trainer.model.delsa import DELSA

from test_model import small_config

AZ, EL = 60.0, 15.0  # rendered direction: 60 deg to the left, 15 deg up (AmbiX convention)


def _plane_wave(sr: int, seconds: float, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    sig = 0.1 * g.standard_normal(int(sr * seconds)).astype(np.float32)
    return encode_plane_wave(sig, AZ, EL).astype(np.float32)  # (4, T) AmbiX


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("foa")
    foa48 = _plane_wave(48000, 4.0)
    sf.write(d / "ambix48.wav", foa48.T, 48000, subtype="FLOAT")
    sf.write(d / "fuma48.wav", ambix_to_fuma(foa48).T, 48000, subtype="FLOAT")
    sf.write(d / "ambix44.flac", _plane_wave(44100, 12.5, seed=1).T, 44100, subtype="PCM_24")
    sf.write(d / "fuma44.wav", ambix_to_fuma(_plane_wave(44100, 3.0, seed=2)).T, 44100, subtype="PCM_16")
    sf.write(d / "stereo.wav", foa48[:2].T, 48000)
    return d


@pytest.fixture(scope="module")
def project_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    cfg = TrainConfig(model=small_config())
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save({"model": DELSA(cfg.model).state_dict(), "config": config_to_dict(cfg), "step": 1}, path)
    return path


@pytest.fixture(scope="module")
def embedder(project_ckpt):
    return Embedder.load(project_ckpt)


def test_fuma_file_gives_the_same_embedding_as_the_ambix_file(embedder, files):
    a = embedder.embed_audio([files / "ambix48.wav"])
    f = embedder.embed_audio([files / "fuma48.wav"], foa_format="fuma")
    for k in ("audio_source", "audio_space", "est_direction", "est_t30_ms", "iv_direction"):
        assert np.allclose(a[k], f[k], atol=1e-5), k
    # reading FuMa as if it were AmbiX gives something else: the conversion is what makes them agree
    with pytest.warns(FoaFormatWarning, match="looks like FuMa"):  # and the levels say so
        wrong = embedder.embed_audio([files / "fuma48.wav"])
    assert not np.allclose(a["iv_direction"], wrong["iv_direction"], atol=1e-2)


@pytest.mark.parametrize("name, fmt", [("ambix48.wav", "ambix"), ("ambix44.flac", "ambix"), ("fuma44.wav", "fuma")])
def test_any_rate_format_and_length_recovers_the_rendered_direction(embedder, files, name, fmt):
    out = embedder.embed_audio([files / name], foa_format=fmt)
    assert out["audio_source"].shape == (1, 32) and out["audio_space"].shape == (1, 16)
    assert np.allclose(np.linalg.norm(out["audio_space"], axis=1), 1, atol=1e-5)
    true = np.array([math.cos(math.radians(EL)) * math.cos(math.radians(AZ)),
                     math.cos(math.radians(EL)) * math.sin(math.radians(AZ)), math.sin(math.radians(EL))])
    err = math.degrees(math.acos(float(np.clip(out["iv_direction"][0] @ true, -1, 1))))
    assert err < 5.0, err  # the front end keeps the AmbiX axes whatever the file's rate and convention
    # the model's own estimate: the intensity-attention direction (trainer/model/spatial.py) averages the
    # intensity vectors of the cells it attends to, so on a single plane wave it recovers the direction
    # the file was rendered at whatever its (here random) attention weights
    assert abs(out["est_azimuth_deg"][0] - AZ) < 1.0 and abs(out["est_elevation_deg"][0] - EL) < 1.0, \
        (out["est_azimuth_deg"], out["est_elevation_deg"])
    for k in ("est_direction", "est_distance_m", "est_area_m2", "est_t30_ms"):
        assert np.isfinite(out[k]).all()
    assert set(out["zs_direction"]) <= set(embedder.rules.attributes["direction"].labels)


def test_long_recordings_are_windowed(embedder, files):
    out = embedder.embed_audio([files / "ambix44.flac"], segments="all")  # 12.5 s -> 10 s + tiled 2.5 s
    assert list(out["key"]) == [f"{files / 'ambix44.flac'}#0", f"{files / 'ambix44.flac'}#1"]
    x = np.arange(25, dtype=np.float32)[None].repeat(4, 0)
    assert [w.shape[1] for w in windows(x, 10, "all")] == [10, 10, 10]
    assert np.array_equal(windows(x[:, :4], 10)[0][0], [0, 1, 2, 3, 0, 1, 2, 3, 0, 1])


def test_paired_file_is_what_disse_eval_reads(embedder, files, tmp_path):
    paths = [files / "ambix48.wav", files / "fuma48.wav"]
    arrays = embedder.embed(paths, ["a hiss to the left", "a hiss to the left, again"], foa_format=["ambix", "fuma"],
                            source_ids=["hiss", "hiss"], space_ids=["left", "left"])
    assert "est_direction" in arrays and "pred_direction" not in arrays  # no targets: estimates only
    out = Embedder.save(tmp_path / "emb.npz", arrays)
    emb = Embeddings.load(out)
    assert len(emb) == 2 and emb.text_space.shape == (2, 16)
    metrics = evaluate_embeddings(emb, embedder.rules)
    assert "SRC/t2a/R@1" in metrics
    # with the rendered direction as target, disse-eval scores the estimate and the baseline
    scored = embedder.embed(paths, ["a", "b"], foa_format=["ambix", "fuma"],
                            targets={"true_azimuth_deg": [AZ, AZ], "true_elevation_deg": [EL, EL]})
    assert "pred_direction" in scored and "est_direction" not in scored
    metrics = evaluate_embeddings(Embeddings.load(Embedder.save(tmp_path / "scored.npz", scored)), embedder.rules)
    assert any(k.startswith("direction") or "direction" in k for k in metrics)
    text = embedder.embed_text(["a hiss to the left"])
    assert np.allclose(text["text_space"][0], arrays["text_space"][0], atol=1e-5)
    with pytest.raises(SchemaError, match="pair them"):
        embedder.embed(paths, ["only one caption"])


def test_bad_inputs_are_clear_errors(embedder, files, tmp_path):
    with pytest.raises(SchemaError, match="4 channels"):
        read_foa(files / "stereo.wav")
    with pytest.raises(SchemaError, match="not found"):
        embedder.embed_audio([tmp_path / "missing.wav"])
    with pytest.raises(SchemaError, match="format"):
        read_foa(files / "ambix48.wav", "bformat")


def test_cli_writes_the_npz(project_ckpt, files, tmp_path):
    out = tmp_path / "cli.npz"
    res = CliRunner().invoke(_cli(), ["--checkpoint", str(project_ckpt), "--audio", str(files / "fuma48.wav"),
                                      "--audio", str(files / "fuma44.wav"), "--format", "fuma", "--caption", "a hiss",
                                      "--caption", "another hiss", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "2 item(s) embedded with the project model" in res.output and "warning" not in res.output
    assert len(Embeddings.load(out)) == 2
    manifest = tmp_path / "items.csv"
    manifest.write_text(f"audio_path,format,azimuth_deg,elevation_deg\n{files / 'ambix48.wav'},ambix,{AZ},{EL}\n"
                        f"{files / 'fuma48.wav'},fuma,{AZ},{EL}\n")
    res = CliRunner().invoke(_cli(), ["--checkpoint", str(project_ckpt), "--manifest", str(manifest),
                                      "--out", str(tmp_path / "m.npz")])
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "m.npz") as z:
        assert z["pred_direction"].shape == (2, 3) and list(z["true_azimuth_deg"]) == [AZ, AZ]
    res = CliRunner().invoke(_cli(), ["--checkpoint", str(project_ckpt), "--audio", str(files / "stereo.wav"),
                                      "--out", str(tmp_path / "x.npz")])
    assert res.exit_code == 2 and "4 channels" in res.output


def test_official_checkpoint_is_recognised_and_embeds(files, tmp_path):
    from disse.trainer.model.official import DISSEOfficial, OfficialConfig

    from test_official_model import _roberta_dir

    rb = _roberta_dir(tmp_path / "rb", full=False)
    torch.manual_seed(0)
    ref = DISSEOfficial(OfficialConfig(roberta_dir=str(rb), text_max_length=24))
    torch.save({"model": ref.state_dict(), "epoch": 20}, tmp_path / "disse_epoch20.pt")
    audio_only = Embedder.load(tmp_path / "disse_epoch20.pt")  # no roberta_dir: audio side only
    assert audio_only.kind == "official" and audio_only.model.text_encoder is None
    a = audio_only.embed_audio([files / "ambix48.wav"])
    assert a["audio_space"].shape == (1, 512) and a["official_direction"].shape == (1, 2)
    assert np.allclose(np.linalg.norm(a["audio_source"], axis=1), 1, atol=1e-5)
    # the release's own front end, computed here directly, gives the same embedding
    from disse.pipeline.official_features import official_intensity

    foa = read_foa(files / "ambix48.wav")
    i_act, i_rea = official_intensity(foa)
    tiled = windows(foa, 480000)[0]
    with torch.no_grad():
        want = ref.eval().encode_audio({"i_act": torch.from_numpy(i_act)[None], "i_rea": torch.from_numpy(i_rea)[None],
                                        "omni_48k": torch.from_numpy(tiled[0])[None]})["audio_space_emb"]
    assert np.allclose(a["audio_space"][0], torch.nn.functional.normalize(want, dim=-1)[0].numpy(), atol=1e-4)
    # mirroring left/right is the same as negating Y in the file
    m = audio_only.embed_audio([files / "ambix48.wav"], mirror_left_right=True)
    flipped = foa.copy()
    flipped[1] *= -1
    sf.write(tmp_path / "flipped.wav", flipped.T, 48000, subtype="FLOAT")
    assert np.allclose(m["audio_space"], audio_only.embed_audio([tmp_path / "flipped.wav"])["audio_space"], atol=1e-5)
    with pytest.raises(SchemaError, match="roberta_dir"):
        audio_only.embed_text(["a sound"])
    both = Embedder.load(tmp_path / "disse_epoch20.pt", roberta_dir=str(rb), text_max_length=24)  # toy: 100 positions
    arrays = both.embed([files / "fuma48.wav", files / "ambix48.wav"],
                        ["The sound: a hiss is coming from the near right of a small room.", "A hiss."],
                        foa_format=["fuma", "ambix"])
    assert set(arrays["zs_direction"]) <= set(both.rules.attributes["direction"].labels)
    assert np.allclose(arrays["audio_space"][0], arrays["audio_space"][1], atol=1e-4)  # FuMa == AmbiX here too
    assert len(Embeddings.from_arrays(arrays)) == 2
    # the CLI with a configs/official.yaml-style file
    (tmp_path / "official.yaml").write_text(f"model:\n  preset: official\n  official:\n"
                                            f"    checkpoint: {tmp_path / 'disse_epoch20.pt'}\n    modalities: [audio]\n")
    res = CliRunner().invoke(_cli(), ["--config", str(tmp_path / "official.yaml"), "--audio", str(files / "ambix48.wav"),
                                      "--audio", str(files / "ambix44.flac"), "--out", str(tmp_path / "rel.npz")])
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "rel.npz") as z:
        assert str(z["model_kind"]) == "official" and z["audio_space"].shape == (2, 512)
        assert np.allclose(z["audio_space"][0], a["audio_space"][0], atol=1e-5)


def test_cli_warns_once_when_the_levels_contradict_the_format(project_ckpt, files, tmp_path):
    """The README's example used to pass --format fuma: on an AmbiX file that is now one warning line."""
    res = CliRunner().invoke(_cli(), ["--checkpoint", str(project_ckpt), "--audio", str(files / "ambix48.wav"),
                                      "--audio", str(files / "fuma48.wav"), "--format", "fuma",
                                      "--out", str(tmp_path / "w.npz")])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "warning" not in res.stdout, res.output
    assert str(files / "ambix48.wav") in lines[0] and "--format ambix" in lines[0] and "looks like AmbiX" in lines[0]
    # --segments all reads each file once too
    res = CliRunner().invoke(_cli(), ["--checkpoint", str(project_ckpt), "--audio", str(files / "ambix44.flac"),
                                      "--format", "fuma", "--segments", "all", "--out", str(tmp_path / "s.npz")])
    assert res.exit_code == 0, res.output
    assert sum(ln.startswith("warning:") for ln in res.stderr.splitlines()) == 1
