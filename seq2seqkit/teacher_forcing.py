"""Teacher forcing, scheduled sampling (Bengio et al. 2015) and the exposure-bias measure.

With ratio 1 the decoder always sees the ground-truth previous token (fast: one teacher-forced
pass). Below 1, each target input position after BOS independently gets the ground truth with
probability ``ratio`` and otherwise the model's own greedy prediction, which trains the model
on the kind of inputs it will see at inference. Two ways to get that prediction:

* ``parallel`` (Duckworth et al. 2019; Mihaylova & Martins 2019): one teacher-forced pass,
  without gradients, gives the prediction for every position at once (the argmax at t-1 given
  the gold prefix); a second pass, the one trained, is fed the mix of gold and predicted tokens.
  Two calls of ``model.forward``, so it works for every family; the cost over teacher forcing is
  one forward pass without gradients, whatever the length (1.4x a teacher-forced update on one
  CPU thread: ``bench/scheduled_sampling.py --cost``).
* ``sequential`` (Bengio et al. 2015): the target is decoded one ``decode_step`` at a time and
  the prediction fed at t is the argmax of the step before, itself fed on the mix so far, so
  errors compound as at inference. T decoder steps one after another: as cheap as one pass on a
  single CPU thread (1.1-1.2x teacher forcing), but the positions cannot run in parallel.

The same two parallel passes measure exposure bias at validation (validation.exposure_bias_sums):
the reference loss when a share ``p`` of the decoder's inputs are the model's own predictions,
against the teacher-forced loss. A substituted token keeps its position, so the loss at every
position still scores the reference token that belongs there: like is compared with like.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import TeacherForcingConfig
from .data.tokenizers import PAD
from .models.base import Losses, Seq2SeqModel


def token_loss(logits: torch.Tensor, gold: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Sum of token cross-entropies over non-padding positions."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), gold.reshape(-1),
        ignore_index=PAD, reduction="sum", label_smoothing=label_smoothing,
    )


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


def own_predictions(logits: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
    """The model's greedy guess for every decoder input, aligned with ``tgt_in`` (B, T): the
    input at t >= 1 is the argmax of the teacher-forced logits at t - 1 (the prediction of the
    token that belongs at t, given the gold prefix); position 0 keeps BOS, padding stays PAD."""
    pred = tgt_in.clone()
    pred[:, 1:] = logits[:, :-1].argmax(dim=-1)  # what greedy search would feed (PAD included)
    return torch.where(tgt_in == PAD, tgt_in, pred)


def substitute(tgt_in: torch.Tensor, pred: torch.Tensor, replace: torch.Tensor) -> torch.Tensor:
    """``tgt_in`` with ``pred`` where ``replace`` (B, T bool) holds, never at position 0 (BOS)
    nor on padding. Positions are kept: the token at t is always a candidate for position t."""
    replace = replace.clone()
    replace[:, 0] = False
    return torch.where(replace & (tgt_in != PAD), pred, tgt_in)


def mixed_inputs(model: Seq2SeqModel, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor,
                 replace: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first of the two parallel passes: a teacher-forced one without gradients gives the
    predictions. Returns (``tgt_in`` with them where ``replace`` holds, teacher-forced logits)."""
    with torch.no_grad():
        tf_logits = model(src, src_lens, tgt_in)
    return substitute(tgt_in, own_predictions(tf_logits, tgt_in), replace), tf_logits


def mixed_pass(model: Seq2SeqModel, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor,
               replace: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two parallel passes: a teacher-forced one without gradients gives the predictions,
    a second one (with gradients if enabled) is fed ``tgt_in`` with the predictions where
    ``replace`` holds. Returns (second pass logits, teacher-forced logits)."""
    mixed, tf_logits = mixed_inputs(model, src, src_lens, tgt_in, replace)
    return model(src, src_lens, mixed), tf_logits


def decode_with_teacher_forcing(
    model: Seq2SeqModel, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor, ratio: float,
    mode: str = "sequential",
) -> tuple[torch.Tensor, Losses]:
    """Logits (B, T, V) of the target, feeding ground truth with probability ``ratio`` and
    otherwise the prediction of ``mode`` (training passes ``training.teacher_forcing.mode``,
    parallel unless set; this function keeps its original step-by-step meaning by default),
    and the model's auxiliary training losses (B, T) of that pass (``forward_with_losses``).
    The random choices come from the global torch RNG, which checkpoints save and restore."""
    if ratio >= 1.0:
        return model.forward_with_losses(src, src_lens, tgt_in)
    if mode == "parallel":
        replace = torch.rand(tgt_in.shape, device=tgt_in.device) >= ratio
        return model.forward_with_losses(src, src_lens, mixed_inputs(model, src, src_lens, tgt_in, replace)[0])
    enc = model.encode(src, src_lens)
    state = model.init_state(enc)
    prev = tgt_in[:, 0]
    steps, losses = [], []
    for t in range(tgt_in.size(1)):
        out = model.decode_step(prev, enc, state)
        steps.append(out.logits)
        losses.append(out.losses)
        state = out.state
        if t + 1 < tgt_in.size(1):
            pred = out.logits.detach().argmax(dim=-1)
            gold = tgt_in[:, t + 1]
            if ratio <= 0.0:
                prev = pred
            else:
                use_gold = torch.rand(gold.shape, device=gold.device) < ratio
                prev = torch.where(use_gold, gold, pred)
    return torch.stack(steps, dim=1), {k: torch.stack([x[k] for x in losses], dim=1) for k in losses[0]}
