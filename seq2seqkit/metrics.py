"""Evaluation metrics over hypotheses and (possibly several) references per segment.

Several references matter for grapheme-to-phoneme (G2P): a word such as "read" has two
correct pronunciations, and a prediction matching either one is right. Every metric here
therefore takes ``refs[i]``, the list of acceptable references for ``hyps[i]``.

All values are percentages (0-100):

- ``bleu``, ``chrf``: sacrebleu corpus scores (with their reproducibility signatures).
  BLEU-4 is 0 when no hypothesis has 4 tokens (no 4-grams to count), so for G2P on short
  words chrF, PER and WER are the informative numbers.
- ``exact``: share of hypotheses equal to any of their references (whitespace-normalised).
- ``wer``: share of hypotheses that are wrong, ``100 - exact``. This is the G2P
  convention ("word error rate" = wrong *words*, each segment being one word), not the
  MT/ASR token-level WER; the token-level rate is ``per``.
- ``per``: corpus-level token (phoneme) error rate, Levenshtein distance on
  whitespace-split tokens against the closest reference.
- ``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum``: ROUGE F1 from Google's ``rouge-score``
  package (the implementation Hugging Face ``evaluate`` wraps), Porter stemming on, its default
  tokenizer (lower-cased, runs of ``[a-z0-9]``), averaged over segments (the plain mean, no
  bootstrap). With several references a segment scores against the one of highest F1, per
  ROUGE type (``RougeScorer.score_multi``). ``rougeL`` is the LCS over the whole text;
  ``rougeLsum`` the summary-level LCS over sentences, which rouge-score reads as the lines of
  the text: :func:`summary_sentences` puts each sentence on a line of its own first (see there
  for the rule). The four are separate names (there is no ``rouge`` shorthand), so each can be
  an early-stopping metric. Their settings are printed as one ``ROUGE signature`` line.
- ``bleu1``, ``bleu2``: sacrebleu corpus BLEU with ``max_ngram_order`` 1 and 2 (the BLEU-1 and
  BLEU-2 of dialogue papers: the geometric mean of the 1..n-gram precisions times the brevity
  penalty), each with its signature (sacrebleu's, which omits the order, plus ``max_ngram_order``).
- ``distinct1``, ``distinct2``: the diversity of the outputs (Li et al. 2016): distinct n-grams
  over all n-grams, counted over the whole set of outputs (corpus level), whitespace tokens.
- ``length``: the mean output length in whitespace tokens (a count, not a percentage).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata

from rapidfuzz.distance import Levenshtein
from sacrebleu.metrics import BLEU, CHRF

from .data.tokenizers import split_lines

ROUGE = ("rouge1", "rouge2", "rougeL", "rougeLsum")
DIALOGUE = ("bleu1", "bleu2", "distinct1", "distinct2", "length")
METRICS = ("bleu", "chrf", "wer", "per", "exact", *ROUGE, *DIALOGUE)

_LABELS = {"bleu": "BLEU", "chrf": "chrF", "wer": "WER", "per": "PER", "exact": "exact", "rouge": "ROUGE",
           "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum",
           "bleu1": "BLEU-1", "bleu2": "BLEU-2", "distinct1": "Distinct-1", "distinct2": "Distinct-2", "length": "length"}
_PERCENT_SIGN = {"wer", "per", "exact"}  # error/accuracy rates print with a "%"


@dataclass
class Scores:
    """Metric values in percent, plus sacrebleu signatures so BLEU/chrF can be reproduced."""

    values: dict[str, float]
    signatures: dict[str, str] = field(default_factory=dict)

    def format(self) -> str:
        """One summary line (``BLEU 31.20 | chrF 55.00 | WER 23.10% ...``), then one line per signature."""
        parts = [
            f"{_LABELS.get(name, name)} {value:.2f}{'%' if name in _PERCENT_SIGN else ''}"
            for name, value in self.values.items()
        ]
        lines = [" | ".join(parts)]
        lines += [f"{_LABELS.get(name, name)} signature: {sig}" for name, sig in self.signatures.items()]
        return "\n".join(lines)


def group_references(sources: Sequence[str], targets: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Collapse repeated sources into one item whose targets are alternative references.

    A G2P test file lists a word once per pronunciation; scoring each row separately
    would count a correct prediction of one pronunciation as an error on the other row.
    Sources keep first-appearance order; each source's targets are de-duplicated in order.
    """
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} sources but {len(targets)} targets")
    grouped: dict[str, list[str]] = {}
    for src, tgt in zip(sources, targets):
        alts = grouped.setdefault(src, [])
        if tgt not in alts:
            alts.append(tgt)
    return list(grouped), list(grouped.values())


def _norm(text: str) -> str:
    return " ".join(text.split())


