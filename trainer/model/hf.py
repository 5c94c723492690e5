"""transformers set-up shared by every model that builds a Hugging Face module: the one place that does it.

Models and tokenizers are read from local files only (``local_files_only=True`` at each call; the
Makefile and the tests also set ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``). :func:`quiet_transformers`
silences transformers' progress bars and warnings below error level (e.g. the unused-weights notices of
a backbone whose weights come from a checkpoint).
"""
from __future__ import annotations

from transformers.utils import logging as hf_logging


def quiet_transformers() -> None:
    """No progress bars, only errors from transformers' logger."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
