"""The training loop: streaming batches -> DELSA, AdamW + warm-up/cosine, AMP, exact accumulation, DDP.

Gradient accumulation keeps the contrastive loss exact over the whole accumulated batch (as
open_clip's ``accum_freq``): a first no-grad pass computes the features of every micro-batch;
then each micro-batch is recomputed with gradients and spliced into the cached features, and the
loss over all of them is back-propagated. The logit scales, which every replay's loss uses directly
rather than through the live features, are live in the last replay only. Summed over micro-batches
this is the gradient of the big-batch loss for every parameter, logit scales and physical heads
included (up to dropout noise between the two passes). Under torchrun the features are also
gathered from all ranks with gradients (distributed.gather_with_grad), so the loss is the one of
the global batch ``batch_size x accum_steps x world``.

Model presets: the loop asks an *objective* (:func:`objective_for`) for what differs between them - the
loader's inputs, the model, one micro-batch's forward inputs and loss metadata, the loss, validation and
extra files per save. :class:`ProjectObjective` is this project's DELSA (the functions below);
:class:`disse.trainer.training.official.OfficialObjective` is the release's DISSEOfficial. Everything else
(streaming, AMP, DDP, accumulation, resume, logging) is this one loop for both.
"""
from __future__ import annotations

import contextlib
import difflib
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from disse.schemas import CaptionRules, SchemaError, load_caption_rules
from disse.schemas.config import config_to_dict, dump_config
from disse.trainer.evaluation.evaluate import embed, evaluate_embeddings
from disse.trainer.model.delsa import DELSA
from disse.trainer.model.text_encoder import TextEncoder
from disse.trainer.training import checkpoint as ckpt
from disse.trainer.training.config import TrainConfig
from disse.trainer.data.loader import (ShardList, StreamPosition, check_shard_rules, check_training_preset,
                                       eval_loader, keep_freed_memory, resolve_shards, shard_rules, steps_per_epoch,
                                       train_loader)
from disse.trainer.training.distributed import DistInfo, barrier, cleanup, gather_tree, init_distributed
from disse.trainer.training.logging_utils import RunLogger
from disse.trainer.training.losses import DELSALoss
from disse.trainer.training.official import OfficialObjective

log = logging.getLogger("disse.train")


# --------------------------------------------------------------------------- model plumbing

class DualEncoder(nn.Module):
    """One forward for everything the loss needs, so DDP's hooks see a single forward per backward.

    ``tokens`` holds the source-head texts then the space-head texts (2B rows, one text pass), or
    B rows read by both heads when the two lists are equal (``DELSA.text_pairs``).

    ``space_of_caption``: also return the space head's embedding of the source head's text (the full
    caption under ``text_input: full``), for ``LossConfig.caption_distill_weight``. Fixed per run, not per
    batch: under DDP every rank must gather the same keys, and whether a rank's batch has 2B or B text
    rows depends on its data. ``source_tokens`` (B rows, the clips' own captions without spatial words):
    also return their source head's embedding as ``source_of_source_text``, for
    ``LossConfig.source_caption_distill_weight`` and ``LossConfig.full_caption_source_grad``.
    """

    def __init__(self, model: nn.Module, space_of_caption: bool = False) -> None:
        super().__init__()
        self.model = model
        self.space_of_caption = space_of_caption

    def forward(self, waveform: torch.Tensor, iv: torch.Tensor, tokens: dict[str, torch.Tensor],
                source_tokens: dict[str, torch.Tensor] | None = None) -> dict:
        audio = self.model.encode_audio(waveform, iv)
        text = self.model.encode_text(tokens)
        of_source_text = None
        if source_tokens is not None:
            with torch.no_grad():  # a target only (distillation, split source contrast): no graph for it
                of_source_text = self.model.encode_text(source_tokens)["source"]
        b = waveform.shape[0]
        of_caption = text["space"][:b]  # B rows: both heads read the same text, so this is text["space"]
        if text["source"].shape[0] == 2 * b:
            text = {"source": text["source"][:b], "space": text["space"][b:]}
        if self.space_of_caption:
            text["space_of_caption"] = of_caption
        if of_source_text is not None:
            text["source_of_source_text"] = of_source_text
        if len(getattr(self.model, "descriptor_heads", ())):
            audio["descriptors"] = self.model.descriptor_logits(audio["space"])
            text["descriptors"] = self.model.descriptor_logits(text["space"])
        if getattr(self.model, "source_adversary", None) is not None:
            audio["source_adversary"] = self.model.source_adversary(audio["space"])
        if getattr(self.model, "source_critic", None) is not None:
            audio["source_critic"] = self.model.source_critic(audio["space"])
        return {"audio": audio, "text": text,
                "scales": {"source": self.model.logit_scale_source, "space": self.model.logit_scale_space}}


