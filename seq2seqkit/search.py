"""Decoding: turn a model's next-token scores into output sequences.

Everything here uses only the family-neutral interface (``encode``, ``init_state``,
``decode_step``, and ``select`` on nested states), so the same search runs on every model
family. Greedy search and sampling follow one path per sentence; beam search keeps ``K``;
``search`` picks one from a :class:`SearchConfig`.

Attention weights are kept only when asked for (``attention_layer``): a hypothesis then holds
one row per step over its source, which for long inputs is most of search's memory; otherwise
nothing per step is kept beyond the tokens. Every output is capped at ``max_len_a * source
length + max_len_b`` tokens (raised to ``min_len`` where lower), at ``max_output_tokens`` and at
the model's ``max_positions``.

Generation controls (:mod:`~seq2seqkit.generation_controls`: no repeated n-grams, a minimum
length, a repetition penalty) rewrite each step's log-probabilities before any search picks from
them, per row with the row's own history; scores are sums of those processed log-probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import SearchConfig
from .data.tokenizers import BOS, EOS, PAD
from .generation_controls import OFF, GenerationControls, apply_controls
from .models.base import Seq2SeqModel, check_attention_layer, select


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS/EOS
    score: float  # sum of token log-probabilities (EOS included when it was produced), after generation controls
    attention: torch.Tensor | None = None  # (steps, S) when asked for (attention_layer); steps = len(tokens) + EOS
    norm_score: float | None = None  # beam search: score / GNMT length penalty, what n-best lists are ranked by


def max_lengths(src_lens: torch.Tensor, a: float, b: int) -> torch.Tensor:
    """Output length cap ``a * source_length + b`` (source length without its EOS)."""
    return ((src_lens - 1).float() * a).long() + b


def output_caps(model: Seq2SeqModel, src_lens: torch.Tensor, a: float, b: int, limit: int | None,
                min_len: int = 0) -> list[int]:
    """Each sentence's most decoding steps: :func:`max_lengths`, at least ``min_len`` (a floor on
    the output length lifts a lower cap), within ``limit`` and what the model can take."""
    cap = min((n for n in (limit, model.max_positions) if n is not None), default=None)
    caps = max_lengths(src_lens, a, b).clamp(min=min_len)
    return (caps if cap is None else caps.clamp(max=cap)).tolist()


def _check_attention(model: Seq2SeqModel, attention_layer: int | None) -> None:
    if attention_layer is not None:
        check_attention_layer(model, attention_layer)


def gnmt_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ``((5 + length) / 6) ** alpha`` (Wu et al. 2016); alpha 0 ranks by raw score."""
    return ((5 + length) / 6) ** alpha


# ------------------------------------------------------------------- one path per sentence
Chooser = Callable[[torch.Tensor], torch.Tensor]  # (B, V) log-probs -> (B,) next tokens


