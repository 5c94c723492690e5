"""laion-clap as the reference implementation the tests compare DISSE's HTSAT against.

DISSE does not import laion-clap at run time (trainer/model/htsat.py builds HTSAT on transformers'
``ClapAudioModel``). The tests build laion-clap's own ``HTSAT_Swin_Transformer`` with the same sizes
and check that the same weights give the same embedding. laion-clap's package ``__init__`` imports its
training code, which fetches tokenizers from the hub at import time, so single files of
``laion_clap/clap_module`` are loaded under a private package name instead. Tests using this are
skipped when laion-clap (an extra: ``pip install -e .[dev]``) is not installed.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from pathlib import Path

import pytest

from disse.trainer.model.htsat import PATCH, HTSATConfig, htsat_arch, htsat_audio_cfg

HAVE_LAION_CLAP = importlib.util.find_spec("laion_clap") is not None
needs_laion_clap = pytest.mark.skipif(not HAVE_LAION_CLAP, reason="laion-clap (the reference) is not installed")
_PRIVATE_PKG = "_disse_laion_clap_module"


def laion_clap_module(name: str) -> types.ModuleType:
    """``laion_clap.clap_module.<name>`` loaded without laion-clap's network-touching ``__init__``."""
    if _PRIVATE_PKG not in sys.modules:
        spec = importlib.util.find_spec("laion_clap")
        if spec is None or spec.origin is None:
            pytest.skip("laion-clap is not installed")
        pkg = types.ModuleType(_PRIVATE_PKG)
        pkg.__path__ = [str(Path(spec.origin).parent / "clap_module")]
        pkg.__package__ = _PRIVATE_PKG
        sys.modules[_PRIVATE_PKG] = pkg
    return importlib.import_module(f"{_PRIVATE_PKG}.{name}")


def laion_audio_cfg(cfg: HTSATConfig) -> types.SimpleNamespace:
    """laion-clap's ``audio_cfg`` namespace for ``cfg`` (class_num as in its model_configs)."""
    return types.SimpleNamespace(**htsat_audio_cfg(cfg), class_num=527, model_type="HTSAT", model_name=cfg.preset)


def laion_htsat(cfg: HTSATConfig, **kwargs):
    """laion-clap's HTSAT for ``cfg`` (random init): ``create_htsat_model`` for an unmodified preset,
    else the same class with the overridden sizes."""
    htsat = laion_clap_module("htsat")
    audio = laion_audio_cfg(cfg)
    arch = htsat_arch(cfg)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.meshgrid", category=UserWarning)
        sizes = ("embed_dim", "depths", "num_heads", "window_size", "spec_size", "mel_bins", "n_fft", "hop_size",
                 "fmin", "fmax")
        if not any(getattr(cfg, k) is not None for k in sizes) and cfg.drop_path_rate == 0.1:
            return htsat.create_htsat_model(audio, **kwargs)
        return htsat.HTSAT_Swin_Transformer(
            spec_size=arch["spec_size"], patch_size=PATCH, patch_stride=(PATCH, PATCH), num_classes=audio.class_num,
            embed_dim=arch["embed_dim"], depths=arch["depths"], num_heads=arch["num_heads"],
            window_size=arch["window_size"], config=audio, drop_path_rate=cfg.drop_path_rate, **kwargs)
