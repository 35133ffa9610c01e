"""Decoding: turn a model's next-token scores into output sequences.

Everything here uses only the family-neutral interface (``encode``, ``init_state``,
``decode_step``), so the same search runs on every model family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data.tokenizers import BOS, EOS
from .models.base import Seq2SeqModel, select


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS/EOS
    score: float  # sum of token log-probabilities (EOS included when it was produced)
    attention: torch.Tensor | None = None  # (len(tokens)+1, S) if the model exposes attention


def max_lengths(src_lens: torch.Tensor, a: float, b: int) -> torch.Tensor:
    """Output length cap ``a * source_length + b`` (source length without its EOS)."""
    return ((src_lens - 1).float() * a).long() + b


@torch.no_grad()
def greedy_search(
    model: Seq2SeqModel, src: torch.Tensor, src_lens: torch.Tensor, max_len_a: float = 1.5, max_len_b: int = 10
) -> list[Hypothesis]:
    """Batched greedy decoding; each sentence stops at its own EOS or length cap.

    Finished sentences leave the batch, so the cost of a step follows the unfinished ones.
    """
    bsz = src.size(0)
    enc = model.encode(src, src_lens)
    state = model.init_state(enc)
    caps = max_lengths(src_lens, max_len_a, max_len_b).tolist()
    tokens: list[list[int]] = [[] for _ in range(bsz)]
    scores = [0.0] * bsz
    attn: list[list[torch.Tensor]] = [[] for _ in range(bsz)]
    alive = torch.arange(bsz, device=src.device)  # batch rows still decoding
    prev = torch.full((bsz,), BOS, dtype=torch.long, device=src.device)
    step = 0
    while alive.numel():
        out = model.decode_step(prev, enc, state)
        logp = F.log_softmax(out.logits.float(), dim=-1)
        best_lp, best = logp.max(dim=-1)
        keep = []
        for row, (i, tok, lp) in enumerate(zip(alive.tolist(), best.tolist(), best_lp.tolist())):
            scores[i] += lp
            if out.attention is not None:
                attn[i].append(out.attention[row])
            if tok == EOS:
                continue
            tokens[i].append(tok)
            if step + 1 < caps[i]:
                keep.append(row)
        step += 1
        if len(keep) < alive.numel():
            if not keep:
                break
            idx = torch.tensor(keep, device=src.device)
            alive, prev = alive[idx], best[idx]
            enc, state = select(enc, idx), select(out.state, idx)
        else:
            prev, state = best, out.state
    return [
        Hypothesis(tokens[i], scores[i], torch.stack(attn[i]).cpu() if attn[i] else None) for i in range(bsz)
    ]

