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
    source ids (in the target vocabulary).

    Only the (at most S) tokens of the source get copy mass, so the mixture is computed at the
    source positions and written over ``log p_gen + log P_vocab``: no second (B, T, V) tensor
    of copy probabilities (with an 8k vocabulary and a batch of 4k summary tokens, each such
    tensor is 128 MB). A token at several positions gets the attention of all of them, written
    once (at its first position), so gradients are not counted twice; a position whose token has
    no copy mass leaves the vocabulary part as it is (log 0 = -inf, with a zero gradient rather
    than a NaN)."""
    single = attention.dim() == 2
    if single:  # one decoding step: (B, V), (B,), (B, S) -> a step of length 1
        logits, gate_logit, attention = logits.unsqueeze(1), gate_logit.unsqueeze(1), attention.unsqueeze(1)
    with torch.autocast(logits.device.type, enabled=False):
        logits, gate, attention = logits.float(), gate_logit.float().unsqueeze(-1), attention.float()
        attention = attention / attention.sum(dim=-1, keepdim=True)  # bf16 weights sum to 1 only within ~1e-3
        log_gen = F.logsigmoid(gate) + F.log_softmax(logits, dim=-1)  # (B, T, V)
        same = src.unsqueeze(2) == src.unsqueeze(1)  # (B, S, S): positions i, j hold the same token
        first = ~same.tril(diagonal=-1).any(dim=2)  # (B, S): no earlier position holds it
        mass = torch.bmm(attention, same.float())  # (B, T, S): copy probability of the token at each position
        present = mass > 0
        log_copy = torch.where(present, torch.where(present, mass, 1.0).log(), -torch.inf)
        ids = src.unsqueeze(1).expand_as(mass)
        at_src = log_gen.gather(2, ids)
        mixed = torch.logaddexp(at_src, F.logsigmoid(-gate) + log_copy)
        out = log_gen.scatter_add(2, ids, (mixed - at_src) * first.unsqueeze(1))
    return out.squeeze(1) if single else out


def coverage_losses(attention: torch.Tensor) -> torch.Tensor:
    """Teacher-forced: (B, T, S) attention of every step -> (B, T) coverage loss of every step,
    ``sum_i min(a_t,i, c_t,i)`` with ``c_t`` the sum of the attention of the steps before t."""
    attention = attention.float()
    before = F.pad(attention.cumsum(dim=1)[:, :-1], (0, 0, 1, 0))  # c_0 = 0
    return torch.minimum(attention, before).sum(dim=-1)


def step_coverage_loss(attention: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """One step: (B, S) attention and the coverage before it -> (B,) coverage loss."""
    return torch.minimum(attention.float(), coverage).sum(dim=-1)
