"""disse.trainer.model: DELSA, the official DISSE model, their encoders and heads, foreign weights.

Imports nothing from training, data loading or evaluation (a contract in pyproject.toml).
The names below resolve on first use (PEP 562), so importing a light submodule such as
``disse.trainer.model.physics`` does not import transformers through ``delsa`` (~2 s of start-up
for every CLI, ``--help`` included).
"""
from __future__ import annotations

import importlib

__all__ = ["DELSA", "ModelConfig", "DescriptorClassifier", "TEXT_INPUTS", "PHYS_INPUTS", "SPACE_INPUTS"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("disse.trainer.model.delsa"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
