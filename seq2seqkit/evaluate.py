"""Scoring a model (or a file of outputs) against references."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import math

import torch

from . import metrics as M
from .data.corpus import detect_format, iter_examples, jsonl_labels, read_lines
from .data.dataset import make_batch
from .errors import DataError, UserError
from .teacher_forcing import token_loss
from .translate import Translator, input_limit


@dataclass
class EvalSet:
    sources: list[str] | None  # None: only references were given (a --hyp file against --ref)
    refs: list[list[str]]  # alternatives per item
    rows: list[int]  # the item of each row of the file(s) read: identity unless grouped by source

    @property
    def repeated_sources(self) -> int:
        """How many rows repeat an earlier row's source (0 when grouped: each source is one item)."""
        return 0 if self.sources is None else len(self.sources) - len(set(self.sources))


def load_eval_set(src: str | Path, ref: str | Path | None = None, fmt: str = "auto", group_by_source: bool = False) -> EvalSet:
    """Pairs from two aligned files or one TSV/JSONL; with ``group_by_source`` repeated
    sources become one item with several acceptable references (G2P)."""
    pairs = [(ex.src, ex.tgt) for ex in iter_examples(src, ref, fmt=fmt)]  # type: ignore[arg-type]
    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    if group_by_source:
        unique, refs = M.group_references(sources, targets)
        item = {s: i for i, s in enumerate(unique)}
        return EvalSet(unique, refs, [item[s] for s in sources])
    return EvalSet(sources, [[t] for t in targets], list(range(len(pairs))))


def load_references(ref: str | Path) -> EvalSet:
    """One reference per line, sources unknown (so nothing can be grouped)."""
    refs = [[line] for _, line in read_lines(ref)]
    return EvalSet(None, refs, list(range(len(refs))))


def read_hypotheses(path: str | Path, data: EvalSet, ref_name: str | Path) -> list[str]:
    """The outputs in ``path``, one per item of ``data``, in its order.

    For data grouped by source the file may hold one output per distinct source (in order of
    first appearance: ``s2s translate`` on the de-duplicated sources) or one per row (``s2s
    translate`` on every row's source); in the second case the rows of a source must agree,
    since the source is scored once. Any other line count is refused, naming both counts.
    """
    lines = [line for _, line in read_lines(path)]
    n_items, n_rows = len(data.refs), len(data.rows)
    if len(lines) == n_items:
        return lines
    if len(lines) == n_rows:
        first: dict[int, int] = {}
        for row, item in enumerate(data.rows):
            j = first.setdefault(item, row)
            if lines[row] != lines[j]:
                raise DataError(path, row + 1, f"output {lines[row]!r} differs from line {j + 1}'s {lines[j]!r} "
                                               f"for the same source {data.sources[item]!r}: grouped by source, "  # type: ignore[index]
                                               f"a source is scored once, so its rows need one output")
        return [lines[first[i]] for i in range(n_items)]
    rows = f"{n_rows} row{'s' if n_rows != 1 else ''}"
    if n_items == n_rows:
        distinct = n_rows - data.repeated_sources
        hint = f" ({distinct} is its number of distinct sources: to score one output per source, add --group-by-source)" \
            if data.repeated_sources and len(lines) == distinct else ""
        raise DataError(path, None, f"has {len(lines)} lines but {ref_name} has {rows}: give one output per row{hint}")
    raise DataError(path, None, f"has {len(lines)} lines but {ref_name} has {rows} ({n_items} distinct sources): "
                                f"give one output per row, or one per distinct source in order of first appearance")


def item_labels(data: EvalSet, src: str | Path, key: str) -> list[str]:
    """The value of ``key`` for each item of ``data`` read from the JSONL file ``src`` (for
    :func:`metrics.score_groups`); the rows of an item grouped by source must agree on it."""
    if detect_format(src) != "jsonl":
        raise UserError(f"--by-field {key}: needs a JSONL --src whose lines hold \"{key}\" (got {src})")
    labels: list[str | None] = [None] * len(data.refs)
    for item, (lineno, label) in zip(data.rows, jsonl_labels(src, key)):
        if labels[item] is not None and labels[item] != label:
            raise DataError(src, lineno, f"\"{key}\" is {label!r} but an earlier row with the same source has "
                                         f"{labels[item]!r}; grouped by source, a source needs one value")
        labels[item] = label
    return labels  # type: ignore[return-value]


def evaluate_model(translator: Translator, data: EvalSet, metrics: Sequence[str]) -> tuple[M.Scores, list[str]]:
    assert data.sources is not None, "a model needs the sources"
    hyps = translator.translate(data.sources)
    return M.score(hyps, data.refs, metrics), hyps


@torch.no_grad()
def perplexity(translator: Translator, data: EvalSet, batch_size: int = 64) -> float:
    """The model's perplexity on the references: exp of the mean teacher-forced cross-entropy
    per target token (EOS included), over every (source, reference) pair, computed as
    validation's ``ppl`` (no label smoothing; sources cut as at generation; references longer
    than learned positions refused)."""
    assert data.sources is not None, "perplexity needs the sources"
    tr = translator
    pairs = [(s, r) for s, rs in zip(data.sources, data.refs) for r in rs]
    limit = input_limit(tr.cfg.search, tr.model.max_positions)  # inputs cut as generation cuts them
    sources = [tr.src_tok.encode(s)[:limit] for s, _ in pairs]
    targets = [tr.tgt_tok.encode(r) for _, r in pairs]
    cap = tr.model.max_positions
    too_long = 0 if cap is None else sum(len(t) + 1 > cap for t in targets)  # + BOS
    if too_long:
        raise UserError(f"--metrics ppl: {too_long} reference(s) need more than the model's {cap} learned "
                        f"positions; a perplexity without them would not be the model's on these references")
    order = sorted(range(len(pairs)), key=lambda i: (len(sources[i]), len(targets[i])))
    tr.model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        b = make_batch([sources[i] for i in idx], [targets[i] for i in idx])
        logits = tr.model(b.src.to(tr.device), b.src_lens.to(tr.device), b.tgt_in.to(tr.device))
        total += token_loss(logits, b.tgt_out.to(tr.device)).item()
        tokens += b.n_tokens
    return math.exp(min(total / max(tokens, 1), 50.0))


def format_examples(data: EvalSet, hyps: Sequence[str], n: int) -> str:
    """A few predictions spread over the set, marked right (=) or wrong (x)."""
    if n <= 0 or not hyps or data.sources is None:
        return ""
    step = max(1, len(hyps) // n)
    lines = []
    for i in list(range(0, len(hyps), step))[:n]:
        ok = " ".join(hyps[i].split()) in {" ".join(r.split()) for r in data.refs[i]}
        lines.append(f"  {'=' if ok else 'x'} {data.sources[i]}  ->  {hyps[i]}" + ("" if ok else f"   (ref: {' | '.join(data.refs[i])})"))
    return "\n".join(lines)
