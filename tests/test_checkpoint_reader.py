"""The one checkpoint reader: every kind recognised from one read, every non-checkpoint named for what it is.

disse-eval, disse-embed and disse-train --resume all read through it, so each wrong file is one line there.
"""
from __future__ import annotations

import io
import wave

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from disse.schemas import SchemaError
from disse.trainer.cli.embed import _cli as embed_cli
from disse.trainer.cli.eval import main as eval_main
from disse.trainer.cli.train import main as train_main
from disse.trainer.model.weights import read_checkpoint


def _wav_bytes() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(np.zeros(480, np.int16).tobytes())
    return buf.getvalue()


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class Custom:  # a class inside a checkpoint: only a full unpickle (arbitrary code) could rebuild it
    pass


# file content -> what the message must say it is
NOT_CHECKPOINTS = {
    "empty.pt": (b"", "empty file"),
    "notes.txt": (b"These are my notes about the run.\nSecond line.\n", "text file"),
    "config.yaml": (b"model:\n  preset: demo\n", "text file"),
    "take.wav": (_wav_bytes(), "WAV audio"),
    "random.bin": (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "unrecognised binary"),
    "cut.pt": (_torch_bytes({"model": {"w": torch.zeros(1000)}, "config": {}})[:700], "truncated"),
}


@pytest.mark.parametrize("name", sorted(NOT_CHECKPOINTS))
def test_a_file_that_is_not_a_checkpoint_is_named_for_what_it_is(tmp_path, name):
    content, says = NOT_CHECKPOINTS[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SchemaError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert says in msg and str(path) in msg
    assert "weights_only=False" not in msg and "set to False" not in msg


def test_pickled_objects_are_refused_without_inviting_an_unsafe_load(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": Custom()}, path)
    with pytest.raises(SchemaError, match="refused.*never unpickles") as err:
        read_checkpoint(path)
    assert "Custom" in str(err.value) and "set to False" not in str(err.value)


def test_kinds_are_told_apart_by_their_tensor_names(tmp_path):
    files = {
        "project": {"model": {"audio.w": torch.zeros(2)}, "config": {"model": {}}, "step": 3},
        "official": {"model_state_dict": {"module.audio_encoder.w": torch.zeros(2), "logit_scale": torch.zeros(())},
                     "epoch": 20},
        "laion-clap": {"state_dict": {"module.audio_branch.bn0.weight": torch.zeros(2)}},
        "state-dict": {"encoder.w": torch.zeros(2)},
    }
    for kind, obj in files.items():
        torch.save(obj, tmp_path / f"{kind}.pt")
        got = read_checkpoint(tmp_path / f"{kind}.pt")
        assert got.kind == kind
    assert read_checkpoint(tmp_path / "official.pt").entries == {"epoch": 20}
    assert set(read_checkpoint(tmp_path / "official.pt").state) == {"audio_encoder.w", "logit_scale"}
    assert set(read_checkpoint(tmp_path / "laion-clap.pt").state) == {"audio_branch.bn0.weight"}
    project = read_checkpoint(tmp_path / "project.pt")
    assert project.config == {"model": {}} and project.training_state()["step"] == 3
    with pytest.raises(SchemaError, match="is a LAION-CLAP checkpoint, but --checkpoint needs"):
        read_checkpoint(tmp_path / "laion-clap.pt", expect=("project", "official"), what="--checkpoint")


def _one_line_error(output: str, path) -> None:
    assert "Traceback" not in output
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and str(path) in lines[0], output


@pytest.mark.parametrize("name", ["notes.txt", "take.wav", "empty.pt", "random.bin", "cut.pt"])
def test_eval_embed_and_resume_answer_a_wrong_file_in_one_line(tmp_path, demo_shards, capsys, name):
    content, says = NOT_CHECKPOINTS[name]
    path = tmp_path / name
    path.write_bytes(content)

    res = CliRunner().invoke(eval_main, ["--checkpoint", str(path), "--shards", str(demo_shards / "test"),
                                         "--out", str(tmp_path / "eval")])
    assert res.exit_code == 2
    _one_line_error(res.output, path)
    assert says in res.output

    res = CliRunner().invoke(embed_cli(), ["--checkpoint", str(path), "--caption", "a dog barks",
                                           "--out", str(tmp_path / "e.npz")])
    assert res.exit_code == 2
    _one_line_error(res.output, path)

    with pytest.raises(SystemExit) as exit_:
        train_main(["--config", "demo", f"data.train={demo_shards / 'train'}", "data.val=",
                    f"train.out_dir={tmp_path / 'run'}", "--resume", str(path)])
    assert exit_.value.code == 2
    _one_line_error(capsys.readouterr().err, path)
