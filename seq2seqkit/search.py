"""Decoding: turn a model's next-token scores into output sequences.

Everything here uses only the family-neutral interface (``encode``, ``init_state``, ``merge``,
``decode_step``, and ``select`` on nested states), so the same search runs on every model
family. Greedy search and sampling follow one path per sentence (:class:`PathDecoder`, whose
rows may also join and leave between steps: step-level batching in ``s2s serve``); beam search
keeps ``K``; ``search`` picks one from a :class:`SearchConfig`.

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
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .config import SearchConfig
from .data.tokenizers import BOS, EOS, PAD
from .generation_controls import OFF, GenerationControls, apply_controls
from .models.base import Seq2SeqModel, State, check_attention_layer, select


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS/EOS
    score: float  # sum of token log-probabilities (EOS included when it was produced), after generation controls
    attention: torch.Tensor | None = None  # (steps, S) when asked for (attention_layer); steps = len(tokens) + EOS
    norm_score: float | None = None  # beam search: score / GNMT length penalty, what n-best lists are ranked by


def max_length(src_len: int, a: float, b: int) -> int:
    """Output length cap ``a * source_length + b`` (source length without its EOS), in Python
    integers: a setting of any size is exact (int64 tensors would overflow, or wrap round to a
    negative cap), and the arithmetic is CTranslate2's (ct2.py)."""
    return int((src_len - 1) * a) + b


def max_lengths(src_lens: torch.Tensor, a: float, b: int) -> torch.Tensor:
    """:func:`max_length` of each source length."""
    return torch.tensor([max_length(n, a, b) for n in src_lens.tolist()], dtype=torch.long)


def output_caps(model: Seq2SeqModel, src_lens: torch.Tensor, a: float, b: int, limit: int | None,
                min_len: int = 0) -> list[int]:
    """Each sentence's most decoding steps: :func:`max_length`, at least ``min_len`` (a floor on
    the output length lifts a lower cap), within ``limit`` and what the model can take."""
    cap = min((n for n in (limit, model.max_positions) if n is not None), default=None)
    caps = [max(max_length(n, a, b), min_len) for n in src_lens.tolist()]
    return caps if cap is None else [min(c, cap) for c in caps]


def _check_attention(model: Seq2SeqModel, attention_layer: int | None) -> None:
    if attention_layer is not None:
        check_attention_layer(model, attention_layer)


