"""Every shell and Python example of README.md and docs/*.md runs, so the docs cannot drift.

The fenced code blocks are extracted (``bash``, ``python``, and untyped blocks whose first command is a
known one); each gets the id ``file:line`` of its opening fence. Blocks that are not examples are
recognised by rule (usage synopses, sample output, API signature listings, printed tables); what the
rules keep but cannot run here is listed, with its reason, in ``NOT_RUN``. Every other block runs as a
subprocess in its own copy of a sandbox holding small generated stand-ins for what a user supplies
(clips, AudioCaps / Clotho CSVs, a simulated RIR bank, rendered shards, trained runs, recordings, a
LAION-CLAP file, a roberta-base folder, the released checkpoint, the official grid): shell blocks with
``bash -e`` and the console commands mapped to ``python -m MODULE`` by wrapper scripts on ``PATH``
(so the code under test is the one ``import disse`` finds, installed or on ``PYTHONPATH``), Python blocks
with ``sys.executable``. A block passes when it exits with status 0 and prints no traceback.

Sizes and user-supplied paths are rewritten by the textual ``SUBSTITUTIONS`` (each with its reason);
the paper configuration in particular becomes the demo model at the test size (see there).
"""
from __future__ import annotations

import ast
import csv
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import RobertaConfig, RobertaModel

from disse.pipeline.foa import ambix_to_fuma, plane_wave_rir
from disse.trainer.model.official import DISSEOfficial, OfficialConfig
from shardgen import write_shards
from test_clap_checkpoint import _toy_roberta_dir
from test_official_grid import _rir_row
from test_train import SMALL

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]

# console command -> module it runs (pyproject.toml [project.scripts])
COMMANDS = {"disse-synth": "disse.pipeline.cli", "disse-train": "disse.trainer.cli.train",
            "disse-eval": "disse.trainer.cli.eval", "disse-embed": "disse.trainer.cli.embed"}
# what an untyped block's first command must be for the block to be an example
KNOWN_COMMANDS = (*COMMANDS, "python", "torchrun", "sha256sum", "make", "source", "pip", ".venv/bin/")

# Blocks the rules keep as examples but that cannot run here; the test below checks every key still
# names such a block.
NOT_RUN = {
    "README.md:136": "streams shards from a bucket and an https server that do not exist here; "
                     "tests/test_remote_shards.py trains and evaluates the same way over a loopback server and pipe:cat",
    "README.md:197": "fine-tunes the released checkpoint, which is not shipped; tests/test_official_train.py runs "
                     "the same fine-tuning path on a release-layout file at tiny sizes",
    "README.md:22": "`make demo` renders and trains the full demo (9-16 minutes on 2 cores; its three commands "
                    "run as README.md:33) and `make test` runs the whole suite, this file included",
    "docs/training.md:106": "two-node torchrun: needs a second host (HOST0) to meet; the one-node form runs "
                           "(README step 4, docs/training.md's one-node example)",
    "docs/official.md:370": "trains the full-size official model (fused HTSAT, RoBERTa-base), far beyond CPU; "
                            "tests/test_official_train.py runs the same code path at tiny sizes (random start, "
                            "fine-tuning a release-layout file with frozen parts, the bad-input errors)",
}

# The demo model at the size of tests/test_train.py, one optimiser step of 2, validated after it (so
# checkpoints/best.pt exists), data read in-process.
TINY_RUN = [*SMALL, "train.max_steps=1", "data.batch_size=2", "data.num_workers=0", "data.shuffle_buffer=4",
            "data.val_batch_size=8", "eval.at_start=false", "eval.each_epoch=false", "eval.every_steps=1",
            "log.every_steps=1"]
STEP4 = ("data.train=shards/train data.val=shards/val model.audio.htsat.checkpoint=... "
         "model.text.checkpoint=... model.text.hf_dir=...")
RENDER_ARGS = ("--clips clips.csv --audio-dir audio/ --rirs rirs/rirs.csv --rirs-per-clip 4 --clips-per-rir 4 "
               "--shard-size 256")