def resolve_caption_rules(cfg: TrainConfig, shards: ShardList) -> CaptionRules:
    """The rule table of the run: ``data.caption_rules`` when given, else the packaged table the training shards
    were captioned with (``render.rules_version``; v1 for shards that do not say). ``eval.caption_rules`` defaults
    to it. Both are written into ``cfg`` (so config.yaml and the checkpoints carry them); a table that is not
    the shards' is one SchemaError naming ``data.caption_rules``, before any worker starts."""
    if not cfg.data.caption_rules:
        name, _version, _where = shard_rules(shards, what="data.train")
        if name and name != "v1":
            cfg.data.caption_rules = name
    rules = load_caption_rules(cfg.data.caption_rules or None)
    check_shard_rules(shards, rules, field="data.caption_rules")
    if not cfg.eval.caption_rules:
        cfg.eval.caption_rules = cfg.data.caption_rules
    return load_caption_rules(cfg.eval.caption_rules or None)


def build_model(cfg: TrainConfig) -> nn.Module:
    """The DELSA model of ``cfg.model``. With ``loss.descriptor_weight > 0`` and no
    ``model.descriptor_classes`` yet, those are filled in (in ``cfg``, so the resolved config and the
    checkpoints carry them) from the rule table the captions are (re)built with."""
    if cfg.loss.descriptor_weight > 0 and not cfg.model.descriptor_classes:
        rules = load_caption_rules(cfg.data.caption_rules or None)
        cfg.model.descriptor_classes = {a: list(attr.labels) for a, attr in rules.attributes.items()}
    return DELSA(cfg.model)


def build_loss(cfg: TrainConfig) -> Any:
    return DELSALoss(cfg.loss)


class ProjectObjective:
    """This project's DELSA (``model.preset: project``): :func:`build_model`, :func:`build_loss`,
    :class:`DualEncoder`, :func:`micro_inputs`, :func:`micro_meta`, :func:`validate`."""

    inputs = "project"   # the loader decodes this project's features and W
    name = "project"

    def __init__(self, source_text: bool = False) -> None:
        self.source_text = source_text  # also feed the clips' own captions (objective_for says when)

    def prepare(self, cfg: TrainConfig, shards: ShardList, val: ShardList | None) -> None:
        check_training_preset(shards, what="data.train")  # before building the model: one error, not one per sample
        if val is not None:
            check_training_preset(val, what="data.val")

    def build_model(self, cfg: TrainConfig) -> nn.Module:
        return build_model(cfg)

    def build_loss(self, cfg: TrainConfig) -> Any:
        return build_loss(cfg)

    def wrap(self, model: nn.Module, cfg: TrainConfig) -> nn.Module:
        return DualEncoder(model, space_of_caption=cfg.loss.caption_distill_weight > 0)

    def micro_inputs(self, model: nn.Module, batch: dict, device: torch.device) -> tuple:
        return micro_inputs(model, batch, device, source_text=self.source_text)

    def micro_meta(self, model: nn.Module, batch: dict, device: torch.device) -> dict:
        return micro_meta(batch, device, model)

    def validate(self, model: nn.Module, val: ShardList, cfg: TrainConfig, device: torch.device, rules: Any
                 ) -> dict[str, float]:
        return validate(model, val, cfg, device, "fp32", rules)

    def exports(self, cfg: TrainConfig, state: dict, name: str) -> dict[str, dict]:
        return {}


def objective_for(cfg: TrainConfig) -> ProjectObjective | OfficialObjective:
    """The objective of ``cfg.model.preset``."""
    source_text = cfg.loss.reads_own_captions
    if cfg.model.preset == "official":
        return OfficialObjective(source_text=source_text)
    return ProjectObjective(source_text=source_text)


