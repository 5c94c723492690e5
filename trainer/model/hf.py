"""transformers set-up shared by every model that builds a Hugging Face module: the one place that does it.

Models and tokenizers are read from local files only (``local_files_only=True`` at each call; the
Makefile and the tests also set ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``). :func:`quiet_transformers`
silences transformers' progress bars and warnings below error level (e.g. the unused-weights notices of
a backbone whose weights come from a checkpoint).
"""
from __future__ import annotations

import json
from pathlib import Path

from transformers import RobertaConfig
from transformers.utils import logging as hf_logging


def quiet_transformers() -> None:
    """No progress bars, only errors from transformers' logger."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def write_random_roberta(path: str | Path, *, vocab_size: int | None = None, **sizes: int) -> Path:
    """Write a local RoBERTa folder whose model is randomly initialised: a character-level BPE vocabulary
    (lower-case letters and punctuation, with and without the leading-space mark) and a ``RobertaConfig``,
    no weights file. ``sizes`` override roberta-base's (``hidden_size=768, num_hidden_layers=12, ...``);
    ``vocab_size=None`` sizes the embedding to the character vocabulary (50265, roberta-base's, gives its
    FLOPs and memory). For tests, benchmarks and CPU trials of a preset that reads a roberta-base folder.
    """
    path = Path(path)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for c in "abcdefghijklmnopqrstuvwxyz.,:'-":
        vocab[c], vocab["\u0120" + c] = len(vocab), len(vocab) + 1
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "RobertaTokenizer"}))
    RobertaConfig(vocab_size=vocab_size or len(vocab), max_position_embeddings=514, type_vocab_size=1,
                  pad_token_id=1, bos_token_id=0, eos_token_id=2, **sizes).save_pretrained(path)
    return path