# Textual rewrites of every runnable block, applied in this order (regular expression -> replacement,
# reason). Continuation lines are joined first, so a pattern sees a whole command.
SUBSTITUTIONS: dict[str, tuple[str, str]] = {
    # -- elisions: `...` stands for arguments shown earlier in the docs
    r"disse-synth render \.\.\.": (f"disse-synth render {RENDER_ARGS}",
                                   "`...` elides the arguments of README step 3's render command"),
    r"--config paper \.\.\.": (f"--config paper {STEP4}",
                               "`...` elides the arguments of README step 4's first command"),
    r"data\.train=\.\.\.": (STEP4, "`...` elides the arguments of README step 4's first command"),
    r"model\.text\.checkpoint=\.\.\.": ("model.text.checkpoint=/data/clap/630k-audioset-best.pt",
                                        "`...`: the CLAP file of README step 4"),
    r"model\.text\.hf_dir=\.\.\.": ("model.text.hf_dir=/data/roberta-base", "`...`: the folder of README step 4"),
    # -- weights a user supplies
    r"model\.audio\.htsat\.checkpoint=\S+": (
        "model.audio.htsat.checkpoint=null",
        "LAION-CLAP audio weights fit only the full-size HTSAT-tiny, which the CPU stand-in of the paper "
        "config replaces by tests/test_train.py's SMALL HTSAT (trained from scratch)"),
    r"/data/clap/630k-audioset-best\.pt": (
        "clap/630k-audioset-best.pt", "stand-in LAION-CLAP file: a toy RoBERTa text branch + text_projection"),
    r"/data/roberta-base": ("roberta-base", "stand-in roberta-base folder: a 2-layer, 32-wide RoBERTa "
                                            "(514 positions) with a character vocabulary"),
    # -- configurations: the paper model is too large for CPU
    r"--config (demo|configs/demo\.yaml)\b": (r"--config \1 " + " ".join(TINY_RUN),
                                              "the demo model at the test size, one step (TINY_RUN)"),
    r"--config paper\b": (
        "--config demo model.text.kind=clap_roberta model.text.pooling=mean " + " ".join(TINY_RUN),
        "the paper config (HTSAT-tiny, RoBERTa-base, batch 64, 40 epochs) is too large for CPU: the demo "
        "config at the test size, with the paper's CLAP RoBERTa text branch (which reads CLAP's pooler, not the "
        "demo's MiniLM token attention) so its weight overrides apply"),
    r"--nproc_per_node 8": ("--standalone --nproc_per_node 1",
                            "one CPU rank (gloo) instead of 8 GPUs; --standalone picks a free port"),
    r"data\.num_workers=\d+": ("data.num_workers=0", "2 shared cores: data read in the training process"),
    # -- sizes
    r"disse-synth demo --out demo": (
        "disse-synth demo --out demo --types 4 --clips-per-type 3 --rooms 4 --positions-per-room 2 "
        "--rirs-per-clip 2 --clips-per-rir 2 --shard-size 2",
        "a demo of 24 samples (4 sound types x 8 RIRs), 4 shards per split, instead of 1,200"),
    r"--rooms 200": ("--rooms 4", "a bank of 4 rooms"),
    r"--positions-per-room 8": ("--positions-per-room 2", "2 positions per room"),
    r"--workers \S+": ("--workers 1", "one process: the output does not depend on the number of workers"),
    r"--rirs-per-clip \d+": ("--rirs-per-clip 2", "the stand-in splits hold 2 RIRs per split at least"),
    r"--clips-per-rir \d+": ("--clips-per-rir 2", "the stand-in splits hold 2 clips per split at least"),
    r"--shard-size 256": ("--shard-size 2", "a few shards per split from 16 samples"),
    r"\{000000\.\.000009\}": ("{000000..000001}", "the stand-in test split holds 2 shards"),
    r"\{000000\.\.000511\}": ("{000000..000003}", "the stand-in train split holds 4 shards"),
    r"(disse-synth official-grid .*)": (r"\1 --any-size", "the stand-in catalogues are 2 x 2, not 96 x 96"),
    r"benchmarks/eval\.py": ("benchmarks/eval.py --sizes 400 --reference-size 200",
                             "the documented sizes (5k reference, 20k, 100k) take minutes"),
}

