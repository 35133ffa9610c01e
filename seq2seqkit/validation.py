"""Validation during training: the dev set, its losses (with the exposure-bias measure), its
decoded outputs scored by ``evaluation.metrics``, and early stopping's best-so-far.

Plain functions of what they need (model, dev set, config, device); training.py calls them on
rank 0 at every validation. Nothing here draws from the global RNG: decoding is deterministic
and the exposure-bias measure draws from its own seeded generator, so a resumed run validates
exactly as one that was never interrupted.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from . import metrics as M
from .config import Config, EarlyStoppingConfig, TrainingConfig, exposure_bias_key
from .data.corpus import iter_examples
from .data.dataset import Batch, EncodedCorpus, collate, cut_sources, encode_corpus, token_batches
from .data.tokenizers import PAD, Tokenizer
from .errors import ConfigError
from .models import Seq2SeqModel
from .teacher_forcing import own_predictions, substitute, token_loss
from .translate import translate_ids

if TYPE_CHECKING:
    from .training import Progress

log = logging.getLogger("seq2seqkit")

LOWER_IS_BETTER = {"loss", "ppl", "wer", "per"}
EXPOSURE_BIAS_SEED = 0  # which dev inputs the exposure-bias measure replaces: the same at every validation and in every run


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of a validation number is better (losses, error rates, eb_*)."""
    return metric in LOWER_IS_BETTER or metric.startswith("eb_")


@dataclass
class DevSet:
    """The dev split twice over: filtered ids for the losses, and the sources (encoded once, at
    set-up, not at every validation) with their references for the output metrics."""

    pairs: EncodedCorpus
    sources: list[list[int]]
    refs: list[list[str]]


def load_dev(cfg: Config, src_tok: Tokenizer, tgt_tok: Tokenizer) -> DevSet | None:
    """The dev set of ``data.dev`` (None where it is not set), its files read once."""
    dev = cfg.data.dev
    if not dev.is_set:
        return None
    examples = list(iter_examples(*dev.files(), fmt=dev.format))  # read once: ids for the losses, text for the metrics
    encoded = encode_corpus(dev, cfg.data, src_tok, tgt_tok, "dev", examples)
    pairs = [(ex.src, ex.tgt) for ex in examples if ex.src.strip() and ex.tgt.strip()]
    if cfg.evaluation.group_by_source:
        sources, refs = M.group_references([s for s, _ in pairs], [t for _, t in pairs])
    else:
        sources, refs = [s for s, _ in pairs], [[t] for _, t in pairs]
    cap = cfg.data.dev_max_examples
    return DevSet(encoded, cut_sources([src_tok.encode(x) for x in sources[:cap]], cfg.data, "dev"), refs[:cap])


@torch.no_grad()
def exposure_bias_sums(model: Seq2SeqModel, b: Batch, draws: torch.Tensor,
                       rates: list[float]) -> tuple[float, int, dict[float, float]]:
    """On one batch: the teacher-forced loss sum, the number of reference tokens the model
    predicts right (argmax), and for each rate p the loss sum of the reference when the decoder
    inputs where ``draws`` (B, T uniform in [0, 1)) < p are the model's own predictions from the
    teacher-forced pass (teacher_forcing.own_predictions; positions kept, BOS and padding never
    replaced). Two parallel passes per rate at most, through ``model.forward``: any family."""
    logits = model(b.src, b.src_lens, b.tgt_in)
    correct = int(((logits.argmax(-1) == b.tgt_out) & (b.tgt_out != PAD)).sum())
    pred = own_predictions(logits, b.tgt_in)
    sums = {p: token_loss(model(b.src, b.src_lens, substitute(b.tgt_in, pred, draws < p)), b.tgt_out).item()
            for p in rates}
    return token_loss(logits, b.tgt_out).item(), correct, sums


