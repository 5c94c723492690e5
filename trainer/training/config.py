"""The training config: one YAML file (configs/demo.yaml, configs/paper.yaml) -> :class:`TrainConfig`.

Every field can be overridden on the command line as ``section.field=value`` (parsed as YAML);
unknown names and wrong types are a :class:`disse.schemas.SchemaError` naming the field.
The resolved config is written to the run folder as ``config.yaml`` and into every checkpoint.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from disse.schemas import SchemaError
from disse.schemas.config import ConfigSources, Source, _build, _src, load_config_sources
from disse.trainer.data.loader import DataConfig
from disse.trainer.training.losses import LossConfig
from disse.trainer.model.delsa import ModelConfig


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr``."""

    lr: float = 1e-4
    weight_decay: float = 0.05        # not applied to biases, norms, logit scales (1-D parameters)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0            # max global grad norm; 0 = no clipping


@dataclass
class LoopConfig:
    """How long and how: epochs of ``sizes.json`` samples, accumulation, precision, freezing."""

    out_dir: str = "runs/demo"        # run folder: config.yaml, log.jsonl, checkpoints/
    epochs: int = 1
    max_steps: int = 0                # > 0: total optimiser steps instead of epochs x steps/epoch
    stop_after: int = 0               # > 0: stop (with a checkpoint) after this many steps; the LR
                                      # schedule still spans the whole run (preemptible slots)
    accum_steps: int = 1              # micro-batches per optimiser step (exact contrastive loss)
    precision: str = "auto"           # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    device: str = "auto"              # auto | cpu | cuda
    seed: int = 0                     # model init, dropout
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes kept frozen
    save_every_steps: int = 0         # > 0: also keep checkpoints/step_XXXXXXX.pt this often
    find_unused_parameters: bool = False  # DDP option, for models with conditional branches
    threads: int = 0                  # > 0: torch.set_num_threads (CPU runs)
    prefetch: bool = True             # prepare the next step's inputs (tokens, new frozen-text states) in a
                                      # helper thread during the current step; results are the same either way
    # official preset: each save also writes the release's layout (checkpoints/latest_release.pt, ...;
    # {"model_state_dict", "epoch", "target_stats"}), what the release, disse-eval and disse-embed read
    export_release: bool = False


@dataclass
class LogConfig:
    every_steps: int = 10             # JSONL / wandb / progress-bar refresh period
    progress: bool = True             # tqdm progress bar on rank 0
    wandb: bool = False               # log to Weights & Biases (pip install wandb)
    wandb_project: str = "disse"
    wandb_mode: str = "offline"       # used when WANDB_MODE is not set: offline | online | disabled
    run_name: str = ""


@dataclass
class EvalConfig:
    """Validation on ``data.val`` with disse-eval's metrics."""

    every_steps: int = 0              # > 0: validate every N steps (and at each epoch end)
    each_epoch: bool = True
    at_start: bool = False            # validate the untrained model at step 0 (a baseline)
    max_items: int = 0                # > 0: validate on the first N items only
    best_metric: str = "SPA/t2a/R@1"  # key of evaluate_embeddings' output that picks best.pt
    best_mode: str = "max"            # max | min
    caption_rules: str = ""           # rule table for zero-shot prompts; '' = packaged v1


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _check(ok: bool, field_name: str, message: str, source: Source) -> None:
    if not ok:
        raise SchemaError(message, file=_src(source, field_name), field=field_name)