@torch.no_grad()
def _single_path(model: Seq2SeqModel, src: torch.Tensor, src_lens: torch.Tensor, max_len_a: float,
                 max_len_b: int, choose: Chooser, max_output_tokens: int | None = None,
                 attention_layer: int | None = None, controls: GenerationControls = OFF) -> list[Hypothesis]:
    """Batched decoding of one path per sentence (greedy or sampled); each sentence stops at its
    own EOS or length cap and leaves the batch, so a step costs what the unfinished ones need.
    ``choose`` picks from the log-probabilities after ``controls``, and the score adds those."""
    _check_attention(model, attention_layer)
    bsz = src.size(0)
    enc = model.encode(src, src_lens)
    state = model.init_state(enc)
    caps = output_caps(model, src_lens, max_len_a, max_len_b, max_output_tokens, controls.min_len)
    lens = src_lens.tolist()
    tokens: list[list[int]] = [[] for _ in range(bsz)]
    scores = [0.0] * bsz
    attn: list[list[torch.Tensor]] = [[] for _ in range(bsz)]  # stays empty unless attention is asked for
    alive = torch.arange(bsz, device=src.device)  # batch rows still decoding
    prev = torch.full((bsz,), BOS, dtype=torch.long, device=src.device)
    history = torch.empty((bsz, 0), dtype=torch.long, device=src.device) if controls.needs_history else None
    step = 0
    while alive.numel():
        out = model.decode_step(prev, enc, state, attention_layer)
        logp = apply_controls(F.log_softmax(out.logits.float(), dim=-1), history, step, controls)
        best = choose(logp)
        best_lp = logp.gather(1, best.unsqueeze(1)).squeeze(1)  # the (processed) log-prob, whatever chose it
        if history is not None:
            history = torch.cat([history, best.unsqueeze(1)], dim=1)
        keep = []
        for row, (i, tok, lp) in enumerate(zip(alive.tolist(), best.tolist(), best_lp.tolist())):
            scores[i] += lp
            if attention_layer is not None and out.attention is not None:
                attn[i].append(out.attention[row, : lens[i]])
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
            history = history[idx] if history is not None else None
        else:
            prev, state = best, out.state
    return [Hypothesis(tokens[i], scores[i], torch.stack(attn[i]).cpu() if attn[i] else None) for i in range(bsz)]