@torch.no_grad()
def dev_losses(model: Seq2SeqModel, pairs: EncodedCorpus, tc: TrainingConfig, device: torch.device) -> dict[str, float]:
    """Teacher-forced per-token dev loss and perplexity, next-token accuracy (%), and, with
    ``training.exposure_bias``, for each rate p in ``training.exposure_bias_rates``:

    * ``eb_loss@p``: the per-token loss of the reference when a share p of the decoder's
      inputs (after BOS) are the model's own greedy predictions from the teacher-forced pass
      (the guess for the token at t given the gold prefix); positions are kept, so each
      position is still scored against its own reference token;
    * ``eb_gap@p``: ``eb_loss@p`` minus the teacher-forced loss (0 at p = 0 by definition).

    The replaced positions are drawn from a generator seeded with EXPOSURE_BIAS_SEED at every
    call (nested: those at p include those at any smaller p), never from the global RNG, so
    every validation and every run, resumed or not, replaces the same positions."""
    rates = tc.exposure_bias_rates if tc.exposure_bias else []
    model.eval()
    gen = torch.Generator().manual_seed(EXPOSURE_BIAS_SEED)
    total, correct, tokens = 0.0, 0, 0
    mixed = dict.fromkeys(rates, 0.0)
    batches = token_batches(pairs.src_lens, pairs.tgt_lens, tc.batch_tokens, None)
    for idx in tqdm(batches, desc="validation: losses", unit="batch", dynamic_ncols=True, leave=False, disable=None):
        b = collate(pairs, idx).to(device)
        draws = torch.rand(b.tgt_in.shape, generator=gen).to(device)
        tf, right, sums = exposure_bias_sums(model, b, draws, rates)
        total, correct, tokens = total + tf, correct + right, tokens + b.n_tokens
        for p in rates:
            mixed[p] += sums[p]
    n = max(tokens, 1)
    loss = total / n
    values = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "acc": 100.0 * correct / n}
    for p in rates:
        values[exposure_bias_key("loss", p)] = mixed[p] / n
        values[exposure_bias_key("gap", p)] = mixed[p] / n - loss
    return values


def dev_scores(model: Seq2SeqModel, dev: DevSet, tgt_tok: Tokenizer, cfg: Config, device: torch.device) -> M.Scores:
    """The dev sources decoded with the model's search config and scored against their
    references by ``evaluation.metrics``. Always deterministic: sampling would draw from the
    global RNG and make a resumed run diverge from an uninterrupted one."""
    search = cfg.search.model_copy(update={"sample": False, "nbest": 1})
    hyps = translate_ids(model, dev.sources, search, device, progress="validation: decoding")
    return M.score([tgt_tok.decode(h.tokens) for h in hyps], dev.refs, cfg.evaluation.metrics)


def validate(model: Seq2SeqModel, dev: DevSet, tgt_tok: Tokenizer, cfg: Config,
             device: torch.device) -> tuple[dict[str, float], dict[str, str]]:
    """Every validation number (the dev losses, then the output metrics) and the metrics'
    sacrebleu signatures."""
    values = dev_losses(model, dev.pairs, cfg.training, device)
    scores = dev_scores(model, dev, tgt_tok, cfg, device)
    values.update(scores.values)
    return values, scores.signatures


def early_stopping(progress: Progress, values: dict[str, float], cfg: EarlyStoppingConfig) -> bool:
    """Record a validation in ``progress``: the best ``cfg.metric`` so far (and its step), the
    validations since it improved, and ``done`` once they reach ``cfg.patience``. Returns
    whether this validation is a new best."""
    metric = cfg.metric
    if metric not in values:
        raise ConfigError(f"training.early_stopping.metric: {metric!r} is not computed "
                          f"(choose from {', '.join(sorted(values))})")
    current, p = values[metric], progress
    improved = p.best is None or (current < p.best if lower_is_better(metric) else current > p.best)
    if improved:
        p.best, p.best_step, p.bad_validations = current, p.step, 0
    else:
        p.bad_validations += 1
    if cfg.patience and p.bad_validations >= cfg.patience:
        log.info("early stopping: no %s improvement in %d validations", metric, p.bad_validations)
        p.done = True
    return improved
