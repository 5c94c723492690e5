"""disse.trainer.model: DELSA, the official DISSE model, their encoders and heads, foreign weights.

Imports nothing from training, data loading or evaluation (a contract in pyproject.toml).
"""
from disse.trainer.model.delsa import (
    DELSA,
    PHYS_INPUTS,
    SPACE_INPUTS,
    TEXT_INPUTS,
    DescriptorClassifier,
    ModelConfig,
)

__all__ = ["DELSA", "ModelConfig", "DescriptorClassifier", "TEXT_INPUTS", "PHYS_INPUTS", "SPACE_INPUTS"]