# Outputs a block creates are removed from its copy of the sandbox first, so it creates them itself.
OUTPUT_PATTERNS = (r"disse-synth (?:demo|rirs|render|official-grid|official-rirs)\b.*?--out[ =](\S+)",
                   r"disse-synth upgrade \S+ (\S+)", r"train\.out_dir=(\S+)")


@dataclass(frozen=True)
class Block:
    id: str        # file:line of the opening fence
    lang: str      # "bash", "python" or "" (untyped)
    text: str      # dedented body
    section: str   # the ## heading it sits under


def extract_blocks() -> list[Block]:
    blocks = []
    for name in DOC_FILES:
        lines = (ROOT / name).read_text().splitlines()
        section, i = "", 0
        while i < len(lines):
            if lines[i].startswith("## "):
                section = lines[i]
            m = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
            if m:
                indent, body, start = len(m.group(1)), [], i
                i += 1
                while not re.match(r"^\s*```\s*$", lines[i]):
                    body.append(lines[i][indent:])
                    i += 1
                blocks.append(Block(f"{name}:{start + 1}", m.group(2), "\n".join(body) + "\n", section))
            i += 1
    return blocks


def commands(text: str) -> list[str]:
    """Shell lines with continuations joined, blank and comment lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def rule_exclusion(b: Block) -> str | None:
    """Why a block is not a runnable example, by rule; None for an example."""
    if b.lang == "python":
        try:
            compile(b.text, b.id, "exec")
        except SyntaxError:
            if re.search(r"\)\s*->\s*\w", b.text):
                return "API signature listing, not code"
            return None  # a broken example: it runs and fails
        return None
    if b.lang not in ("", "bash", "sh", "shell", "console"):
        return f"{b.lang} block"
    cmds = commands(b.text)
    if not cmds:
        return "no command"
    if all(re.match(r"(error|warning|skipped|note):", c) for c in cmds):
        return "sample output of a command"
    if b.lang == "" and not cmds[0].startswith(KNOWN_COMMANDS):
        return "printed output or diagram, not a command"
    if any(re.search(r"\[--[\w-]+", c) for c in cmds):
        return "usage synopsis"
    return None


BLOCKS = extract_blocks()
RUNNABLE = [b for b in BLOCKS if rule_exclusion(b) is None and b.id not in NOT_RUN]


def substitute(text: str) -> str:
    text = re.sub(r"\\\n\s*", " ", text)
    for pattern, (replacement, _) in SUBSTITUTIONS.items():
        text = re.sub(pattern, replacement, text)
    return text


def test_every_block_is_run_or_excluded_and_not_run_is_current():
    ids = {b.id for b in BLOCKS}
    assert len(BLOCKS) >= 30, [b.id for b in BLOCKS]
    stale = sorted(set(NOT_RUN) - ids)
    assert not stale, f"NOT_RUN names no block (the docs moved?): {stale}; blocks: {sorted(ids)}"
    for b in BLOCKS:
        if b.id in NOT_RUN:
            assert rule_exclusion(b) is None, f"{b.id} is excluded by rule already: drop it from NOT_RUN"
    assert {b.id for b in RUNNABLE} | set(NOT_RUN) | {b.id for b in BLOCKS if rule_exclusion(b)} == ids
    # every substitution still applies to some block (or to the sandbox's own commands)
    texts = [b.text for b in RUNNABLE] + list(SANDBOX_COMMANDS)
    for pattern in SUBSTITUTIONS:
        assert any(re.search(pattern, re.sub(r"\\\n\s*", " ", t)) for t in texts), f"unused: {pattern}"


def test_rules_recognise_what_is_not_an_example():
    by_id = {b.id: rule_exclusion(b) for b in BLOCKS}
    reasons = set(by_id.values()) - {None}
    assert {"usage synopsis", "sample output of a command", "printed output or diagram, not a command",
            "API signature listing, not code"} <= reasons, by_id


# ------------------------------------------------------------------------------------------------
# the sandbox: stand-ins for what a user supplies, and what earlier steps of the docs produce

# Commands the sandbox is built with, written as the docs write them and rewritten by SUBSTITUTIONS:
# chains that run side by side, each in order.
SANDBOX_CHAINS = (
    ("disse-synth demo --out demo",
     "disse-train --config demo data.train=demo/train data.val=demo/val train.out_dir=runs/demo"),
    ("disse-synth rirs --out rirs/ --rooms 200 --positions-per-room 8 --workers 16 --seed 0",
     "python split_rooms.py",  # the stand-in's user fixes the splits of its 4 rooms (docs/synthesis.md)
     f"disse-synth render {RENDER_ARGS} --out shards/",
     f"disse-train --config paper {STEP4} train.out_dir=runs/paper"),
    ("disse-synth official-grid --audio-catalogue audio_fixed.csv --rir-catalogue rir_fixed.csv "
     "--dry-root dry/ --out official_grid/ --workers 8",),
)
SANDBOX_COMMANDS = [c for chain in SANDBOX_CHAINS for c in chain]
# Blocks (and sandbox chains) run as this many processes at a time: most of each is a fresh
# interpreter importing torch and transformers, which overlaps well.
PARALLEL = 2
SR = 48000


def wrappers(folder: Path) -> Path:
    """``disse-*``, ``torchrun`` and ``python`` as scripts that run this interpreter."""
    folder.mkdir(parents=True, exist_ok=True)
    scripts = {name: f"-m {module}" for name, module in COMMANDS.items()}
    scripts.update({"torchrun": "-m torch.distributed.run", "python": "", "python3": ""})
    for name, args in scripts.items():
        p = folder / name
        p.write_text(f'#!/bin/sh\nexec "{sys.executable}" {args} "$@"\n')
        p.chmod(0o755)
    return folder


def environment(bin_dir: Path) -> dict[str, str]:
    """The test's environment (PYTHONPATH included) with the wrappers first on PATH, hubs offline, one
    thread a process (two run at a time), and a Slurm array task: the last of `--array=0-31`, which owns
    the last shard of the stand-in render."""
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", MPLBACKEND="Agg",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1",
               SLURM_ARRAY_TASK_ID="31", SLURM_CPUS_PER_TASK="1", PYTHONUNBUFFERED="1")
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def run_shell(script: str, cwd: Path, env: dict, timeout: int = 600, name: str = ".block.sh"
              ) -> subprocess.CompletedProcess:
    path = cwd / name
    path.write_text(script)
    try:
        return subprocess.run(["bash", "-e", path.name], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    finally:
        path.unlink(missing_ok=True)


def foa_noise(seconds: float, sr: int, az: float, seed: int) -> np.ndarray:
    """(T, 4) AmbiX noise arriving from azimuth ``az`` (a plane wave), peak 0.5."""
    x = np.random.default_rng(seed).standard_normal(int(seconds * sr))
    foa = np.stack([np.convolve(x, h)[: len(x)] for h in plane_wave_rir(az, 10.0, 64, delay=4)], 1)
    return (0.5 * foa / np.abs(foa).max()).astype(np.float32)


def tone_or_noise(i: int, seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(i)
    x = np.sin(2 * np.pi * (220 * (i + 1)) * t) if i % 2 else rng.standard_normal(len(t))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


CLIP_CAPTIONS = ["A bell rings twice.", "An engine hums steadily.", "Water pours into a glass.",
                 "A bird chirps.", "Keys jingle.", "A dog barks.", "Rain falls on a roof.", "A man speaks."]


def user_inputs(root: Path) -> None:
    """Clips (step 1), AudioCaps / Clotho CSVs, recordings, stand-in weights and embedding files."""


    # clips.csv + audio/: 8 clips of 2 s; the user fixed the splits (4 train, 2 val, 2 test)
    (root / "audio").mkdir()
    splits = ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    for i in range(8):
        sf.write(root / "audio" / f"c{i}.wav", tone_or_noise(i, 2.0, 16000), 16000)
    write_csv(root / "clips.csv", [{"audiocap_id": f"c{i}", "caption": CLIP_CAPTIONS[i], "split": splits[i]}
                                   for i in range(8)])
    (root / "split_rooms.py").write_text(
        "import pandas as pd\nd = pd.read_csv('rirs/rirs.csv')\n"
        "d['split'] = d.room_index.map({0: 'train', 1: 'train', 2: 'val', 3: 'test'})\n"
        "d.to_csv('rirs/rirs.csv', index=False)\n")
    # AudioCaps and Clotho caption files (README step 1's conversions)
    (root / "audiocaps").mkdir()
    write_csv(root / "audiocaps" / "train.csv", [
        {"audiocap_id": 91139 + i, "youtube_id": f"yt{i}", "start_time": 30, "caption": CLIP_CAPTIONS[i]}
        for i in range(3)])
    (root / "development").mkdir()
    clotho = ["Santa Motor.wav", "Bird.in.garden.wav", "01 A pug struggles to breathe 1_14_2008.wav"]
    for i, name in enumerate(clotho):
        sf.write(root / "development" / name, tone_or_noise(i, 1.0, 44100), 44100)
    write_csv(root / "clotho_captions_development.csv", [
        {"file_name": n, **{f"caption_{k}": f"{CLIP_CAPTIONS[i]} ({k})" for k in range(1, 6)}}
        for i, n in enumerate(clotho)])
    # recordings: 4-channel FOA at other rates and lengths (take1 is 12 s: two 10 s windows)
    sf.write(root / "take1.wav", foa_noise(12.0, 24000, 60.0, 1), 24000)
    sf.write(root / "take2.flac", foa_noise(3.0, 44100, -120.0, 2), 44100)
    for i, name in enumerate(("rec.wav", "rec2.wav", "a.wav", "b.wav")):
        sf.write(root / name, foa_noise(2.0, SR, 45.0 * i - 90, 3 + i), SR)
    # a FuMa (B-format) recording for README's foa_format="fuma" line
    sf.write(root / "bformat.wav", ambix_to_fuma(foa_noise(2.0, SR, 30.0, 7).T).T, SR)
    write_csv(root / "items.csv", [{"audio_path": "rec.wav", "caption": "A dog barks to the left."},
                                   {"audio_path": "rec2.wav", "caption": "Rain falls far behind."}])
    # roberta-base: tiny, with roberta-base's 514 positions (the release pads captions to 512 tokens)
    rb = _toy_roberta_dir(root / "roberta-base")
    cfg = RobertaConfig.from_pretrained(rb)
    cfg.max_position_embeddings = 514
    cfg.save_pretrained(rb)
    # LAION-CLAP file (its text branch and projection, as laion-clap names them)
    torch.manual_seed(0)
    roberta = RobertaModel(cfg)
    proj = torch.nn.Sequential(torch.nn.Linear(cfg.hidden_size, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512))
    state = {f"module.text_branch.{k}": v for k, v in roberta.state_dict().items()}
    state.update({f"module.text_projection.{k}": v for k, v in proj.state_dict().items()})
    state["module.audio_branch.bn0.weight"] = torch.ones(64)
    (root / "clap").mkdir()
    torch.save({"state_dict": state, "epoch": 45}, root / "clap" / "630k-audioset-best.pt")
    # the released checkpoint: random weights in its layout (the full-size fused HTSAT; the official
    # loader builds no other), the toy RoBERTa as text backbone
    model = DISSEOfficial(OfficialConfig(roberta_dir=str(rb)))
    torch.save({"model": model.state_dict(), "epoch": 20}, root / "disse_epoch20.pt")
    (root / "checkpoints").mkdir()
    os.link(root / "disse_epoch20.pt", root / "checkpoints" / "disse_epoch20.pt")
    (root / "my_official.yaml").write_text(
        "model:\n  preset: official\n  official:\n    checkpoint: checkpoints/disse_epoch20.pt\n"
        "    roberta_dir: roberta-base\n")
    # the release's evaluation catalogues (2 x 2) and the AudioCaps test clips they name
    (root / "dry").mkdir()
    sf.write(root / "dry" / "104274.mp3", tone_or_noise(0, 3.0, 44100), 44100)
    sf.write(root / "dry" / "107283.mp3", tone_or_noise(1, 3.0, 44100), 44100)
    write_csv(root / "audio_fixed.csv", [
        {"audiocap_id": "104274", "youtube_id": "a", "start_time": 0, "caption": "Rain is falling continuously"},
        {"audiocap_id": "107283", "youtube_id": "b", "start_time": 30, "caption": "A man speaks"}])
    write_csv(root / "rir_fixed.csv", [_rir_row("auto_000000", (4.0, 3.5, 3.0), 0.9, 0.84, 77, -46, 150),
                                       _rir_row("auto_000001", (6.0, 5.0, 3.0), 0.9, 2.05, -100, 42, 150)])
    # embeddings of "another model": this project's layout, and the release's for the grid
    rng = np.random.default_rng(0)
    n = 12

    def unit(d):
        x = rng.standard_normal((n, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    ids = {"source_id": np.array([f"s{i // 3}" for i in range(n)]),
           "space_id": np.array([f"r{i % 3}" for i in range(n)])}
    for name in ("emb.npz", "other_model.npz"):
        np.savez(root / name, audio_source=unit(64), text_source=unit(64), audio_space=unit(32),
                 text_space=unit(32), **ids)
    np.savez(root / "grid_embeddings.npz", audio_source=unit(512), text_source=unit(512), audio_spatial=unit(512),
             text_spatial=unit(512), source_id=ids["source_id"], spatial_id=ids["space_id"])
    # shards of an earlier schema (version 2) for `disse-synth upgrade`
    for split in ("train", "val"):
        write_shards(root / "old_shards", split, [2, 1], schema_version=2)
    # a virtual environment's commands (README: `source .venv/bin/activate`, `.venv/bin/...`)
    venv_bin = wrappers(root / ".venv" / "bin")
    (venv_bin / "activate").write_text(
        'VIRTUAL_ENV="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"\nexport PATH="$VIRTUAL_ENV/bin:$PATH"\n')
    # the repository's folders the docs name by relative path
    for name in ("configs", "benchmarks"):
        (root / name).symlink_to(ROOT / name, target_is_directory=True)


def unseen_inputs(root: Path) -> None:
    """docs/spatial.md's recipe: clips.csv with a path column and split=test; rirs_test.csv = the demo
    bank's test rows (paths made relative to the new CSV)."""
    (root / "unseen_audio").mkdir()
    rows = []
    for i in range(2):
        sf.write(root / "unseen_audio" / f"u{i}.wav", tone_or_noise(i + 3, 4.6, 22050), 22050)
        rows.append({"audiocap_id": f"u{i}", "caption": f"Someone says sentence number {i}.",
                     "path": f"unseen_audio/u{i}.wav", "split": "test"})
    (root / "clips.csv").unlink()
    write_csv(root / "clips.csv", rows)
    bank = root / "demo" / "inputs" / "rirs"
    with open(bank / "rirs.csv", newline="") as f:
        test = [r for r in csv.DictReader(f) if r["split"] == "test"]
    for r in test:
        r["rir_path"] = (bank / r["rir_path"]).relative_to(root).as_posix()
    write_csv(root / "rirs_test.csv", test)