def greedy_search(model: Seq2SeqModel, src: torch.Tensor, src_lens: torch.Tensor, max_len_a: float = 1.5,
                  max_len_b: int = 10, max_output_tokens: int | None = None,
                  attention_layer: int | None = None, controls: GenerationControls = OFF) -> list[Hypothesis]:
    """Batched greedy decoding: the most probable next token at every step (after ``controls``).
    With ``attention_layer``, each hypothesis keeps that attention's weights at every step."""
    return _single_path(model, src, src_lens, max_len_a, max_len_b, lambda logp: logp.argmax(dim=-1),
                        max_output_tokens, attention_layer, controls)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf all but the ``top_k`` best tokens and the smallest set whose probability
    reaches ``top_p`` (nucleus, Holtzman et al. 2020); the best token always survives."""
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # the mass before this token already reaches p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, -math.inf))
    return logits


def sample_search(model: Seq2SeqModel, src: torch.Tensor, src_lens: torch.Tensor, max_len_a: float = 1.5,
                  max_len_b: int = 10, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None, max_output_tokens: int | None = None,
                  attention_layer: int | None = None, controls: GenerationControls = OFF) -> list[Hypothesis]:
    """Batched sampling (``controls``, then temperature, then top-k, then top-p). ``score`` is the
    log-probability of the sample after ``controls`` (without them: the model's own), untempered,
    so it compares with other searches."""

    def choose(logp: torch.Tensor) -> torch.Tensor:
        probs = filter_logits(logp / temperature, top_k, top_p).softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return _single_path(model, src, src_lens, max_len_a, max_len_b, choose, max_output_tokens, attention_layer,
                        controls)


# ---------------------------------------------------------------------------- beam search
@torch.no_grad()
def beam_search(model: Seq2SeqModel, src: torch.Tensor, src_lens: torch.Tensor, beam_size: int,
                max_len_a: float = 1.5, max_len_b: int = 10, length_penalty: float = 1.0,
                nbest: int = 1, max_output_tokens: int | None = None,
                attention_layer: int | None = None, controls: GenerationControls = OFF) -> list[list[Hypothesis]]:
    """Batched beam search; returns the ``nbest`` best hypotheses per sentence, best first.

    All sentences and beams run as one batch of ``B*K`` rows. Each step takes the top ``2K``
    (parent, token) candidates of a sentence: those ending in EOS among its best ``K`` join its
    finished list (ranked by score / GNMT penalty of length tokens+EOS), the best ``K`` others
    stay live. (An EOS ranked below the beam is dropped: otherwise poor short hypotheses fill
    the finished list and stop the search before the good ones end.)
    A sentence is done when its ``nbest`` best finished hypotheses beat every live one (see
    ``_done``), or at its length cap, where the live ones finish without EOS. Done sentences
    leave the batch. With ``attention_layer``, every live row carries its attention history
    (reordered with the beams); otherwise none is kept. ``controls`` rewrite each row's
    log-probabilities with that beam's own output so far; scores are sums of the results.
    """
    if nbest > beam_size:
        raise ValueError(f"nbest ({nbest}) cannot exceed beam_size ({beam_size})")
    _check_attention(model, attention_layer)
    bsz, k, dev = src.size(0), beam_size, src.device
    caps = output_caps(model, src_lens, max_len_a, max_len_b, max_output_tokens, controls.min_len)
    lens = src_lens.tolist()
    enc = select(model.encode(src, src_lens), torch.arange(bsz, device=dev).repeat_interleave(k))
    state = model.init_state(enc)
    sents = list(range(bsz))  # input index of each sentence in the batch, K rows each
    scores = torch.full((bsz, k), -math.inf, dtype=torch.float64, device=dev)
    scores[:, 0] = 0.0  # one live beam at step 0, so the first K candidates are distinct
    seqs: list[list[int]] = [[] for _ in range(bsz * k)]  # tokens of each row's hypothesis
    attn: torch.Tensor | None = None  # (rows, steps, S) attention history, when asked for
    prev = torch.full((bsz * k,), BOS, dtype=torch.long, device=dev)
    history = torch.empty((bsz * k, 0), dtype=torch.long, device=dev) if controls.needs_history else None
    finished: list[list[Hypothesis]] = [[] for _ in range(bsz)]

    def finish(i: int, row: int, toks: list[int], score: float, steps: int) -> None:
        att = attn[row, :, : lens[i]].cpu() if attn is not None else None
        finished[i].append(Hypothesis(toks, score, att, score / gnmt_penalty(steps, length_penalty)))

    for step in range(max(caps)):
        out = model.decode_step(prev, enc, state, attention_layer)
        if attention_layer is not None and out.attention is not None:
            new = out.attention.unsqueeze(1)
            attn = new if attn is None else torch.cat([attn, new], dim=1)
        logp = apply_controls(F.log_softmax(out.logits.float(), dim=-1), history, step, controls)
        vocab = logp.size(-1)
        # A sentence's best 2K (parent, token) candidates are among each parent's best 2K
        # tokens (a parent's score shifts all its tokens alike), so the double-precision sums
        # and the final top-k touch K*2K candidates per sentence instead of K*V.
        per_row = min(2 * k, vocab)
        row_lp, row_tok = logp.topk(per_row, dim=1)
        cand = (scores.view(-1, 1) + row_lp.double()).view(len(sents), k * per_row)  # double: sums as greedy's
        top_scores, top_pos = cand.topk(min(2 * k, k * per_row), dim=1)
        top_ids = (top_pos // per_row) * vocab + row_tok.view(len(sents), -1).gather(1, top_pos)
        parents, next_tokens, next_scores, kept = [], [], [], []
        for j, (i, row_scores, row_ids) in enumerate(zip(sents, top_scores.tolist(), top_ids.tolist())):
            live: list[tuple[int, int, float]] = []  # (parent row, token, score)
            for rank, (score, flat) in enumerate(zip(row_scores, row_ids)):
                if len(live) == k or score == -math.inf:
                    break
                row, tok = j * k + flat // vocab, flat % vocab
                if tok != EOS:
                    live.append((row, tok, score))
                elif rank < k:  # only an EOS that would have made the beam counts (as in fairseq)
                    finish(i, row, list(seqs[row]), score, step + 1)
            if step + 1 >= caps[i]:
                for row, tok, score in live:
                    finish(i, row, seqs[row] + [tok], score, step + 1)
                continue
            if _done(finished[i], live, nbest, gnmt_penalty(step + 2, length_penalty)):
                continue
            live += [(j * k, PAD, -math.inf)] * (k - len(live))  # dead slots (a tiny vocabulary)
            kept.append(i)
            parents += [row for row, _, _ in live]
            next_tokens += [tok for _, tok, _ in live]
            next_scores += [score for _, _, score in live]
        if not kept:
            break
        idx = torch.tensor(parents, device=dev)
        state = select(out.state, idx)
        if len(kept) < len(sents):
            # The K rows of a sentence share one encoder output, so reordering beams never
            # touches it: only when sentences leave the batch are their rows dropped.
            still = set(kept)
            rows = [j * k + b for j, i in enumerate(sents) if i in still for b in range(k)]
            enc = select(enc, torch.tensor(rows, device=dev))
        attn = attn.index_select(0, idx) if attn is not None else None
        seqs = [seqs[r] + [t] for r, t in zip(parents, next_tokens)]
        prev = torch.tensor(next_tokens, device=dev)
        if history is not None:  # each row's own output so far, reordered with its beam
            history = torch.cat([history.index_select(0, idx), prev.unsqueeze(1)], dim=1)
        scores = torch.tensor(next_scores, dtype=torch.float64, device=dev).view(-1, k)
        sents = kept
    return [sorted(f, key=lambda h: -h.norm_score)[:nbest] for f in finished]  # type: ignore[operator]


def _done(finished: list[Hypothesis], live: list[tuple[int, int, float]], nbest: int, penalty: float) -> bool:
    """Whether a sentence can stop: its ``nbest``-th finished hypothesis already beats the best
    live one, scored as if it ended at the next step (``penalty``). Log-probs only lower a live
    score, so with ``length_penalty`` 0 this is exact; above 0 it is the usual heuristic.
    Stopping at ``K`` finished instead would let short, poor hypotheses that ended early end
    the search before the best one had emitted EOS."""
    if not live:
        return True
    if len(finished) < nbest:
        return False
    kth = sorted((h.norm_score for h in finished), reverse=True)[nbest - 1]  # type: ignore[type-var]
    return kth >= max(s for _, _, s in live) / penalty


# ------------------------------------------------------------------------------ dispatcher
def search(model: Seq2SeqModel, src: torch.Tensor, src_lens: torch.Tensor, cfg: SearchConfig,
           generator: torch.Generator | None = None, attention_layer: int | None = None) -> list[list[Hypothesis]]:
    """Decode a batch as ``cfg`` says; returns an n-best list per sentence, best first.

    Sampling draws ``cfg.nbest`` independent samples per sentence (ranked by model score);
    beam size 1 is greedy search. ``attention_layer``: keep that attention's weights (see
    :func:`greedy_search`); None keeps none. The config's generation controls apply to all three.
    """
    cap, ctl = cfg.max_output_tokens, controls_of(cfg)
    if cfg.sample:
        n = cfg.nbest
        rows = torch.arange(src.size(0), device=src.device).repeat_interleave(n)
        hyps = sample_search(model, src[rows], src_lens[rows], cfg.max_len_a, cfg.max_len_b,
                             cfg.temperature, cfg.top_k, cfg.top_p, generator, cap, attention_layer, ctl)
        return [sorted(hyps[i * n : (i + 1) * n], key=lambda h: -h.score) for i in range(src.size(0))]
    if cfg.beam_size == 1:
        return [[h] for h in greedy_search(model, src, src_lens, cfg.max_len_a, cfg.max_len_b, cap, attention_layer,
                                           ctl)]
    return beam_search(model, src, src_lens, cfg.beam_size, cfg.max_len_a, cfg.max_len_b,
                       cfg.length_penalty, cfg.nbest, cap, attention_layer, ctl)


def controls_of(cfg: SearchConfig) -> GenerationControls:
    """The generation controls a search config sets."""
    return GenerationControls(cfg.no_repeat_ngram_size, cfg.min_len, cfg.repetition_penalty)
