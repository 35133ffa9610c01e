"""Copying from the source: the pointer-generator and coverage of See et al. (2017), "Get To
The Point".

A decoder with attention over the source can *point*: at step t its attention ``a_t`` over
source positions, scattered onto the vocabulary ids of the source tokens, is a distribution over
the tokens of the input. A learned gate ``p_gen = sigmoid(w . [state; context; input])`` mixes it
with the decoder's vocabulary distribution::

    P(w) = p_gen * P_vocab(w) + (1 - p_gen) * sum_{i: src_i = w} a_t,i

so a name or a rare piece seen once in training can still be output, by copying it. Source ids
must be target ids, hence one joint vocabulary (``tokenizer.joint``). The mixture is computed in
log space (``logaddexp`` of ``log p_gen + log P_vocab`` and ``log(1 - p_gen) + log copy``) and in
fp32 even under bf16 autocast; a copy model returns these normalised log-probabilities as its
next-token scores (see ``base.StepOutput``), so search, training and ensembles use it unchanged.

**Coverage** ``c_t = sum_{t' < t} a_t'`` is how much attention each source position has had so
far; the coverage loss ``sum_i min(a_t,i, c_t,i)`` is zero at the first step and grows when the
decoder attends again to what it has already covered (the repetition summaries suffer from).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CopyGate(nn.Module):
    """``[decoder state; context; input embedding]`` -> the logit of p_gen (the generation probability)."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, 1)

    def forward(self, *features: torch.Tensor) -> torch.Tensor:  # (..., d_i) each -> (...)
        return self.proj(torch.cat(features, dim=-1)).squeeze(-1)


def copy_log_probs(logits: torch.Tensor, gate_logit: torch.Tensor, attention: torch.Tensor,
                   src: torch.Tensor) -> torch.Tensor:
    """log(p_gen * softmax(logits) + (1 - p_gen) * copy distribution), in fp32.

    ``logits`` (B, [T,] V) of the vocabulary distribution, ``gate_logit`` (B, [T]) the logit of
    p_gen, ``attention`` (B, [T,] S) over source positions (0 on padding), ``src`` (B, S) the
    source ids (in the target vocabulary). Tokens absent from the source get no copy mass (their
    copy log-probability is -inf, with a zero gradient rather than a NaN)."""
    with torch.autocast(logits.device.type, enabled=False):
        logits, gate, attention = logits.float(), gate_logit.float(), attention.float()
        attention = attention / attention.sum(dim=-1, keepdim=True)  # bf16 weights sum to 1 only within ~1e-3
        ids = src if attention.dim() == 2 else src.unsqueeze(1).expand(-1, attention.size(1), -1)
        copy = torch.zeros_like(logits).scatter_add(-1, ids, attention)
        present = copy > 0
        log_copy = torch.where(present, torch.where(present, copy, 1.0).log(), -torch.inf)
        return torch.logaddexp(F.logsigmoid(gate).unsqueeze(-1) + F.log_softmax(logits, dim=-1),
                               F.logsigmoid(-gate).unsqueeze(-1) + log_copy)


def coverage_losses(attention: torch.Tensor) -> torch.Tensor:
    """Teacher-forced: (B, T, S) attention of every step -> (B, T) coverage loss of every step,
    ``sum_i min(a_t,i, c_t,i)`` with ``c_t`` the sum of the attention of the steps before t."""
    attention = attention.float()
    before = F.pad(attention.cumsum(dim=1)[:, :-1], (0, 0, 1, 0))  # c_0 = 0
    return torch.minimum(attention, before).sum(dim=-1)


def step_coverage_loss(attention: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """One step: (B, S) attention and the coverage before it -> (B,) coverage loss."""
    return torch.minimum(attention.float(), coverage).sum(dim=-1)
