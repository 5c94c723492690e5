"""LAION-CLAP checkpoints: built here from laion-clap's own HTSAT / a toy RoBERTa, loaded, compared.

Nothing is downloaded: the checkpoints are made in the test in the released files' format
(``{"state_dict": {"module.audio_branch.<k>": ...}}``). laion-clap is the reference implementation
(tests/laion_reference.py); the tests that need it are skipped without it.
"""
import collections

import pytest
import torch

from disse.schemas import SchemaError
from disse.trainer.model.audio_encoder import HTSATBranch, HTSATConfig
from disse.trainer.model.clap_checkpoint import read_state_dict
from disse.trainer.model.hf import write_random_roberta
from disse.trainer.model.text_encoder import TextConfig, TextEncoder, Tokenizer
from laion_reference import laion_htsat, needs_laion_clap


@pytest.fixture(scope="module")
def laion_htsat_ckpt(tmp_path_factory):
    """laion-clap's HTSAT-tiny (create_htsat_model, seeded random init) and its CLAP-format checkpoint."""
    torch.manual_seed(1234)
    ref = laion_htsat(HTSATConfig(preset="tiny")).eval()
    with torch.no_grad():  # non-default BN statistics, so that loading them is checked too
        ref.bn0.running_mean.uniform_(-1, 1)
        ref.bn0.running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("clap") / "clap_htsat_tiny.pt"
    state = {"module.audio_branch." + k: v for k, v in ref.state_dict().items()}
    state["module.logit_scale_a"] = torch.tensor(2.0)  # other CLAP tensors are ignored by the audio branch
    torch.save({"epoch": 45, "name": "test", "state_dict": state}, path)
    return ref, path


@pytest.fixture(scope="module")
def waveform():
    g = torch.Generator().manual_seed(7)
    t = torch.arange(480000) / 48000.0
    return (0.3 * torch.sin(2 * torch.pi * 440.0 * t) + 0.05 * torch.randn(480000, generator=g))[None]


@needs_laion_clap
def test_laion_checkpoint_gives_laion_embedding(laion_htsat_ckpt, waveform):
    """A LAION-CLAP HTSAT-tiny checkpoint in DISSE's HTSAT (transformers' ClapAudioModel, keys mapped,
    torch front end) gives laion-clap's own embedding: the two implementations agree."""
    ref, path = laion_htsat_ckpt
    torch.manual_seed(0)  # a different init than the reference: only the checkpoint can make them agree
    branch = HTSATBranch(HTSATConfig(preset="tiny")).eval()
    enc = branch.htsat.audio_encoder
    assert not torch.equal(enc.patch_embed.proj.weight, ref.patch_embed.proj.weight)
    report = branch.load_checkpoint(str(path))
    assert report is not None and not report.missing and not report.unexpected
    assert len(report.loaded) > 100
    assert torch.equal(enc.layers[2].blocks[3].attention.self.key.weight,
                       ref.layers[2].blocks[3].attn.qkv.weight.chunk(3)[1])
    # recomputed or unused, never loaded: torchlibrosa's DFT kernels and mel matrix (the torch front end
    # recomputes them; test_model compares it), the AudioSet classifier, the shifted-window masks
    assert {"spectrogram_extractor.stft.conv_imag.weight", "spectrogram_extractor.stft.conv_real.weight",
            "logmel_extractor.melW", "head.weight", "tscam_conv.weight"} <= set(report.ignored)
    assert all(k.startswith(("spectrogram_extractor.", "logmel_extractor.", "head.", "tscam_conv."))
               or k.endswith("attn_mask") for k in report.ignored)
    with torch.no_grad():
        want = ref({"waveform": waveform})["embedding"]
        got = branch(waveform)
    assert got.shape == (1, 768)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


class Evil:  # a custom class inside a checkpoint: torch.load(weights_only=False) would run its code
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_with_custom_objects_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"audio_branch.bn0.weight": torch.ones(64)}, "extra": Evil()}, path)
    with pytest.raises(SchemaError, match="refused.*never unpickles") as err:
        read_state_dict(path)
    assert str(path) in str(err.value)
    assert "pwned" not in capsys.readouterr().out


SMALL = dict(spec_size=64, mel_bins=16, n_fft=1024, hop_size=1920, embed_dim=16, depths=[1, 1, 1],
             num_heads=[1, 1, 2])