def _exact(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    hits = sum(_norm(h) in {_norm(r) for r in rs} for h, rs in zip(hyps, refs))
    return 100.0 * hits / len(hyps)


def _per(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Corpus token error rate: sum of distances / sum of chosen reference lengths.

    Per segment the closest reference is chosen; on a distance tie the *longer* reference
    wins (larger denominator, hence the lower, more charitable rate). If every chosen
    reference is empty the rate is 0 when the hypotheses are empty too, else 100.
    """
    errors = length = 0
    for hyp, rs in zip(hyps, refs):
        h = hyp.split()
        dist, neg_len = min((Levenshtein.distance(h, r.split()), -len(r.split())) for r in rs)
        errors += dist
        length -= neg_len
    if length == 0:
        return 0.0 if errors == 0 else 100.0
    return 100.0 * errors / length


def distinct(hyps: Sequence[str], n: int) -> float:
    """Distinct-n in percent: distinct n-grams over all n-grams of all outputs (whitespace
    tokens); 0 when the outputs hold no n-gram."""
    grams = [tuple(toks[i:i + n]) for toks in (h.split() for h in hyps) for i in range(len(toks) - n + 1)]
    return 100.0 * len(set(grams)) / len(grams) if grams else 0.0


# A sentence ends at ., ! or ? (a run of them, then any closing quotes or brackets) where
# blanks and a capital letter, a digit or an opening quote/bracket follow.
_SENTENCE_END = re.compile(r"([.!?]+[\"'\u2019\u201d)\]]*)\s+(?=[\"'\u2018\u201c(\[]?[A-Z0-9])")


def summary_sentences(text: str) -> str:
    """``text`` with one sentence a line, as rouge-score's ``rougeLsum`` expects.

    Line breaks already in the text (and the tokenizers' ``<sep>`` piece, as ``s2s generate``
    writes a line break) stay sentence boundaries; within a line, a sentence ends at ``.``,
    ``!`` or ``?`` (with any closing quotes or brackets) followed by blanks and then a capital
    letter, a digit or an opening quote or bracket. A rule, not a trained model (NLTK's Punkt
    needs a download): "Mr. Smith" splits after "Mr.", "8 p.m. at" does not. Only ROUGE-Lsum
    depends on it: the other ROUGE types read the text as one sequence of tokens.
    """
    return "\n".join(_SENTENCE_END.sub("\\1\n", line.strip()) for line in split_lines(text) if line.strip())


def _rouge(hyps: Sequence[str], refs: Sequence[Sequence[str]], types: Sequence[str]) -> tuple[dict[str, float], str]:
    """Mean ROUGE F1 (percent) of each type, and the signature of the settings."""
    from rouge_score.rouge_scorer import RougeScorer  # imports NLTK: only when ROUGE is asked for
    from rouge_score.tokenizers import DefaultTokenizer

    # the default tokenizer, given explicitly (RougeScorer would log that it picks it)
    scorer = RougeScorer(list(types), tokenizer=DefaultTokenizer(use_stemmer=True))
    totals = dict.fromkeys(types, 0.0)
    for hyp, rs in zip(hyps, refs):
        best = scorer.score_multi([summary_sentences(r) for r in rs], summary_sentences(hyp))
        for t in types:
            totals[t] += best[t].fmeasure
    counts = {len(rs) for rs in refs}
    nrefs = str(counts.pop()) if len(counts) == 1 else "var"
    signature = (f"nrefs:{nrefs}|multiref:max-f1|stem:porter|tok:rouge-score-default|lsum-split:newline+punct"
                 f"|score:f1|agg:mean|version:rouge-score-{metadata.version('rouge-score')}")
    return {t: 100.0 * totals[t] / len(hyps) for t in types}, signature


def score(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    metrics: Iterable[str] = METRICS,
    tokenize: str = "13a",
) -> Scores:
    """Score ``hyps`` against ``refs`` (``refs[i]``: acceptable references for ``hyps[i]``).

    ``wer`` is the G2P word error rate: the percentage of hypotheses matching none of
    their references (``100 - exact``), not a token-level edit rate (that is ``per``).
    ``tokenize`` is sacrebleu's BLEU tokenizer (chrF works on characters and ignores it).
    With no hypotheses every value is 0.0 and there are no signatures (sacrebleu can only
    sign a metric it has evaluated).
    """
    names = list(metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))}; valid: {', '.join(METRICS)}")
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference lists")
    for i, rs in enumerate(refs):
        if isinstance(rs, str) or not rs:
            raise ValueError(f"refs[{i}] must be a non-empty list of reference strings, got {rs!r}")

    if not hyps:
        return Scores({m: 0.0 for m in names}, {})

    values: dict[str, float] = {}
    signatures: dict[str, str] = {}
    # sacrebleu wants reference *streams* of equal length. It officially supports a
    # variable number of references per segment by padding with None (see
    # BaseMetric._cache_references: "can be '' or None"; the signature then reads
    # nrefs:var), so pad with None rather than repeating a reference.
    n_streams = max(len(rs) for rs in refs)
    streams = [[rs[k] if k < len(rs) else None for rs in refs] for k in range(n_streams)]
    exact = _exact(hyps, refs) if {"exact", "wer"} & set(names) else 0.0
    rouge = [m for m in names if m in ROUGE]
    rouge_values: dict[str, float] = {}
    if rouge:
        rouge_values, signatures["rouge"] = _rouge(hyps, refs, rouge)
    for name in names:
        if name in rouge_values:
            values[name] = rouge_values[name]
        elif name in ("bleu", "bleu1", "bleu2", "chrf"):
            order = {"bleu1": 1, "bleu2": 2}.get(name, 4)
            metric = CHRF() if name == "chrf" else BLEU(tokenize=tokenize, max_ngram_order=order)
            values[name] = metric.corpus_score(list(hyps), streams).score
            # sacrebleu's BLEU signature does not record the n-gram order: add it where it is not 4
            signatures[name] = str(metric.get_signature()) + (f"|max_ngram_order:{order}" if order != 4 else "")
        elif name == "exact":
            values[name] = exact
        elif name == "wer":
            values[name] = 100.0 - exact
        elif name in ("distinct1", "distinct2"):
            values[name] = distinct(hyps, int(name[-1]))
        elif name == "length":
            values[name] = sum(len(h.split()) for h in hyps) / len(hyps)
        else:
            values[name] = _per(hyps, refs)
    return Scores(values, signatures)


# ------------------------------------------------------------------- scores per group of rows
@dataclass
class GroupScores:
    """Scores of each group of items (e.g. each bAbI task), their unweighted mean over the groups
    (how bAbI papers average over tasks: each group counts once, whatever its size) and the
    scores of all items pooled."""

    groups: dict[str, Scores]  # in natural order of the labels (numbers as numbers)
    counts: dict[str, int]
    mean: dict[str, float]
    overall: Scores

    def failed(self, metric: str, above: float) -> list[str]:
        """The groups whose ``metric`` is above ``above`` (bAbI: error above 5%)."""
        return [g for g, s in self.groups.items() if s.values[metric] > above]

    def format(self, name: str = "group", fail_above: tuple[str, float] | None = None) -> str:
        """A table, a row per group, then the mean over groups, the pooled scores and their
        signatures, and (``fail_above=(metric, value)``) how many groups have ``metric`` above ``value``."""
        metrics = list(self.overall.values)
        width = max(len(name), len("mean"), *(len(g) for g in self.groups))

        def row(label: str, n: str, values: dict[str, float]) -> str:
            cells = [f"{values[m]:.2f}" + ("%" if m in _PERCENT_SIGN else "") for m in metrics]
            return f"{label:>{width}}  {n:>7}" + "".join(f"  {c:>10}" for c in cells)

        lines = [f"{name:>{width}}  {'rows':>7}" + "".join(f"  {_LABELS.get(m, m):>10}" for m in metrics)]
        lines += [row(g, f"{self.counts[g]:,}", s.values) for g, s in self.groups.items()]
        lines.append(row("mean", "", self.mean))
        lines.append(row("all", f"{sum(self.counts.values()):,}", self.overall.values))
        lines += [f"{_LABELS.get(m, m)} signature: {sig}" for m, sig in self.overall.signatures.items()]
        if fail_above is not None:
            metric, above = fail_above
            failed = self.failed(metric, above)
            lines.append(f"{name}s with {_LABELS.get(metric, metric)} above {above:g}: {len(failed)} of {len(self.groups)}"
                         + (f" ({', '.join(failed)})" if failed else ""))
        return "\n".join(lines)


def _natural(label: str) -> tuple[int, float, str]:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def score_groups(hyps: Sequence[str], refs: Sequence[Sequence[str]], groups: Sequence[str],
                 metrics: Iterable[str] = METRICS, tokenize: str = "13a") -> GroupScores:
    """:func:`score` on each group of items (``groups[i]``: the label of item ``i``), the mean
    of each metric over the groups, and :func:`score` on all items."""
    names = list(metrics)
    if len(groups) != len(hyps):
        raise ValueError(f"{len(hyps)} hypotheses but {len(groups)} group labels")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    per = {g: score([hyps[i] for i in members[g]], [refs[i] for i in members[g]], names, tokenize)
           for g in sorted(members, key=_natural)}
    mean = {m: sum(s.values[m] for s in per.values()) / len(per) if per else 0.0 for m in names}
    return GroupScores(per, {g: len(members[g]) for g in per}, mean, score(hyps, refs, names, tokenize))
