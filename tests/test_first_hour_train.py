"""The first hour with disse-train: every bad input ends in one ``error: ...`` line naming where it came
from (the file or the command-line override) and the field, with a hint, exit status 2, no traceback."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_says_how_to_get_the_commands_on_the_path():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    # the two quick-start commands stay as they are
    assert re.search(r"^make demo ", quick, re.M) and re.search(r"^make test ", quick, re.M)
    assert "source .venv/bin/activate" in quick and ".venv/bin/disse-" in quick and "make install" in quick
    assert re.search(r"^install:", (ROOT / "Makefile").read_text(), re.M)


def run_train(args, capsys) -> tuple[int, str]:
    """disse-train's entry point on ``args`` -> (exit status, everything it printed)."""
    from disse.trainer.cli.train import main
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out + out.err


def one_error_line(code: int, text: str) -> str:
    assert code == 2, text
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


def test_an_override_error_names_the_override_not_the_file(capsys):
    line = one_error_line(*run_train(["--config", "demo", "data.batch_size=0"], capsys))
    assert "override 'data.batch_size=0'" in line and "field 'data.batch_size'" in line and ">= 1" in line
    assert "demo.yaml" not in line
    line = one_error_line(*run_train(["--config", "demo", "optim.lrr=1"], capsys))
    assert "override 'optim.lrr=1'" in line and "did you mean 'optim.lr'" in line and "demo.yaml" not in line
    line = one_error_line(*run_train(["--config", "demo", "data.batch_size=many"], capsys))
    assert "override 'data.batch_size=many'" in line and "expected int" in line
    line = one_error_line(*run_train(["--config", "demo", "train.freeze=[model.text"], capsys))
    assert "override 'train.freeze=[model.text'" in line and "not valid YAML" in line