# block inputs that differ from the shared sandbox's, prepared when a block names the file
SCENARIOS = {"rirs_test.csv": unseen_inputs}


def copy_tree(src: Path, dst: Path) -> None:
    """Copy, hard-linking files over 64 kB (made read-only in the sandbox: a block that wrote one in
    place would change every copy, and fails instead)."""
    def link_or_copy(s, d):
        if os.path.getsize(s) > 65536:
            os.link(s, d)
        else:
            shutil.copy2(s, d)
    shutil.copytree(src, dst, symlinks=True, copy_function=link_or_copy)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """(prepared sandbox folder, environment) for the blocks."""
    base = tmp_path_factory.mktemp("docs") / "sandbox"
    base.mkdir()
    env = environment(wrappers(base.parent / "bin"))
    user_inputs(base)

    def chain(cmds):
        for cmd in cmds:
            r = run_shell(substitute(cmd), base, env, name=f".sandbox-{SANDBOX_COMMANDS.index(cmd)}.sh")
            if r.returncode != 0 or "Traceback" in r.stdout + r.stderr:
                return f"sandbox step failed: {substitute(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
        return None

    with ThreadPoolExecutor(PARALLEL) as pool:
        failures = [f for f in pool.map(chain, SANDBOX_CHAINS) if f]
    assert not failures, "\n\n".join(failures)
    for p in base.rglob("*"):
        if p.is_file() and not p.is_symlink() and p.stat().st_size > 65536:
            p.chmod(0o444)
    return base, env