def _freeze_targets(names: list[str], prefix: str) -> list[str]:
    """Parameter names under ``prefix``; ``model.`` in front refers to the model's own names (the config
    section is ``model``, so ``model.text`` is the parameter prefix ``text``)."""
    hits = [n for n in names if n == prefix or n.startswith(prefix + ".")]
    if not hits and prefix.startswith("model."):
        return _freeze_targets(names, prefix[len("model."):])
    return hits


def _unknown_freeze_prefix(names: list[str], prefix: str) -> str:
    """The message for a prefix that matches nothing: the closest module names and the valid ones."""
    rel = prefix[len("model."):] if prefix.startswith("model.") else prefix
    parts = rel.split(".")
    # the deepest module path that exists, and the names one level below it
    known, depth = "", 0
    for i in range(1, len(parts)):
        if _freeze_targets(names, ".".join(parts[:i])):
            known, depth = ".".join(parts[:i]), i
    below = sorted({n.split(".")[depth] for n in names if not known or n.startswith(known + ".")})
    wrong = parts[depth]
    close = [b for b in below if wrong.startswith(b) or b.startswith(wrong)]
    close = close or difflib.get_close_matches(wrong, below, n=1, cutoff=0.6)
    lead = ("model." if prefix.startswith("model.") else "") + (f"{known}." if known else "")
    hint = f"did you mean '{lead}{close[0]}'? " if close else ""
    where = f"modules under '{known}'" if known else "top-level modules"
    return (f"no parameter matches {prefix!r}; {hint}{where}: {below} (a prefix may start with 'model.', "
            f"e.g. model.text)")


