"""Several trained models decoding as one (ensemble decoding, as in fairseq or OpenNMT-py).

The members may be of any families, since they meet only through the model interface; they
must share the vocabularies (same tokenizers), so that token ``i`` means the same to all. At
every step the next-token distribution is the *mean of the members' probabilities*, and an
:class:`Ensemble` is itself a :class:`Seq2SeqModel`, so greedy, beam search, sampling and
evaluation run on it unchanged. Models that err differently (a recurrent and a Transformer
decoder, or two seeds) correct each other: on the G2P test set the three families together
make 1.7-2.2 points fewer word errors than the best of them (BENCHMARKS.md), for the cost of
running every member.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import Seq2SeqModel, State, StepOutput


def mean_log_probs(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """``log(mean_m softmax(logits_m))`` over the last dimension, computed in log space."""
    stacked = torch.stack([F.log_softmax(x.float(), dim=-1) for x in logits])
    return stacked.logsumexp(0) - math.log(len(logits))


class Ensemble(Seq2SeqModel):
    """Members' encoder outputs and decoder states travel as tuples, one entry per member."""

    def __init__(self, members: Sequence[Seq2SeqModel]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        sizes = {(m.src_vocab, m.tgt_vocab) for m in members}
        if len(sizes) > 1:
            raise ValueError(f"ensemble members differ in vocabulary sizes (source, target): {sorted(sizes)}")
        self.members = nn.ModuleList(members)
        self.src_vocab, self.tgt_vocab = members[0].src_vocab, members[0].tgt_vocab

    # Attention for heatmaps: the mean of the members that have it; a layer index must be valid
    # for each of them (negative ones count from each member's last layer).
    @property
    def attention_layers(self) -> int:
        return min((n for n in (m.attention_layers for m in self.members) if n), default=0)

    @property
    def max_positions(self) -> int | None:
        return min((n for n in (m.max_positions for m in self.members) if n is not None), default=None)

    def encode(self, src: torch.Tensor, src_lens: torch.Tensor) -> State:
        return tuple(m.encode(src, src_lens) for m in self.members)

    def init_state(self, enc: State) -> State:
        return tuple(m.init_state(e) for m, e in zip(self.members, enc))

    def merge(self, enc: State, state: State, new_enc: State, new_state: State) -> tuple[State, State]:
        merged = [m.merge(*parts) for m, *parts in zip(self.members, enc, state, new_enc, new_state)]
        return tuple(e for e, _ in merged), tuple(s for _, s in merged)

    def decode_step(self, prev: torch.Tensor, enc: State, state: State, attention_layer: int | None = None) -> StepOutput:
        outs = [m.decode_step(prev, e, s, attention_layer if m.attention_layers else None)
                for m, e, s in zip(self.members, enc, state)]
        attns = [o.attention for o in outs if o.attention is not None]
        attention = torch.stack(attns).mean(0) if attns else None
        return StepOutput(mean_log_probs([o.logits for o in outs]), tuple(o.state for o in outs), attention)

    def forward(self, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return mean_log_probs([m(src, src_lens, tgt_in) for m in self.members])
