"""Dropout with a mask drawn from uniform noise, for speed on CPU.

``nn.Dropout`` draws its mask with ``bernoulli_``, which on CPU costs about twice what drawing
uniform noise and comparing it with ``p`` does: 12.5 vs 5.5 ms of CPU time for the forward and
backward pass of one (230, 18, 256) activation at 1 thread (measured with
``torch.profiler`` and ``time.process_time``). A Multi30k Transformer update runs 17 such
dropouts, so the mask alone was about 5% of the update. Same distribution, same scaling
(inverted dropout: kept units are divided by 1 - p, so evaluation needs no rescaling), same
``torch`` random generator, so runs stay reproducible from the seed. No parameters: a checkpoint
saved with ``nn.Dropout`` loads unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Module):
    """Zero each element with probability ``p`` in training, scale the rest by 1/(1-p)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty_like(x).uniform_().ge_(self.p).div_(1.0 - self.p)
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}"