def apply_freeze(model: nn.Module, prefixes: list[str]) -> int:
    """Freeze parameters whose name starts with any prefix (``audio.spatial``, or ``model.audio.spatial``);
    returns how many tensors were frozen. A prefix that matches nothing is a SchemaError on
    ``train.freeze`` listing the valid module names."""
    names = [n for n, _ in model.named_parameters()]
    frozen = 0
    for prefix in prefixes:
        hits = set(_freeze_targets(names, prefix))
        if not hits:
            raise SchemaError(_unknown_freeze_prefix(names, prefix), field="train.freeze")
        for n, p in model.named_parameters():
            if n in hits:
                p.requires_grad_(False)
                frozen += 1
    return frozen


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on 1-D parameters (biases, norm gains, logit scales)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    o = cfg.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=o.lr, betas=tuple(o.betas), eps=o.eps)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast_ctx(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _to(tree: Any, device: torch.device) -> Any:
    if isinstance(tree, dict):
        return {k: _to(v, device) for k, v in tree.items()}
    if torch.is_tensor(tree):
        return tree.to(device, non_blocking=True)
    return tree


def _float(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _float(v) for k, v in tree.items()}
    return tree.float() if torch.is_tensor(tree) and tree.is_floating_point() else tree


def _cat(trees: list[Any]) -> Any:
    first = trees[0]
    if isinstance(first, dict):
        return {k: _cat([t[k] for t in trees]) for k in first}
    if torch.is_tensor(first) and first.dim() > 0:
        return torch.cat(trees, dim=0)
    return first


def _detach(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _detach(v) for k, v in tree.items()}
    return tree.detach() if torch.is_tensor(tree) else tree


# --------------------------------------------------------------------------- one optimiser step

@dataclass
class StepContext:
    net: nn.Module                 # the objective's wrapper (DualEncoder, ...), DDP-wrapped under torchrun
    raw: nn.Module                 # the same, unwrapped (no-grad pass)
    model: nn.Module
    loss_fn: Any
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    info: DistInfo
    precision: str
    grad_clip: float
    params: list = field(default_factory=list)
    objective: Any = field(default_factory=ProjectObjective)


def micro_inputs(model: nn.Module, batch: dict, device: torch.device, source_text: bool = False) -> tuple:
    """:class:`DualEncoder`'s inputs for a Batch; ``source_text``: also the tokens of the clips' own captions."""
    src, spa = model.text_pairs(batch)
    tokens = model.tokenize(src if src == spa else src + spa)
    inputs = (batch["waveform"].to(device, non_blocking=True), batch["iv"].to(device, non_blocking=True),
              _to(dict(tokens), device))
    return inputs + (_to(dict(model.tokenize(list(batch["source_text"]))), device),) if source_text else inputs


@dataclass
class Prepared:
    """A step's inputs, made before its forward (:func:`prepare_step`)."""
    inputs: list[tuple]                                      # objective.micro_inputs of each micro-batch
    token_sets: list[dict] = field(default_factory=list)     # their text token dicts, in forward order
    text_states: list[dict] = field(default_factory=list)    # TextEncoder.missing_states of token_sets

    def admit(self, model: nn.Module) -> None:
        """Put the text states into the model's text cache (once; on the thread that trains)."""
        if self.token_sets:
            model.text.admit(self.token_sets, self.text_states)
            self.token_sets, self.text_states = [], []


def prepare_step(ctx: StepContext, micro: list[dict]) -> Prepared:
    """Each micro-batch's model inputs (tokenised, on the device) and the frozen text backbone's states of
    the texts it has not cached yet (:meth:`TextEncoder.missing_states`).

    It reads the model and changes nothing, so the loop runs it for step k + 1 in a helper thread while
    step k trains (``train.prefetch``), once step k's states are admitted (:meth:`Prepared.admit`): the
    demo's captions are new every epoch (rotated directions, rephrased), and on 2 CPU cores their ~32
    MiniLM passes a step then run beside the audio side instead of before it."""
    device = ctx.info.device
    inputs = [ctx.objective.micro_inputs(ctx.model, b, device) for b in micro]
    text = getattr(ctx.model, "text", None)
    if not isinstance(text, TextEncoder) or not text.caches:
        return Prepared(inputs)
    token_sets = [x for args in inputs for x in args if isinstance(x, dict)]  # DualEncoder's text passes, in order
    with torch.no_grad(), autocast_ctx(ctx.precision, device):
        return Prepared(inputs, token_sets, text.missing_states(token_sets))


def micro_meta(batch: dict, device: torch.device, model: nn.Module | None = None) -> dict:
    meta = {"source_id": batch["source_id"].to(device), "space_id": batch["space_id"].to(device),
            "attribute_ids": batch["attribute_ids"].to(device), "targets": _to(batch["targets"], device)}
    if model is not None and len(getattr(model, "descriptor_heads", ())):
        meta["descriptor_index"] = model.descriptor_index(batch["descriptors"]).to(device)
    if "space_caption_dropped" in batch:
        meta["space_caption_dropped"] = batch["space_caption_dropped"].to(device)
    return meta


def _loss(ctx: StepContext, feats: dict, meta: dict) -> tuple[torch.Tensor, dict]:
    audio = _float(gather_tree(feats["audio"], ctx.info, grad=True))
    text = _float(gather_tree(feats["text"], ctx.info, grad=True))
    return ctx.loss_fn(audio, text, meta, *feats["scales"].values())  # DELSA: source, space; official: one


def train_step(ctx: StepContext, micro: list[dict], prepared: Prepared | None = None
               ) -> tuple[float, dict[str, float], float]:
    """One optimiser step over the micro-batches -> (loss, {term: value}, grad norm before clipping).
    ``prepared``: :func:`prepare_step` of ``micro``, when made ahead."""
    device = ctx.info.device
    prepared = prepared if prepared is not None else prepare_step(ctx, micro)
    prepared.admit(ctx.model)
    inputs = prepared.inputs
    meta = gather_tree(_cat([ctx.objective.micro_meta(ctx.model, b, device) for b in micro]), ctx.info, grad=False)
    ctx.optimizer.zero_grad(set_to_none=True)
    if len(micro) == 1:
        with autocast_ctx(ctx.precision, device):
            feats = ctx.net(*inputs[0])
        loss, terms = _loss(ctx, feats, meta)
        ctx.scaler.scale(loss).backward()
    else:
        with torch.no_grad(), autocast_ctx(ctx.precision, device):
            cached = [_detach(ctx.raw(*x)) for x in inputs]
        for j, x in enumerate(inputs):
            last = j == len(inputs) - 1
            sync = contextlib.nullcontext() if last or not ctx.info.distributed else ctx.net.no_sync()
            with sync:
                with autocast_ctx(ctx.precision, device):
                    live = ctx.net(*x)
                # Each replay's loss is the whole batch's loss, but only its own micro-batch's
                # features (and physical predictions) are live, so summed over the replays every
                # feature-borne gradient is counted once. The logit scales enter every replay's
                # loss directly: left live in all A replays, they would get A x their gradient.
                # They stay live in the last replay only (the one DDP synchronises, so they have
                # their gradient when the reducer runs), detached in the others.
                scales = live["scales"] if last else _detach(live["scales"])
                spliced = {"audio": _cat([live["audio"] if i == j else c["audio"] for i, c in enumerate(cached)]),
                           "text": _cat([live["text"] if i == j else c["text"] for i, c in enumerate(cached)]),
                           "scales": scales}
                loss, terms = _loss(ctx, spliced, meta)
                ctx.scaler.scale(loss).backward()
    ctx.scaler.unscale_(ctx.optimizer)
    if ctx.grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(ctx.params, ctx.grad_clip)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in ctx.params
                                                     if p.grad is not None]))
    ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    return float(loss.detach()), {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()}, float(norm)