def gnmt_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ``((5 + length) / 6) ** alpha`` (Wu et al. 2016); alpha 0 ranks by raw score.
    A penalty beyond the largest float is infinite (see :func:`power`)."""
    return power((5 + length) / 6, alpha)


def power(base: float, exponent: float) -> float:
    """``base ** exponent``, infinite where it is beyond the largest float (Python's ``**``
    raises OverflowError there: a length penalty of 1e308 would end the command)."""
    try:
        return base**exponent
    except OverflowError:
        return math.inf


# ------------------------------------------------------------------- one path per sentence
Chooser = Callable[[torch.Tensor], torch.Tensor]  # (B, V) log-probs -> (B,) next tokens


@dataclass(eq=False)
class _Path:
    """A row of a :class:`PathDecoder`: its output so far."""

    tag: Hashable
    cap: int  # the most steps it may decode
    src_len: int  # its source length (EOS included): what its attention rows keep
    tokens: list[int] = field(default_factory=list)
    score: float = 0.0
    steps: int = 0
    attention: list[torch.Tensor] = field(default_factory=list)  # stays empty unless attention is asked for

    def hypothesis(self) -> Hypothesis:
        return Hypothesis(self.tokens, self.score, torch.stack(self.attention).cpu() if self.attention else None)


class PathDecoder:
    """Decoding of one path per row (greedy or sampled) as a batch that inputs may join before
    any step and leave after any: :meth:`admit` encodes new inputs and merges them into the
    running rows (the model's ``merge``), :meth:`step` decodes one token for every row and
    returns the rows that just finished (EOS or their length cap), which leave the batch, so a
    step costs what the unfinished ones need. Greedy search and sampling admit their whole batch
    once and step until it is empty; ``s2s serve`` admits requests as they come (step-level,
    or continuous, batching). ``choose`` picks from the log-probabilities after ``controls``
    (each row with its own output so far), and a row's score adds those."""

    def __init__(self, model: Seq2SeqModel, choose: Chooser, max_len_a: float = 1.5, max_len_b: int = 10,
                 max_output_tokens: int | None = None, attention_layer: int | None = None,
                 controls: GenerationControls = OFF) -> None:
        _check_attention(model, attention_layer)
        self.model, self.choose, self.attention_layer, self.controls = model, choose, attention_layer, controls
        self.max_len_a, self.max_len_b, self.max_output_tokens = max_len_a, max_len_b, max_output_tokens
        self.rows: list[_Path] = []
        self.enc = self.state = self.prev = None
        self.history: torch.Tensor | None = None  # (rows, T >= steps): each row's output so far from column 0

    def __len__(self) -> int:
        return len(self.rows)

    @torch.no_grad()
    def admit(self, src: torch.Tensor, src_lens: torch.Tensor, tags: Sequence[Hashable]) -> None:
        """Encode a batch of new inputs ((B, S) ids, (B,) lengths), one ``tag`` each (what
        :meth:`step` returns with its hypothesis), and add them to the running rows."""
        enc = self.model.encode(src, src_lens)
        state = self.model.init_state(enc)
        caps = output_caps(self.model, src_lens, self.max_len_a, self.max_len_b, self.max_output_tokens,
                           self.controls.min_len)
        prev = torch.full((src.size(0),), BOS, dtype=torch.long, device=src.device)
        history = src.new_zeros(src.size(0), 0 if self.history is None else self.history.size(1))
        if self.rows:
            self.enc, self.state = self.model.merge(self.enc, self.state, enc, state)
            self.prev = torch.cat([self.prev, prev])
            self.history = torch.cat([self.history, history]) if self.history is not None else None
        else:
            self.enc, self.state, self.prev = enc, state, prev
            self.history = history if self.controls.needs_history else None
        self.rows += [_Path(tag, cap, n) for tag, cap, n in zip(tags, caps, src_lens.tolist())]

    @torch.no_grad()
    def step(self) -> list[tuple[Hashable, Hypothesis]]:
        """Decode one token of every row; the (tag, hypothesis) of each row that finished."""
        out = self.model.decode_step(self.prev, self.enc, self.state, self.attention_layer)
        logp = self._controlled(F.log_softmax(out.logits.float(), dim=-1))
        best = self.choose(logp)
        best_lp = logp.gather(1, best.unsqueeze(1)).squeeze(1)  # the (processed) log-prob, whatever chose it
        if self.history is not None:
            self._record(best)
        keep, done = [], []
        for r, (row, tok, lp) in enumerate(zip(self.rows, best.tolist(), best_lp.tolist())):
            row.score += lp
            row.steps += 1
            if self.attention_layer is not None and out.attention is not None:
                row.attention.append(out.attention[r, : row.src_len])
            if tok != EOS:
                row.tokens.append(tok)
            (keep if tok != EOS and row.steps < row.cap else done).append(r)
        finished = [(self.rows[r].tag, self.rows[r].hypothesis()) for r in done]
        if not keep:
            self.rows, self.enc, self.state, self.prev, self.history = [], None, None, None, None
        elif done:
            self._keep(keep, best, out.state)
        else:
            self.prev, self.state = best, out.state
        return finished

    def drop(self, leave: Callable[[Hashable], bool]) -> None:
        """Remove the rows whose tag ``leave`` is true of, unfinished (their callers gave up)."""
        keep = [r for r, row in enumerate(self.rows) if not leave(row.tag)]
        if not keep:
            self.rows, self.enc, self.state, self.prev, self.history = [], None, None, None, None
        elif len(keep) < len(self.rows):
            self._keep(keep, self.prev, self.state)

    def _keep(self, keep: list[int], prev: torch.Tensor, state: State) -> None:
        idx = torch.tensor(keep, device=prev.device)
        self.rows = [self.rows[r] for r in keep]
        self.prev, self.enc, self.state = prev[idx], select(self.enc, idx), select(state, idx)
        if self.history is not None:
            self.history = self.history[idx, : max(row.steps for row in self.rows)]

    def _record(self, best: torch.Tensor) -> None:
        """Write each row's new token after its own output so far."""
        assert self.history is not None
        steps = torch.tensor([row.steps for row in self.rows], device=best.device)
        if self.history.size(1) <= max(row.steps for row in self.rows):
            self.history = torch.cat([self.history, self.history.new_zeros(len(self.rows), 1)], dim=1)
        self.history[torch.arange(len(self.rows), device=best.device), steps] = best

    def _controlled(self, logp: torch.Tensor) -> torch.Tensor:
        """``controls`` on one step's log-probabilities, each row with its own output so far;
        rows that joined at different steps go in one group per step count."""
        if not self.controls.active:
            return logp
        steps = [row.steps for row in self.rows]
        groups = sorted(set(steps))
        if len(groups) == 1:
            history = None if self.history is None else self.history[:, : groups[0]]
            return apply_controls(logp, history, groups[0], self.controls)
        out = logp.clone()
        for n in groups:
            idx = torch.tensor([r for r, s in enumerate(steps) if s == n], device=logp.device)
            history = None if self.history is None else self.history[idx, :n]
            out[idx] = apply_controls(logp[idx], history, n, self.controls)
        return out


@torch.no_grad()
def _single_path(model: Seq2SeqModel, src: torch.Tensor, src_lens: torch.Tensor, max_len_a: float,
                 max_len_b: int, choose: Chooser, max_output_tokens: int | None = None,
                 attention_layer: int | None = None, controls: GenerationControls = OFF) -> list[Hypothesis]:
    """Batched decoding of one path per sentence (greedy or sampled): a :class:`PathDecoder`
    that admits the whole batch, then steps until every sentence has finished."""
    decoder = PathDecoder(model, choose, max_len_a, max_len_b, max_output_tokens, attention_layer, controls)
    decoder.admit(src, src_lens, range(src.size(0)))
    out: list[Hypothesis | None] = [None] * src.size(0)
    while decoder:
        for i, hyp in decoder.step():
            out[i] = hyp  # type: ignore[index]
    return out  # type: ignore[return-value]


def greedy_search(model: Seq2SeqModel, src: torch.Tensor, src_lens: torch.Tensor, max_len_a: float = 1.5,
                  max_len_b: int = 10, max_output_tokens: int | None = None,
                  attention_layer: int | None = None, controls: GenerationControls = OFF) -> list[Hypothesis]:
    """Batched greedy decoding: the most probable next token at every step (after ``controls``).
    With ``attention_layer``, each hypothesis keeps that attention's weights at every step."""
    return _single_path(model, src, src_lens, max_len_a, max_len_b, most_probable, max_output_tokens,
                        attention_layer, controls)


def most_probable(logp: torch.Tensor) -> torch.Tensor:
    """Greedy search's choice: each row's best token."""
    return logp.argmax(dim=-1)


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
    return _single_path(model, src, src_lens, max_len_a, max_len_b, sampler(temperature, top_k, top_p, generator),
                        max_output_tokens, attention_layer, controls)


def sampler(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
            generator: torch.Generator | None = None) -> Chooser:
    """Sampling's choice: temperature, then top-k, then top-p, then a draw per row."""

    def choose(logp: torch.Tensor) -> torch.Tensor:
        # Each row's best token at 0 (softmax is the same), so that a tiny temperature leaves it at
        # 0 and the others at -inf, not every entry at -inf (NaN probabilities); below float32's
        # smallest normal number the temperature itself would round to 0 there, so such a one is
        # applied in double precision (not every step of every sampling run: this is the decoding loop).
        if temperature < torch.finfo(logp.dtype).tiny:
            logp = logp.double()
        logp = logp - logp.max(dim=-1, keepdim=True).values
        probs = filter_logits(logp / temperature, top_k, top_p).softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return choose


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
        n = paths_per_input(cfg)
        rows = torch.arange(src.size(0), device=src.device).repeat_interleave(n)
        hyps = sample_search(model, src[rows], src_lens[rows], cfg.max_len_a, cfg.max_len_b,
                             cfg.temperature, cfg.top_k, cfg.top_p, generator, cap, attention_layer, ctl)
        return [rank_samples(hyps[i * n : (i + 1) * n]) for i in range(src.size(0))]
    if cfg.beam_size == 1:
        return [[h] for h in greedy_search(model, src, src_lens, cfg.max_len_a, cfg.max_len_b, cap, attention_layer,
                                           ctl)]
    return beam_search(model, src, src_lens, cfg.beam_size, cfg.max_len_a, cfg.max_len_b,
                       cfg.length_penalty, cfg.nbest, cap, attention_layer, ctl)


def path_decoder(model: Seq2SeqModel, cfg: SearchConfig, generator: torch.Generator | None = None,
                 attention_layer: int | None = None) -> PathDecoder | None:
    """An empty :class:`PathDecoder` for ``cfg``'s search (greedy, or sampling: each input then
    needs :func:`paths_per_input` rows, ranked by :func:`rank_samples`); None for beam search,
    which keeps K rows per sentence that only its own loop can reorder."""
    if not cfg.sample and cfg.beam_size > 1:
        return None
    choose = sampler(cfg.temperature, cfg.top_k, cfg.top_p, generator) if cfg.sample else most_probable
    return PathDecoder(model, choose, cfg.max_len_a, cfg.max_len_b, cfg.max_output_tokens, attention_layer,
                       controls_of(cfg))


def paths_per_input(cfg: SearchConfig) -> int:
    """Rows a single-path search decodes per input: ``nbest`` samples, or the one greedy path."""
    return cfg.nbest if cfg.sample else 1


def rank_samples(hyps: Sequence[Hypothesis]) -> list[Hypothesis]:
    """An input's samples as its n-best list: by model score, best first."""
    return sorted(hyps, key=lambda h: -h.score)


def controls_of(cfg: SearchConfig) -> GenerationControls:
    """The generation controls a search config sets."""
    return GenerationControls(cfg.no_repeat_ngram_size, cfg.min_len, cfg.repetition_penalty)