def test_a_file_error_names_the_file_even_with_overrides(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  batch_size: 0\noptim:\n  lrr: 1.0\n")
    line = one_error_line(*run_train(["--config", bad, "data.train=x", "optim.lr=1e-3"], capsys))
    assert line.startswith(f"error: {bad}, field 'optim.lrr'") and "override" not in line
    bad.write_text("data:\n  batch_size: 0\n")
    line = one_error_line(*run_train(["--config", bad, "data.train=x", "optim.lr=1e-3"], capsys))
    assert line.startswith(f"error: {bad}, field 'data.batch_size': must be >= 1") and "override" not in line
    # an override of the same field wins, and is what a bad value of it is blamed on
    line = one_error_line(*run_train(["--config", bad, "data.train=x", "data.batch_size=-2"], capsys))
    assert "override 'data.batch_size=-2'" in line and str(bad) not in line


def test_config_sources_name_the_last_override_or_a_section_override():
    from disse.schemas.config import ConfigSources
    src = ConfigSources("c.yaml", {"data": {"batch_size": 4}},
                        [("data.batch_size", "data.batch_size=1"), ("data", "data={batch_size: 0}")])
    assert src("data.batch_size") == "override 'data={batch_size: 0}'"
    assert src("optim.lr") == "built-in default"
    assert ConfigSources("c.yaml", {"optim": {"lr": 1}})("optim.lr") == "c.yaml"


@pytest.mark.parametrize("override, rule", [
    ("train.max_steps=-5", ">= 0 (0 = train.epochs epochs)"),
    ("train.stop_after=-1", ">= 0"),
    ("train.save_every_steps=-10", ">= 0"),
    ("train.epochs=-1", ">= 0"),
    ("train.epochs=0", ">= 1 (or set train.max_steps)"),
    ("train.accum_steps=0", ">= 1"),
    ("train.threads=-2", ">= 0"),
    ("eval.every_steps=-100", ">= 0"),
    ("eval.max_items=-1", ">= 0"),
    ("data.seed=-1", ">= 0"),
    ("data.prefetch_factor=0", ">= 1"),
    ("data.val_num_workers=-1", ">= 0"),
    ("optim.eps=0", "> 0"),
    ("optim.weight_decay=-0.1", ">= 0"),
    ("optim.lr=.inf", "finite"),
    ("loss.space_weight=-1", ">= 0"),
    ("model.dropout=1.5", "in [0, 1)"),
])
def test_out_of_range_numbers_are_refused(override, rule, capsys):
    line = one_error_line(*run_train(["--config", "demo", "data.train=x", override], capsys))
    field, value = override.split("=")
    assert f"override '{override}', field '{field}'" in line and rule in line, line
    assert "demo.yaml" not in line


def test_in_range_edges_are_accepted():
    from disse.configs import config_path
    from disse.trainer.training.config import load_train_config
    cfg = load_train_config(config_path("demo.yaml"), [
        "train.max_steps=0", "train.stop_after=0", "train.save_every_steps=0", "train.threads=0",
        "eval.every_steps=0", "eval.max_items=0", "data.num_workers=0", "train.epochs=0", "train.max_steps=3",
        "data.space_caption_drop=1", "optim.min_lr_ratio=0"])
    assert cfg.train.max_steps == 3 and cfg.train.epochs == 0
    load_train_config(config_path("paper.yaml"), ["data.train=x"])


# The demo config shrunk so that a run of a step takes seconds (as tests/test_train.py's SMALL).
SMALL = ["model.audio.htsat.embed_dim=16", "model.audio.htsat.depths=[1,1,1]", "model.audio.htsat.num_heads=[1,2,4]",
         "model.audio.htsat.mel_bins=16", "model.audio.htsat.spec_size=64", "model.audio.htsat.hop_size=1920",
         "model.audio.htsat.window_size=4", "model.audio.spatial.input_pool=[16,2]", "log.progress=false",
         "train.threads=2", "data.num_workers=0", "data.val_num_workers=0", "data.batch_size=4",
         "eval.each_epoch=false", "eval.at_start=false"]


def _doc_freeze_examples() -> list[str]:
    """Every train.freeze value docs/training.md shows: ``train.freeze=[...]`` and the field table's row."""
    doc = (ROOT / "docs" / "training.md").read_text()
    examples = re.findall(r"train\.freeze=(\[[^\]]*\])", doc)
    row = next(ln for ln in doc.splitlines() if ln.startswith("| `train.freeze`"))
    examples += re.findall(r"`(\[[^\]]*\])`", row)
    return examples


def test_every_freeze_example_in_the_docs_works():
    import yaml

    from disse.configs import config_path
    from disse.trainer.training.config import load_train_config
    from disse.trainer.training.loop import apply_freeze, build_model
    examples = _doc_freeze_examples()
    assert "[model.text]" in examples and len(examples) >= 4, examples
    cfg = load_train_config(config_path("demo.yaml"), SMALL)
    for example in examples:
        model = build_model(cfg)
        (prefix,) = yaml.safe_load(example)
        assert apply_freeze(model, [prefix]) > 0, example
        own = prefix.removeprefix("model.")
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        assert frozen and {n for n, _ in model.named_parameters() if n.startswith(own + ".")} <= frozen, example


@pytest.fixture(scope="module")
def frozen_text_run(demo_shards, tmp_path_factory):
    """One training step through the CLI with the docs' ``train.freeze=[model.text]`` -> the run folder."""
    from disse.trainer.cli.train import main
    out = tmp_path_factory.mktemp("frozen") / "run"
    main(["--config", "demo", *SMALL, f"data.train={demo_shards / 'train'}", "data.val=",
          f"train.out_dir={out}", "train.max_steps=1", "train.freeze=[model.text]"])
    return out


def test_doc_freeze_example_trains_through_the_cli(frozen_text_run):
    import yaml

    from disse.trainer.training.logging_utils import read_log
    end = read_log(frozen_text_run / "log.jsonl")[-1]
    assert end["event"] == "end" and end["step"] == 1
    assert yaml.safe_load((frozen_text_run / "config.yaml").read_text())["train"]["freeze"] == ["model.text"]
    assert (frozen_text_run / "checkpoints" / "latest.pt").is_file()


def test_unknown_freeze_prefix_lists_the_module_names(demo_shards, tmp_path, capsys):
    args = ["--config", "demo", *SMALL, f"data.train={demo_shards / 'train'}", "data.val=",
            f"train.out_dir={tmp_path / 'run'}", "train.max_steps=1"]
    line = one_error_line(*run_train(args + ["train.freeze=[model.audio_encoder]"], capsys))
    assert "override 'train.freeze=[model.audio_encoder]', field 'train.freeze'" in line
    assert "did you mean 'model.audio'?" in line and "top-level modules:" in line
    assert all(f"'{m}'" in line for m in ("audio", "text", "phys_heads")), line
    line = one_error_line(*run_train(args + ["train.freeze=[model.audio.htsat]"], capsys))
    assert "modules under 'audio':" in line and "'source'" in line and "'spatial'" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_folder_of_split_folders_suggests_the_split(demo_shards, tmp_path, capsys):
    """data.train=shards where shards/ holds train/ val/ test/: the error says which folder was meant."""
    base = ["--config", "demo", *SMALL, f"train.out_dir={tmp_path / 'run'}", "train.max_steps=1"]
    line = one_error_line(*run_train(base + [f"data.train={demo_shards}", "data.val="], capsys))
    assert f"error: {demo_shards}, field 'data.train': directory holds no .tar shards" in line
    assert f"did you mean data.train={demo_shards / 'train'}?" in line and str(demo_shards / "test") in line
    line = one_error_line(*run_train(base + [f"data.train={demo_shards / 'train'}", f"data.val={demo_shards}"],
                                     capsys))
    assert "field 'data.val'" in line and f"did you mean data.val={demo_shards / 'val'}?" in line
    line = one_error_line(*run_train(base + [f"data.train={demo_shards / 'trian'}", "data.val="], capsys))
    assert "field 'data.train': folder not found" in line and f"data.train={demo_shards / 'train'}?" in line


def test_eval_shards_folder_of_split_folders_suggests_the_split(demo_shards, frozen_text_run, tmp_path):
    from click.testing import CliRunner

    from disse.trainer.cli.eval import main as eval_main
    ckpt = frozen_text_run / "checkpoints" / "latest.pt"
    res = CliRunner().invoke(eval_main, ["--checkpoint", str(ckpt), "--shards", str(demo_shards),
                                         "--out", str(tmp_path / "eval")])
    line = one_error_line(res.exit_code, res.output)
    assert "field '--shards'" in line and f"did you mean --shards {demo_shards / 'test'}?" in line


@pytest.fixture(scope="module")
def official_shards(tmp_path_factory):
    """Two samples rendered with ``disse-synth render --features official`` (as tests/test_render_official.py)."""
    import numpy as np
    import soundfile as sf
    from click.testing import CliRunner

    from disse.pipeline.cli import main as synth
    d = tmp_path_factory.mktemp("official")
    rng = np.random.default_rng(0)
    (d / "audio").mkdir()
    (d / "rirs").mkdir()
    sf.write(d / "audio" / "a.wav", rng.standard_normal(48000 * 2) * 0.1, 48000)
    (d / "clips.csv").write_text("audiocap_id,caption\na,Rain is falling continuously\n")
    rows = []
    for i, az in enumerate((60.0, -60.0)):
        rir = np.zeros((4, 960), np.float32)
        rir[0, 20] = 0.5
        rir[1, 20] = 0.5 * np.sin(np.radians(az))   # AmbiX (W, Y, Z, X), SN3D: a plane wave from az
        rir[3, 20] = 0.5 * np.cos(np.radians(az))
        sf.write(d / "rirs" / f"r{i}.wav", rir.T, 48000, subtype="FLOAT")
        rows.append(f"rirs/r{i}.wav,{az},0,1.5,60,400")
    (d / "rirs.csv").write_text("rir_path,azimuth_deg,elevation_deg,source_distance_m,area_m2,fullband_T30_ms\n"
                                + "\n".join(rows) + "\n")
    res = CliRunner().invoke(synth, [
        "render", "--clips", str(d / "clips.csv"), "--audio-dir", str(d / "audio"), "--rirs", str(d / "rirs.csv"),
        "--out", str(d / "out"), "--features", "official", "--val-fraction", "0", "--test-fraction", "0",
        "--rirs-per-clip", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    return d / "out"


def test_official_feature_shards_are_one_error_naming_features_preset(official_shards, demo_shards, tmp_path,
                                                                       capsys):
    base = ["--config", "demo", *SMALL, f"train.out_dir={tmp_path / 'run'}", "train.max_steps=1"]
    code, text = run_train(base + [f"data.train={official_shards / 'train'}", "data.val="], capsys)
    line = one_error_line(code, text)   # no warnings per sample, no "the loader yielded no samples"
    shard = sorted((official_shards / "train").glob("*.tar"))[0]
    assert line.startswith(f"error: {shard}:") and "field 'features.preset'" in line
    assert "'official' feature preset" in line and "without --features official" in line and "data.train" in line
    # the validation shards are checked as well, before any training step
    code, text = run_train(base + [f"data.train={demo_shards / 'train'}", f"data.val={official_shards / 'train'}"],
                           capsys)
    line = one_error_line(code, text)
    assert "field 'features.preset'" in line and "data.val shards" in line
    assert not (tmp_path / "run" / "checkpoints").exists()