# --------------------------------------------------------------------------- validation

def validate(model: nn.Module, val: ShardList, cfg: TrainConfig, device: torch.device, precision: str,
             rules: Any) -> dict[str, float]:
    """disse-eval's metrics on the fixed validation shards (rank 0 only)."""
    loader = eval_loader(val, cfg.data.val_batch_size, cfg.data.val_num_workers, retries=cfg.data.shard_retries)
    with autocast_ctx(precision, device):
        emb = embed(model, loader, device, rules, max_items=cfg.eval.max_items or None)
    return evaluate_embeddings(emb, rules)


# --------------------------------------------------------------------------- the run

@dataclass
class RunResult:
    out_dir: Path
    step: int
    total_steps: int
    last_loss: float
    best: dict
    bad_data: dict


def _gather_objects(obj: Any, info: DistInfo) -> list:
    if not info.distributed:
        return [obj]
    out: list = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def train(cfg: TrainConfig, resume: str | None = None) -> RunResult:
    """Train per ``cfg`` (single process, or one rank under torchrun). ``resume``: 'latest' or a path."""
    info = init_distributed(cfg.train.device)
    try:
        return _train(cfg, info, resume)
    finally:
        cleanup(info)


def _train(cfg: TrainConfig, info: DistInfo, resume: str | None) -> RunResult:
    t = cfg.train
    device = info.device
    precision = resolve_precision(t.precision, device)
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    keep_freed_memory()  # a CPU step's large temporaries are reused, not page-faulted in again (loader.py)
    out_dir = Path(t.out_dir)
    resume_path = ckpt.resolve_resume(resume, out_dir)
    # read before anything is built: a file that is not a checkpoint of this project fails in one line
    resumed = ckpt.load_checkpoint(resume_path) if resume_path is not None else None
    shards = resolve_shards(cfg.data.train, what="data.train")
    val = resolve_shards(cfg.data.val, what="data.val") if cfg.data.val else None
    objective = objective_for(cfg)
    if resumed is not None:
        saved = (resumed.get("config") or {}).get("model", {}).get("preset", "project")
        if saved != cfg.model.preset:
            raise SchemaError(f"the checkpoint trained the {saved!r} model preset, the config gives "
                              f"{cfg.model.preset!r}", file=str(resume_path), field="model.preset")
    objective.prepare(cfg, shards, val)
    rules = resolve_caption_rules(cfg, shards)

    torch.manual_seed(t.seed)
    model = objective.build_model(cfg)
    apply_freeze(model, t.freeze)
    model.train()  # after freezing: a model may keep its frozen parts in eval mode (DISSEOfficial.train)
    model.to(device)
    loss_fn = objective.build_loss(cfg)
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device)
    optimizer = make_optimizer(model, cfg)
    global_batch = cfg.data.batch_size * t.accum_steps * info.world
    spe = steps_per_epoch(shards, global_batch)
    total = t.max_steps if t.max_steps > 0 else t.epochs * spe
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    step, best = 0, {"metric": cfg.eval.best_metric, "value": None, "step": None}
    position: StreamPosition | None = None
    if resumed is not None:
        state = resumed
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step, best = int(state["step"]), state.get("best", best)
        saved_world = len(state["data"])
        if saved_world == info.world:
            position = StreamPosition.from_dict(state["data"][info.rank])
            ckpt.set_rng_state(state["rng"][info.rank])
        else:
            # another world size: the stream restarts its passes (position is per slot)
            log.warning("resuming with %d ranks (saved with %d): data order restarts", info.world, saved_world)
            ckpt.set_rng_state(state["rng"][0])
        if position is not None and position.num_workers != max(1, cfg.data.num_workers):
            raise SchemaError(f"the checkpoint's data position was saved with {position.num_workers} "
                              f"worker(s); resume with data.num_workers={position.num_workers}",
                              file=str(resume_path), field="data.num_workers")

    raw = objective.wrap(model, cfg)
    net: nn.Module = raw
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(
            raw, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=t.find_unused_parameters)
    params = [p for p in model.parameters() if p.requires_grad]
    ctx = StepContext(net, raw, model, loss_fn, optimizer, scaler, info, precision, cfg.optim.grad_clip, params,
                      objective)

    logger = None
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out_dir / "config.yaml")
        logger = RunLogger(out_dir, config=config_to_dict(cfg), use_wandb=cfg.log.wandb,
                           project=cfg.log.wandb_project, mode=cfg.log.wandb_mode, run_name=cfg.log.run_name)
        n_train = sum(p.numel() for p in params)
        logger.write({"event": "start", "step": step, "total_steps": total, "steps_per_epoch": spe,
                      "global_batch": global_batch, "world": info.world, "device": str(device),
                      "precision": precision, "trainable_params": n_train, "train_samples": shards.total,
                      "resumed_from": str(resume_path) if resume_path else None})

    position = position or StreamPosition(num_workers=max(1, cfg.data.num_workers), world=info.world)
    loader = train_loader(shards, cfg.data, rank=info.rank, world=info.world, start=position,
                          pin_memory=device.type == "cuda", inputs=objective.inputs)
    batches: Iterator[dict] = iter(loader)
    bad = {"bad_shards": 0, "bad_samples": 0}
    errors_by_slot: dict[int, dict] = {}

    def checkpoint_state() -> dict | None:
        rngs = _gather_objects(ckpt.rng_state(), info)
        positions = _gather_objects(position.to_dict(), info)
        if not info.is_main:
            return None
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                "epoch": step // spe, "rng": rngs, "data": positions, "config": config_to_dict(cfg),
                "best": dict(best), "world": info.world}

    def save(names: list[str]) -> None:
        state = checkpoint_state()  # collective: every rank takes part
        if state is not None:
            for name in names:
                ckpt.save_atomic(state, out_dir / ckpt.CHECKPOINT_DIR / name)
                for extra, content in objective.exports(cfg, state, name).items():
                    ckpt.save_atomic(content, out_dir / ckpt.CHECKPOINT_DIR / extra)

    def run_validation() -> None:
        nonlocal best
        if val is None:
            return
        if info.is_main:
            t0 = time.perf_counter()
            with autocast_ctx(precision, device):
                metrics = objective.validate(model, val, cfg, device, rules)
            key = cfg.eval.best_metric
            if key not in metrics:
                raise SchemaError(f"not a validation metric; some available: {sorted(metrics)[:12]}",
                                  field="eval.best_metric")
            value = metrics[key]
            better = best["value"] is None or (value > best["value"] if cfg.eval.best_mode == "max"
                                               else value < best["value"])
            logger.write({"event": "val", "step": step, "val_seconds": time.perf_counter() - t0,
                          **{f"val/{k}": v for k, v in metrics.items()}})
            if better and step > 0:
                best = {"metric": key, "value": float(value), "step": step}
            msg = " ".join(f"{k}={metrics[k]:.3f}" for k in ("SRC/t2a/R@1", "SPA/t2a/R@1", "IR_space",
                                                              "phys/direction_err_deg/mean") if k in metrics)
            _print(f"[val step {step}] {msg}")
        else:
            better = False
        better = bool(_gather_objects(better, info)[0])
        best = _gather_objects(best, info)[0]
        if better and step > 0:
            save([ckpt.BEST])
        barrier(info)

    if cfg.eval.at_start and step == 0:
        run_validation()

    def validates_after(s: int) -> bool:
        return val is not None and (cfg.eval.every_steps > 0 and s % cfg.eval.every_steps == 0
                                    or cfg.eval.each_epoch and s % spe == 0)

    def take() -> tuple[list[dict], list[tuple]]:
        """The next step's micro-batches, and their stream positions and error counts (applied when it runs:
        a checkpoint records the batches trained, not the one prepared ahead)."""
        micro, marks = [], []
        for _ in range(t.accum_steps):
            b = next(batches)
            marks.append((b.pop("_position"), b.pop("_errors")))
            micro.append(b)
        return micro, marks

    # One helper thread prepares step k + 1 while step k trains (prepare_step). Not across a validation:
    # validation adds texts to the text cache, and the next step must find the cache as it would unprepared.
    helper = None
    if t.prefetch:  # the current CUDA device is per thread: the helper's is this rank's
        on_device = {"initializer": torch.cuda.set_device, "initargs": (device,)} if device.type == "cuda" else {}
        helper = ThreadPoolExecutor(1, thread_name_prefix="prepare", **on_device)
    ahead: tuple | None = None
    bar = None
    if info.is_main and cfg.log.progress:
        bar = tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True)
    stop_at = min(total, t.stop_after) if t.stop_after > 0 else total
    last_loss, terms = float("nan"), {}
    window = {"samples": 0, "time": 0.0, "wait": 0.0}
    try:
        while step < stop_at:
            t0 = time.perf_counter()
            if ahead is None:
                micro, marks = take()
                wait = time.perf_counter() - t0
                prepared = prepare_step(ctx, micro)
            else:
                micro, marks, future = ahead
                prepared = future.result()
                wait = time.perf_counter() - t0  # the batch, and what of its preparation the last step did not hide
            # step k's texts enter the cache before step k + 1 is prepared against it (prepare_step)
            prepared.admit(model)
            for (slot, pass_, index), (eslot, counts) in marks:
                position.positions[slot] = (pass_, index)
                position.batches += 1
                errors_by_slot[eslot] = counts
            ahead = None
            if helper is not None and step + 1 < stop_at and not validates_after(step + 1):
                t1 = time.perf_counter()
                nxt, nxt_marks = take()
                wait += time.perf_counter() - t1
                ahead = (nxt, nxt_marks, helper.submit(prepare_step, ctx, nxt))
            last_loss, terms, grad_norm = train_step(ctx, micro, prepared)
            scheduler.step()
            step += 1
            t2 = time.perf_counter()
            window["samples"] += global_batch
            window["time"] += t2 - t0
            window["wait"] += wait
            if not math.isfinite(last_loss):
                raise FloatingPointError(f"loss is {last_loss} at step {step}; lower optim.lr or check the data")
            if bar is not None:
                bar.update(1)
            if step % cfg.log.every_steps == 0 or step == stop_at:
                local = [sum(c["bad_shards"] for c in errors_by_slot.values()),
                         sum(c["bad_samples"] for c in errors_by_slot.values())]
                if info.distributed:
                    tt = torch.tensor(local, dtype=torch.int64, device=device)
                    dist.all_reduce(tt)
                    local = tt.tolist()
                bad = {"bad_shards": int(local[0]), "bad_samples": int(local[1])}
                rate = window["samples"] / max(window["time"], 1e-9)
                wait = window["wait"] / max(window["time"], 1e-9)
                if logger is not None:
                    logger.write({"event": "train", "step": step, "epoch": step / spe, "loss": last_loss,
                                  **{f"loss/{k}": v for k, v in terms.items()},
                                  "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                                  "samples_per_s": rate, "data_wait_frac": wait, **bad})
                if bar is not None:
                    bar.set_postfix({"loss": f"{last_loss:.3f}",
                                     **{k: f"{v:.3f}" for k, v in list(terms.items())[:4]},
                                     "sps": f"{rate:.1f}", "wait": f"{100 * wait:.0f}%"}, refresh=False)
                window = {"samples": 0, "time": 0.0, "wait": 0.0}
            epoch_end = step % spe == 0
            if validates_after(step):
                run_validation()
            periodic = t.save_every_steps > 0 and step % t.save_every_steps == 0
            if periodic or epoch_end or step == stop_at:
                save([ckpt.LATEST] + ([f"step_{step:07d}.pt"] if periodic else []))
    finally:
        if helper is not None:
            helper.shutdown(wait=True)  # no thread reads the model after the loop
        if bar is not None:
            bar.close()
        del batches
    if logger is not None:
        logger.write({"event": "end", "step": step, "loss": last_loss, "best": best, **bad})
        logger.close()
    return RunResult(out_dir, step, total, last_loss, best, bad)


def _print(msg: str) -> None:
    tqdm.write(msg)
