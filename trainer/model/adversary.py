"""A source adversary on the spatial embedding: a classifier of *which recording* it heard, trained through
gradient reversal, so the embedding is pushed to carry no source identity (docs/spatial.md, "Leakage").

The classifier's own weights learn to classify (they minimise its cross-entropy); the gradient that reaches
the embedding is negated (Ganin & Lempitsky's gradient reversal), so the embedding maximises it.
"""
from __future__ import annotations

import torch
from torch import nn


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; the gradient flows back multiplied by ``-scale``."""
    return _Reverse.apply(x, scale)


class SourceAdversary(nn.Module):
    """``(B, D)`` spatial embedding -> ``(B, buckets)`` logits of the sample's source, read through gradient
    reversal. Sources are hashed into ``buckets`` classes (:meth:`targets`): stable ids need no vocabulary."""

    def __init__(self, dim: int, buckets: int, hidden: int = 256) -> None:
        super().__init__()
        self.buckets = buckets
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, buckets))

    def forward(self, space: torch.Tensor) -> torch.Tensor:
        return self.net(grad_reverse(space))

    def targets(self, source_id: torch.Tensor) -> torch.Tensor:
        """``(B,)`` int64 stable source ids -> class indices in ``[0, buckets)``."""
        return torch.remainder(source_id, self.buckets)
