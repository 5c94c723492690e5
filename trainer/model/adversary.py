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


class SourceCritic(nn.Module):
    """``(B, space_dim)`` audio spatial embedding -> ``(B, source_dim)`` L2-normalised guess of the sample's
    audio *source* embedding, read through gradient reversal.

    Unlike :class:`SourceAdversary`, whose classes are the training recordings (a test recording is a class it
    never saw), the critic predicts what is sounding as the source embedding describes it, so what it learns to
    read from the spatial embedding (brightness, onset rate, decay shape of the sound) is what any unseen
    recording leaks too. Its loss (``loss.source_critic_weight``; :func:`critic_loss`) trains it to pick its own
    sample's source embedding among the batch's; the reversed gradient trains the spatial side to defeat it.
    """

    def __init__(self, space_dim: int, source_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(space_dim, hidden), nn.GELU(), nn.Linear(hidden, source_dim))

    def forward(self, space: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net(grad_reverse(space)), dim=-1)
