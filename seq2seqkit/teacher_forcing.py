"""Teacher forcing and scheduled sampling (Bengio et al. 2015).

With ratio 1 the decoder always sees the ground-truth previous token (fast: one teacher-forced
pass). Below 1, each target position independently gets the ground truth with probability
``ratio`` and otherwise the model's own greedy prediction from the step before, which trains
the model on the kind of inputs it will see at inference. Ratio 0 is free-running decoding;
its validation loss against the teacher-forced one measures exposure bias.
"""

from __future__ import annotations

import math

import torch

from .config import TeacherForcingConfig
from .models.base import Seq2SeqModel


def teacher_forcing_ratio(cfg: TeacherForcingConfig, step: int) -> float:
    """The ratio in force at optimizer step ``step`` (decaying from ``ratio`` to ``min_ratio``)."""
    hi, lo = cfg.ratio, min(cfg.min_ratio, cfg.ratio)
    if cfg.schedule == "constant":
        return hi
    if cfg.schedule == "linear":
        return max(lo, hi - (hi - lo) * step / cfg.decay_steps)
    if cfg.schedule == "exponential":
        return max(lo, hi * cfg.decay**step)
    k = cfg.sigmoid_k  # inverse sigmoid: starts near `hi`, falls around step k*ln(k)
    return lo + (hi - lo) * k / (k + math.exp(min(step / k, 700.0)))


def decode_with_teacher_forcing(
    model: Seq2SeqModel, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor, ratio: float
) -> torch.Tensor:
    """Logits (B, T, V) of the target, feeding ground truth with probability ``ratio``."""
    if ratio >= 1.0:
        return model(src, src_lens, tgt_in)
    enc = model.encode(src, src_lens)
    state = model.init_state(enc)
    prev = tgt_in[:, 0]
    steps = []
    for t in range(tgt_in.size(1)):
        out = model.decode_step(prev, enc, state)
        steps.append(out.logits)
        state = out.state
        if t + 1 < tgt_in.size(1):
            pred = out.logits.detach().argmax(dim=-1)
            gold = tgt_in[:, t + 1]
            if ratio <= 0.0:
                prev = pred
            else:
                use_gold = torch.rand(gold.shape, device=gold.device) < ratio
                prev = torch.where(use_gold, gold, pred)
    return torch.stack(steps, dim=1)
