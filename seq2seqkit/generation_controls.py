"""Generation controls: rules on the next-token log-probabilities that every search applies.

What Hugging Face ``generate()`` calls logits processors, for the three controls users reach
for first (all off by default, set in the config's ``search`` section):

* ``no_repeat_ngram_size`` n: a token that would complete an n-gram already in the output is
  banned (-inf), as fairseq's and HF's ``no_repeat_ngram_size``;
* ``min_len`` m: EOS is banned while the output has fewer than m tokens (EOS itself not counted,
  as fairseq's ``--min-len`` and HF's ``min_new_tokens``);
* ``repetition_penalty`` p (CTRL, Keskar et al. 2019, as HF's RepetitionPenaltyLogitsProcessor):
  the score of every token already in the output is divided by p if positive, multiplied by p
  if negative. Applied to log-probabilities (never positive), it multiplies them by p: above 1 a
  seen token becomes less likely, below 1 more likely.

:func:`apply_controls` takes one step's ``(rows, V)`` log-probabilities and each row's own output
so far, so it serves greedy search, sampling and beam search (each beam with its own history)
alike, and knows nothing of model families. The result is not renormalised (as in HF's beam
search): search ranks and scores hypotheses by these processed log-probabilities. Bans only
remove tokens, so a score that used no penalised token is still the model's log-probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data.tokenizers import EOS


@dataclass(frozen=True)
class GenerationControls:
    no_repeat_ngram_size: int = 0  # 0: off
    min_len: int = 0  # fewest output tokens before EOS may come (EOS not counted)
    repetition_penalty: float = 1.0  # 1: off

    @property
    def needs_history(self) -> bool:
        """Whether a row's earlier tokens matter (min_len needs only their count)."""
        return self.no_repeat_ngram_size > 0 or self.repetition_penalty != 1.0

    @property
    def active(self) -> bool:
        return self.needs_history or self.min_len > 0


OFF = GenerationControls()


def repetition_penalty(logp: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """Scores of the tokens in each row's ``history`` ((rows, T) ids) divided by ``penalty`` where
    positive and multiplied where negative; each token once, however often it occurred."""
    if penalty == 1.0 or history.size(1) == 0:
        return logp
    seen = logp.gather(1, history)
    return logp.scatter(1, history, torch.where(seen < 0, seen * penalty, seen / penalty))


def banned_ngram_mask(history: torch.Tensor, n: int, vocab: int) -> torch.Tensor:
    """(rows, V) True where a token would complete an n-gram that already occurs in the row's
    ``history`` ((rows, T) ids): the row's last n-1 tokens match the first n-1 of an earlier
    n-gram, whose last token is then banned."""
    rows, length = history.shape
    mask = torch.zeros(rows, vocab, dtype=torch.bool, device=history.device)
    if n < 1 or length < n:
        return mask
    grams = history.unfold(1, n, 1)  # (rows, length - n + 1, n): every n-gram so far
    current = history[:, length - n + 1 :]  # the last n-1 tokens (none for n = 1: every gram matches)
    match = (grams[:, :, :-1] == current.unsqueeze(1)).all(dim=2)
    hits = torch.zeros(rows, vocab, dtype=torch.int32, device=history.device)
    hits.scatter_add_(1, grams[:, :, -1], match.int())  # add, not assign: a token can end several grams
    return hits > 0


def apply_controls(logp: torch.Tensor, history: torch.Tensor | None, step: int,
                   controls: GenerationControls) -> torch.Tensor:
    """One step's ``(rows, V)`` log-probabilities under ``controls``: penalty, then bans.

    ``history``: each row's output tokens so far ((rows, step), no BOS), needed when
    ``controls.needs_history``; ``step``: how many tokens each row has output. A row whose every
    token would be banned keeps EOS (at its model log-probability) and so ends there, even before
    ``min_len``: there is nothing else it could say."""
    if not controls.active:
        return logp
    out = logp
    if controls.needs_history:
        assert history is not None and history.size(1) == step
        out = repetition_penalty(out, history, controls.repetition_penalty)
        if controls.no_repeat_ngram_size:
            out = out.masked_fill(banned_ngram_mask(history, controls.no_repeat_ngram_size, out.size(1)), -torch.inf)
    if step < controls.min_len:
        out = out.clone() if out is logp else out
        out[:, EOS] = -torch.inf
    if controls.no_repeat_ngram_size or step < controls.min_len:  # only bans can leave a row nothing
        stuck = ~out.isfinite().any(dim=1)
        if stuck.any():  # a host sync: skipped on steps where nothing was banned
            out = out.clone() if out is logp else out
            out[stuck, EOS] = logp[stuck, EOS]
    return out