# Numeric fields with a meaningful range: (field, low, high, what 0 / the bound means). A bound in
# square brackets is included, in round ones excluded; None = unbounded.
_RANGES: tuple[tuple[str, str, str], ...] = (
    ("data.batch_size", "[1", ""),
    ("data.num_workers", "[0", "0 = decode in the main process"),
    ("data.shuffle_buffer", "[0", "0 = no shuffle buffer"),
    ("data.seed", "[0", ""),
    ("data.prefetch_factor", "[1", ""),
    ("data.val_batch_size", "[1", ""),
    ("data.val_num_workers", "[0", "0 = decode in the main process"),
    ("data.space_caption_drop", "[0, 1]", ""),
    ("data.shard_retries", "[0", "0 = a broken remote shard is skipped at once"),
    ("optim.lr", "(0", ""),
    ("optim.weight_decay", "[0", ""),
    ("optim.eps", "(0", ""),
    ("optim.warmup_steps", "[0", "0 = no warm-up"),
    ("optim.min_lr_ratio", "[0, 1]", ""),
    ("optim.grad_clip", "[0", "0 = off"),
    ("train.max_steps", "[0", "0 = train.epochs epochs"),
    ("train.epochs", "[0", ""),
    ("train.stop_after", "[0", "0 = run to the end"),
    ("train.accum_steps", "[1", ""),
    ("train.seed", "[0", ""),
    ("train.save_every_steps", "[0", "0 = only latest.pt and best.pt"),
    ("train.threads", "[0", "0 = torch's default"),
    ("log.every_steps", "[1", ""),
    ("eval.every_steps", "[0", "0 = at epoch ends only (eval.each_epoch)"),
    ("eval.max_items", "[0", "0 = every item of data.val"),
    ("loss.source_weight", "[0", "0 = off"),
    ("loss.space_weight", "[0", "0 = off"),
    ("loss.direction_weight", "[0", "0 = off"),
    ("loss.area_weight", "[0", "0 = off"),
    ("loss.distance_weight", "[0", "0 = off"),
    ("loss.t30_weight", "[0", "0 = off"),
    ("loss.attribute_weight", "[0", "0 = off"),
    ("loss.descriptor_weight", "[0", "0 = off"),
    ("loss.source_adversary_weight", "[0", "0 = off"),
    ("loss.source_critic_weight", "[0", "0 = off"),
    ("loss.independence_weight", "[0", "0 = off"),
    ("loss.source_independence_weight", "[0", "0 = off"),
    ("loss.text_source_independence_weight", "[0", "0 = off"),
    ("loss.room_independence_weight", "[0", "0 = off"),
    ("loss.source_caption_distill_weight", "[0", "0 = off"),
    ("loss.caption_distill_weight", "[0", "0 = off; acts only where data.space_caption_drop > 0"),
    ("loss.min_logit_scale", "(0", ""),
    ("model.shared_dim", "[1", ""),
    ("model.source_dim", "[1", ""),
    ("model.space_dim", "[1", ""),
    ("model.head_hidden", "[0", "0 = a single linear layer"),
    ("model.phys_hidden", "[1", ""),
    ("model.source_adversary_buckets", "[0", "0 = no source adversary"),
    ("model.source_adversary_hidden", "[1", ""),
    ("model.source_critic_hidden", "[0", "0 = no source critic"),
    ("model.dropout", "[0, 1)", ""),
    ("model.audio.dropout", "[0, 1)", ""),
    ("model.init_temperature", "(0", ""),
    ("model.text.max_length", "[1", ""),
)


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for k in dotted.split("."):
        node = getattr(node, k, None)
    return node


def _in_range(value: float, interval: str) -> tuple[bool, str]:
    """``value`` against ``"[1"`` (>= 1), ``"(0"`` (> 0) or ``"[0, 1)"`` -> (ok, the rule in words)."""
    lo_text, _, hi_text = interval.partition(",")
    lo = float(lo_text[1:])
    ok = value >= lo if lo_text[0] == "[" else value > lo
    words = f"{'>=' if lo_text[0] == '[' else '>'} {lo_text[1:]}"
    if hi_text:
        hi = float(hi_text.strip()[:-1])
        ok = ok and (value <= hi if hi_text.strip()[-1] == "]" else value < hi)
        words = f"in {interval}"
    return ok, words