@needs_laion_clap
def test_missing_unexpected_and_mismatched_keys_are_reported(tmp_path):
    ref = laion_htsat(HTSATConfig(**SMALL))  # a LAION-layout state dict of these sizes
    state = {"audio_branch." + k: v for k, v in ref.state_dict().items()}
    dropped = "audio_branch.layers.0.blocks.0.attn.qkv.weight"
    del state[dropped]
    state["audio_branch.some_new_layer.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pt"
    torch.save(collections.OrderedDict(state), path)  # a bare state dict, no "module." prefix
    branch = HTSATBranch(HTSATConfig(**SMALL, checkpoint=str(path)))
    rep = branch.load_report
    assert rep.missing == [f"audio_encoder.layers.0.blocks.0.attention.self.{n}.weight" for n in ("key", "query", "value")]
    assert rep.unexpected == ["audio_encoder.some_new_layer.weight"]
    assert "missing" in str(rep) and "some_new_layer.weight" in str(rep)

    state = {"audio_branch." + k: v for k, v in ref.state_dict().items()}
    state["audio_branch.norm.weight"] = torch.ones(5)
    torch.save(state, path)
    with pytest.raises(SchemaError, match="norm.weight.*shape"):
        HTSATBranch(HTSATConfig(**SMALL, checkpoint=str(path)))

    torch.save({"state_dict": {"text_branch.x": torch.ones(2)}}, path)
    with pytest.raises(SchemaError, match="audio_branch"):
        HTSATBranch(HTSATConfig(**SMALL, checkpoint=str(path)))
    with pytest.raises(SchemaError, match="not found"):
        read_state_dict(tmp_path / "nope.pt")


def _toy_roberta_dir(path, hidden=32, layers=2):
    """A local Hugging Face folder with a tiny random RoBERTa and a character-level BPE vocabulary."""
    return write_random_roberta(path, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                                intermediate_size=2 * hidden)


def test_clap_roberta_text_branch_loads_from_checkpoint(tmp_path):
    from transformers import RobertaConfig, RobertaModel

    hf_dir = _toy_roberta_dir(tmp_path / "roberta")
    torch.manual_seed(3)
    roberta = RobertaModel(RobertaConfig.from_pretrained(hf_dir)).eval()
    proj = torch.nn.Sequential(torch.nn.Linear(32, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512))
    state = {f"module.text_branch.{k}": v for k, v in roberta.state_dict().items()}
    state.update({f"module.text_projection.{k}": v for k, v in proj.state_dict().items()})
    state["module.audio_branch.bn0.weight"] = torch.ones(64)
    ckpt = tmp_path / "clap.pt"
    torch.save({"state_dict": state}, ckpt)

    cfg = TextConfig(kind="clap_roberta", hf_dir=str(hf_dir), checkpoint=str(ckpt))
    enc = TextEncoder(cfg, out_dim=512).eval()
    assert not enc.load_report.missing
    tokens = Tokenizer(cfg)(["a dog barks far away.", "rain"])
    with torch.no_grad():
        want = proj(roberta(**tokens).pooler_output)
        got = enc(tokens)
    assert torch.allclose(got, want, atol=1e-5)


def test_clap_roberta_without_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SchemaError, match="hf_dir.*roberta-base"):
        TextEncoder(TextConfig(kind="clap_roberta"))
    with pytest.raises(SchemaError, match="no config.json"):
        TextEncoder(TextConfig(kind="clap_roberta", hf_dir=str(tmp_path)))


# ------------------------------------------------------------------------------------------------
# laion-clap as the reference for transformers' ClapAudioModel (the official preset's HTSAT)


@needs_laion_clap
def test_laion_htsat_maps_onto_transformers_clap_audio_model(laion_htsat_ckpt, waveform):
    """Same random weights through laion-clap's HTSAT-tiny and transformers' ClapAudioModel (keys mapped
    by laion_htsat_to_clap_audio) give the same pooled embedding from the same log-mel."""
    from transformers import ClapAudioModel

    from disse.trainer.model.clap_checkpoint import laion_htsat_to_clap_audio, sub_state_dict
    from disse.trainer.model.official import clap_audio_config

    ref, path = laion_htsat_ckpt
    mapped, dropped = laion_htsat_to_clap_audio(sub_state_dict(read_state_dict(path), "audio_branch."))
    assert "logmel_extractor.melW" in dropped and "head.weight" in dropped
    assert any(k.endswith(".attn_mask") for k in dropped)
    torch.manual_seed(5)
    hf = ClapAudioModel(clap_audio_config({"enable_fusion": False})).eval()
    hf.load_state_dict(mapped, strict=True)  # every tensor of the HF model comes from the LAION file
    with torch.no_grad():
        mel = ref.logmel_extractor(ref.spectrogram_extractor(waveform))  # (1, 1, 1001, 64)
        want = ref({"waveform": waveform})["embedding"]
        got = hf(input_features=mel).pooler_output
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@needs_laion_clap
def test_laion_fused_htsat_equals_the_official_preset_htsat(waveform):
    """laion-clap's fused HTSAT (aff_2d, as laion/clap-htsat-fused) maps strictly onto the official
    preset's ClapAudioModel, and with no clip marked longer both give the same embedding."""
    from disse.trainer.model.clap_checkpoint import laion_htsat_to_clap_audio
    from disse.trainer.model.official import ClapHTSAT

    torch.manual_seed(99)
    ref = laion_htsat(HTSATConfig(preset="tiny"), enable_fusion=True, fusion_type="aff_2d").eval()
    branch = ClapHTSAT().eval()
    mapped, _ = laion_htsat_to_clap_audio(ref.state_dict())
    branch.model.load_state_dict(mapped, strict=True)
    with torch.no_grad():
        mel = ref.logmel_extractor(ref.spectrogram_extractor(waveform))
        want = ref({"mel_fusion": mel.repeat(1, 4, 1, 1), "longer": torch.zeros(1, dtype=torch.bool)})["embedding"]
        got = branch.model(input_features=mel, is_longer=torch.zeros(1, 1, dtype=torch.bool)).pooler_output
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