def block_outputs(script: str) -> set[str]:
    out = set()
    for line in script.splitlines():
        for pattern in OUTPUT_PATTERNS:
            if "--resume" in line and pattern.startswith("train"):
                continue
            out.update(m.group(1).strip("'\"") for m in re.finditer(pattern, line))
    return out


def python_source(b: Block) -> str:
    """The block after the earlier Python blocks of its section (a later block may use their names)."""
    same = [x for x in BLOCKS if x.lang == "python" and x.id.split(":")[0] == b.id.split(":")[0]
            and x.section == b.section]
    earlier = same[: same.index(b)]
    return "".join(x.text + "\n" for x in earlier) + b.text


def missing_modules(source: str) -> list[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return sorted(n for n in names if importlib.util.find_spec(n) is None)


def run_block(block: Block, base: Path, env: dict, work: Path) -> tuple[str, subprocess.CompletedProcess | str]:
    """Run one block in ``work``, a fresh copy of the sandbox -> (what ran, its result or a skip reason)."""
    if block.lang == "python":
        source = substitute(python_source(block))
        missing = missing_modules(source)
        if missing:
            return source, f"needs {', '.join(missing)}, not installed here (the doc says where it installs)"
    copy_tree(base, work)
    for name, prepare in SCENARIOS.items():
        if name in block.text:
            prepare(work)
    if block.lang == "python":
        (work / ".block.py").write_text(source)
        return source, subprocess.run([sys.executable, ".block.py"], cwd=work, env=env, capture_output=True,
                                      text=True, timeout=600)
    script = substitute(block.text)
    for out in block_outputs(script):
        target = work / out
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
    return script, run_shell(script, work, env)


@pytest.fixture(scope="module")
def results(request, sandbox, tmp_path_factory):
    """Every block this session selected, run PARALLEL at a time: {id: (what ran, result)}."""
    base, env = sandbox
    wanted = {item.callspec.params["block"].id for item in request.session.items
              if getattr(item, "callspec", None) and "block" in item.callspec.params}
    # the longest first (each model a block loads costs seconds), so the two lanes end together
    blocks = sorted((b for b in RUNNABLE if b.id in wanted),
                    key=lambda b: -len(re.findall(r"disse-(?:train|eval|embed)|torchrun|Embedder\.load", b.text)))
    root = tmp_path_factory.mktemp("blocks")

    def one(b: Block):
        work = root / re.sub(r"\W+", "_", b.id)
        t0 = time.perf_counter()
        try:
            ran = run_block(b, base, env, work)
        except subprocess.TimeoutExpired as e:  # fails this block only, not every block of the session
            said = [x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr)]
            ran = (str(e.cmd), subprocess.CompletedProcess(e.cmd, -9, said[0],
                                                           f"{said[1]}\ntimed out after {e.timeout} s"))
        result = ran[1]
        if not isinstance(result, str):  # what it printed stays beside its folder, for reading
            work.with_suffix(".log").write_text(f"{time.perf_counter() - t0:.1f} s\n{ran[0]}\n---\n"
                                                f"{result.stdout}\n--- stderr ---\n{result.stderr}")
            if result.returncode == 0:
                shutil.rmtree(work, ignore_errors=True)  # checkpoints: ~230 MB a training run
        return ran

    with ThreadPoolExecutor(PARALLEL) as pool:
        return dict(zip((b.id for b in blocks), pool.map(one, blocks)))


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_block_runs(block, results):
    script, r = results[block.id]
    if isinstance(r, str):
        pytest.skip(r)
    output = r.stdout + r.stderr
    assert r.returncode == 0 and "Traceback" not in output, \
        f"{block.id} failed (status {r.returncode}); ran:\n{script}\n--- output ---\n{output[-6000:]}"