def check_config(cfg: TrainConfig, source: Source = "config") -> TrainConfig:
    """Value checks the type system cannot express; each error names its field and where its value came
    from (``source``: a name, or the :class:`ConfigSources` of the loaded config)."""
    d, o, t, lg, e, loss = cfg.data, cfg.optim, cfg.train, cfg.log, cfg.eval, cfg.loss
    _check(bool(d.train), "data.train", "give the training shards (brace pattern or directory)", source)
    for name, interval, note in _RANGES:
        value = _get(cfg, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue  # a field a model preset does not have (None = its default)
        _check(math.isfinite(value), name, f"must be a finite number, got {value!r}", source)
        ok, words = _in_range(value, interval)
        _check(ok, name, f"must be {words}{f' ({note})' if note else ''}, got {value!r}", source)
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas",
           f"need two values in [0, 1), got {o.betas!r}", source)
    _check(t.epochs >= 1 or t.max_steps > 0, "train.epochs",
           f"must be >= 1 (or set train.max_steps), got {t.epochs!r}", source)
    _check(loss.max_logit_scale >= loss.min_logit_scale, "loss.max_logit_scale",
           f"must be >= loss.min_logit_scale ({loss.min_logit_scale!r}), got {loss.max_logit_scale!r}", source)
    _check(t.precision in ("auto", "fp32", "bf16", "fp16"), "train.precision",
           f"must be auto, fp32, bf16 or fp16, got {t.precision!r}", source)
    _check(t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"), "train.device",
           f"must be auto, cpu or cuda, got {t.device!r}", source)
    _check(lg.wandb_mode in ("offline", "online", "disabled"), "log.wandb_mode",
           "must be offline, online or disabled", source)
    _check(e.best_mode in ("max", "min"), "eval.best_mode", "must be max or min", source)
    _check(cfg.model.preset in ("project", "official"), "model.preset",
           f"must be project (DELSA) or official (the release's model), got {cfg.model.preset!r}", source)
    _check(not t.export_release or cfg.model.preset == "official", "train.export_release",
           "the release's checkpoint layout holds the official model only (model.preset: official)", source)
    _check(not loss.caption_distill_weight or d.space_caption_drop > 0,
           "loss.caption_distill_weight", "acts on the samples whose space head reads the spatial caption: "
           "set data.space_caption_drop > 0 too", source)
    _check(not loss.source_caption_distill_weight or cfg.model.preset == "official" or cfg.model.text_input == "full",
           "loss.source_caption_distill_weight", "pulls the full caption's text source embedding to the clip's own "
           "caption's: the text source head must read the full caption (model.text_input full)", source)
    _check(loss.full_caption_source_grad or cfg.model.preset == "official" or cfg.model.text_input == "full",
           "loss.full_caption_source_grad", "false trains the audio side against the clip's own caption instead of "
           "the full caption the text source head reads: set model.text_input full", source)
    return cfg


# YAML 1.1 (PyYAML) reads 3e-4 as a string: only 3.0e-4 is a float there. People type 3e-4.
_SCI = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _parse_value(raw: str) -> Any:
    """An override's value: YAML, except that ``3e-4`` is a float (as in YAML 1.2)."""
    return float(raw) if _SCI.fullmatch(raw.strip()) else yaml.safe_load(raw)


def read_train_config(path: str | Path | None,
                      overrides: list[str] | tuple[str, ...] = ()) -> tuple[TrainConfig, ConfigSources]:
    """:func:`load_train_config`, also returning which input set each field (:func:`locate_error` uses it)."""
    cfg, sources = load_config_sources(TrainConfig, path, list(overrides), parse_value=_parse_value)
    return check_config(cfg, sources), sources


def load_train_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML preset, apply ``section.field=value`` overrides, check values. Errors name the
    override (``override 'data.batch_size=0'``) when one set the bad value, else the file."""
    return read_train_config(path, overrides)[0]


_SECTIONS = {f.name for f in dataclasses.fields(TrainConfig)}


def locate_error(exc: SchemaError, sources: ConfigSources) -> SchemaError:
    """An error raised later (training) about a config field, e.g. ``train.freeze``, that names no file:
    the same error naming the override or file that set the field. Other errors are returned as they are."""
    if exc.file is not None or not exc.field or exc.field.split(".")[0] not in _SECTIONS:
        return exc
    return SchemaError(exc.reason, file=sources(exc.field), row=exc.row, field=exc.field)


def config_from_dict(data: dict, source: str = "checkpoint") -> TrainConfig:
    """Rebuild a TrainConfig saved as a plain dict (checkpoints, config.yaml)."""
    return _build(TrainConfig, data, "", source)
