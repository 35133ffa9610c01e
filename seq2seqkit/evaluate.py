"""Scoring a model (or a file of outputs) against references."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import metrics as M
from .data.corpus import iter_examples
from .translate import Translator


@dataclass
class EvalSet:
    sources: list[str]
    refs: list[list[str]]  # alternatives per source


def load_eval_set(src: str | Path, ref: str | Path | None = None, fmt: str = "auto", group_by_source: bool = False) -> EvalSet:
    """Pairs from two aligned files or one TSV/JSONL; with ``group_by_source`` repeated
    sources become one item with several acceptable references (G2P)."""
    pairs = [(ex.src, ex.tgt) for ex in iter_examples(src, ref, fmt=fmt)]  # type: ignore[arg-type]
    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    if group_by_source:
        return EvalSet(*M.group_references(sources, targets))
    return EvalSet(sources, [[t] for t in targets])


def evaluate_model(translator: Translator, data: EvalSet, metrics: Sequence[str]) -> tuple[M.Scores, list[str]]:
    hyps = translator.translate(data.sources)
    return M.score(hyps, data.refs, metrics), hyps


def format_examples(data: EvalSet, hyps: Sequence[str], n: int) -> str:
    """A few predictions spread over the set, marked right (=) or wrong (x)."""
    if n <= 0 or not hyps:
        return ""
    step = max(1, len(hyps) // n)
    lines = []
    for i in list(range(0, len(hyps), step))[:n]:
        ok = " ".join(hyps[i].split()) in {" ".join(r.split()) for r in data.refs[i]}
        lines.append(f"  {'=' if ok else 'x'} {data.sources[i]}  ->  {hyps[i]}" + ("" if ok else f"   (ref: {' | '.join(data.refs[i])})"))
    return "\n".join(lines)
