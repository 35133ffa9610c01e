"""Question-answering benchmarks: bAbI (20 tasks, one Transformer) and TweetQA.

    python bench/qa.py                          # train what is unfinished, score both, print tables
    python bench/qa.py --record                 # ... and append them to BENCHMARKS.md
    python bench/qa.py --no-train               # only evaluate the existing model directories
    python bench/qa.py --only babi --size 1k 10k           # bAbI 1k and 10k
    python bench/qa.py --babi-config A.yaml --tweetqa-config B.yaml --limit 200   # a smoke run

Run it from the repository root after ``s2s prepare babi ../shared/data/babi/babi-tasks-1-20-v1-2.tar.gz``
(and ``--size 10k`` for 10k) and ``s2s prepare tweetqa ../shared/data/tweetqa``. A finished run
is evaluated as it is, an unfinished one resumed.

**bAbI** (configs/babi-transformer.yaml; 10k: the same config with data/babi-10k and
runs/babi-transformer-10k, see :func:`babi_config`, scored when ``--size 10k`` is given or that
run directory exists). Checkpoint: the best single one or the average of the kept epoch
checkpoints, whichever has the higher greedy exact match on valid (held out from the training
stories). Test: greedy answers, exact match against the answer (tasks 8 and 19: the whole
comma-separated list), every question counted (not grouped by source, as in the papers); error per
task (%), the unweighted mean over the 20 tasks, failed tasks (error > 5%), through
``metrics.score_groups`` as ``s2s evaluate --by-field task`` and ``babi.error_table``. Targets:
MemN2N (Sukhbaatar et al. 2015) mean error 13.8% (1k) and 4.2% (10k); for scale, an LSTM gets
about half the answers wrong on 1k (Weston et al. 2015).

**TweetQA** (configs/tweetqa-attention.yaml, tweetqa-attention-copy.yaml and tweetqa-attention-luong-copy.yaml):
checkpoint chosen by greedy ROUGE-L on tune (10% of the training tweets); the beam's length
penalty by ROUGE-L on tune. Test = the official dev set, each question once with its annotators'
answers as alternative references (1,083 items). Scored two ways, greedy and beam:

- ours (``seq2seqkit.metrics``): BLEU-1 = sacreBLEU corpus BLEU, ``max_ngram_order`` 1, multi-
  reference; ROUGE-L = rouge-score LCS F1 (Porter stemming), the best reference per question,
  averaged;
- the official script's (tweetqa_eval.py, as the TweetQA paper and its leaderboard score): answers
  normalised SQuAD-style (lower case, no punctuation, no articles a/an/the, blanks collapsed);
  BLEU-1 = NLTK sentence-level BLEU with weights (1, 0, 0, 0) against all references, averaged over
  questions; ROUGE-L = the COCO caption scorer's: LCS precision and recall against each reference
  (whitespace tokens), the best of each over the references, combined as F with beta 1.2,
  averaged over questions. METEOR (Java) is not computed. Only these columns compare like for like
  with the paper's numbers, printed beside: :data:`TWEETQA_PAPER`.
"""

from __future__ import annotations

import argparse
import re
import string
import sys
from pathlib import Path

from common import (add_arguments, decode, existing, machine, mean_sentence_bleu, model_label, parse_arguments,  # first:
                    publish, run_time, search_config, spread, trained_translator, tune_search)  # s2s's process settings

from seq2seqkit import metrics as M
from seq2seqkit.config import load_config
from seq2seqkit.data.corpus import jsonl_labels
from seq2seqkit.evaluate import EvalSet, load_eval_set
from seq2seqkit.tasks import babi

BABI_CONFIG = "configs/babi-transformer.yaml"
BABI_TARGET = {"1k": 13.8, "10k": 4.2}  # MemN2N mean test error (%), Sukhbaatar et al. 2015
TWEETQA_CONFIGS = ["configs/tweetqa-attention.yaml", "configs/tweetqa-attention-copy.yaml", "configs/tweetqa-attention-luong-copy.yaml"]
LENGTH_PENALTIES = [1.0, 0.0, 0.5, 1.5, 2.0, 3.0, 4.0]  # short answers: the copy models chose 2.0 when it was the largest
ORACLE_WORDS = 8  # the longest tweet span the best-span line tries
# Xiong et al. 2019 (ACL, https://aclanthology.org/P19-1496, arXiv 1907.06292), the results table:
# BLEU-1 / METEOR / ROUGE-L on dev and test, scored by the official script.
TWEETQA_PAPER = [("Generative baseline (Xiong et al. 2019)", "53.4 / 32.1 / 39.5", "53.7 / 31.8 / 39.0"),
                 ("BERT fine-tuned (Xiong et al. 2019)", "67.3 / 56.9 / 62.6", "69.6 / 58.6 / 64.1"),
                 ("Human (Xiong et al. 2019)", "76.4 / 63.7 / 70.9", "78.2 / 66.7 / 73.5")]


# ------------------------------------------------------------------------------------- bAbI
def babi_config(config: str, size: str):
    """The bAbI config for ``size``: for 10k, ``config`` with the data of ``s2s prepare babi --size
    10k`` and its own run directory (train it with the same overrides, printed by this script)."""
    return load_config(config, None if size == "1k" else babi_overrides(size))


def babi_overrides(size: str) -> list[str]:
    folder = babi.DEFAULT_DIRS[size]
    return [f"data.train.path={folder}/train.jsonl", f"data.dev.path={folder}/valid.jsonl",
            f"data.test.path={folder}/test.jsonl", f"name=babi-transformer-{size}", f"output_dir=runs/babi-transformer-{size}"]


def run_babi(config: str, size: str, args: argparse.Namespace) -> dict:
    cfg = babi_config(config, size)
    progress, tr, checkpoint, dev_exact = trained_translator(cfg, not args.no_train, load_eval_set(cfg.data.dev.path), "exact")
    test = load_eval_set(cfg.data.test.path)
    idx = spread(len(test.sources), args.limit)  # spread, not the first N: every task keeps questions
    tasks = [label for _, label in jsonl_labels(cfg.data.test.path, "task")]
    sources, refs, tasks = [test.sources[i] for i in idx], [test.refs[i] for i in idx], [tasks[i] for i in idx]
    hyps, seconds = decode(tr, sources, search_config(tr, beam_size=1))
    grouped = M.score_groups(hyps, refs, tasks, ["wer"])
    return {"size": size, "config": config, "model": model_label(tr.cfg), "params": tr.model.num_parameters(),
            "steps": f"{progress['step']} ({progress['epoch']})", "train": run_time(progress),
            "checkpoint": f"{checkpoint} ({dev_exact[checkpoint]:.2f})", "seconds": seconds,
            "errors": {g: s.values["wer"] for g, s in grouped.groups.items()}, "counts": grouped.counts,
            "mean": grouped.mean["wer"], "failed": grouped.failed("wer", babi.FAILED_ABOVE),
            "examples": [(sources[i], refs[i][0], hyps[i]) for i in spread(len(sources), 5)]}


def babi_table(rows: list[dict]) -> str:
    sizes = [r["size"] for r in rows]
    head = ("| task | " + " | ".join(f"questions {s} | error % {s}" for s in sizes) + " |\n|---|"
            + "---:|---:|" * len(sizes) + "\n")
    tasks = sorted({t for r in rows for t in r["errors"]}, key=int)
    body = "".join(f"| {t} | " + " | ".join(f"{r['counts'].get(t, 0):,} | " + (f"{r['errors'][t]:.1f}" if t in r["errors"] else "–")
                                           for r in rows) + " |\n" for t in tasks)
    mean = "| **mean error** | " + " | ".join(f" | **{r['mean']:.1f}**" for r in rows) + " |\n"
    failed = (f"| failed tasks (error > {babi.FAILED_ABOVE:g}%) | " + " | ".join(
        f" | {len(r['failed'])}" + (f" ({', '.join(r['failed'])})" if r["failed"] else "") for r in rows) + " |\n")
    target = "| target: MemN2N mean error | " + " | ".join(f" | ≤ {BABI_TARGET[r['size']]}" for r in rows) + " |\n"
    return head + body + mean + failed + target


def babi_section(rows: list[dict]) -> str:
    runs = "".join(
        f"- {r['size']}: {r['model']} (`{r['config']}`" + ("" if r["size"] == "1k" else " with " + " ".join(babi_overrides(r["size"])))
        + f"), {r['params']:,} parameters, {r['steps']} steps (epochs), training time {r['train']}, checkpoint "
          f"{r['checkpoint']} (valid exact match), decoding {r['seconds']:.0f} s\n" for r in rows)
    ten = any(r["size"] == "10k" for r in rows)
    examples = "".join(
        f"\n{r['size']}:\n\n" + "".join(
            f"```text\n{shorten(src)}\n```\n- reference: {ref}; output: {hyp} ({'right' if hyp.strip() == ref.strip() else 'wrong'})\n"
            for src, ref, hyp in r["examples"]) for r in rows)
    return (f"Test error per task (exact match, greedy; every question counted), the mean over the tasks and the failed "
            f"tasks. Targets: MemN2N (Sukhbaatar et al. 2015) mean error 13.8% (1k), 4.2% (10k); an LSTM gets about half "
            f"the answers wrong on 1k (Weston et al. 2015)."
            + (" 10k: task 3 has no 10k training file; its 1k one is used (`s2s prepare babi --size 10k`)." if ten else "")
            + "\n\n" + runs + "\n" + babi_table(rows) + "\nFive test questions (evenly spaced over the file):\n" + examples)


def shorten(src: str, keep: int = 6) -> str:
    """A bAbI source for display: the task tag and the last ``keep`` lines (story end and question)."""
    lines = src.split("\n")
    if len(lines) <= keep + 1:
        return src
    return "\n".join([lines[0], f"... ({len(lines) - keep - 1} earlier sentences)", *lines[-keep:]])


# ----------------------------------------------------------------------------------- TweetQA
def normalize_answer(text: str) -> str:
    """The official TweetQA script's normalisation (SQuAD's): lower case, punctuation removed,
    the articles a/an/the removed, blanks collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


class _Whitespace:
    """A tokenizer for rouge-score: the normalised answer's blank-separated words (as the COCO scorer)."""

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return text.split()


def official_rouge_l(scorer, hyp: str, refs: list[str]) -> float:
    """One answer's ROUGE-L as the official script's COCO scorer computes it, on normalised
    answers: LCS precision and recall, the best of each over the references, F with beta 1.2."""
    beta2 = 1.2 ** 2
    lcs = [scorer.score(ref, hyp)["rougeL"] for ref in refs]
    p, rec = max(s.precision for s in lcs), max(s.recall for s in lcs)
    return (1 + beta2) * p * rec / (rec + beta2 * p) if p and rec else 0.0


def _scorer():
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], tokenizer=_Whitespace())


def official_scores(hyps: list[str], refs: list[list[str]]) -> dict[str, float]:
    """BLEU-1 and ROUGE-L as the official TweetQA script computes them (see the module docstring), in percent."""
    h = [normalize_answer(x) for x in hyps]
    r = [[normalize_answer(x) for x in rs] for rs in refs]
    bleu1 = mean_sentence_bleu([x.split() for x in h], [[x.split() for x in rs] for rs in r], (1, 0, 0, 0))
    scorer = _scorer()
    total = sum(official_rouge_l(scorer, hyp, rs) for hyp, rs in zip(h, r))
    return {"bleu1": bleu1, "rougeL": 100.0 * total / len(h) if h else 0.0}


def oracle_spans(sources: list[str], refs: list[list[str]], longest: int = ORACLE_WORDS) -> list[str]:
    """For scale: each question's best answer that copies one span of its tweet (at most
    ``longest`` words, lower-cased), the span with the highest official-script ROUGE-L against the
    question's references. What a model that only copies one span could reach at best."""
    scorer, out = _scorer(), []
    for src, rs in zip(sources, refs):
        words = " ".join(src.split("\n")[1:]).lower().split()  # the tweet (the first line is the question)
        norm_refs = [normalize_answer(r) for r in rs]
        spans = (" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, min(i + longest, len(words)) + 1))
        out.append(max(spans, key=lambda span: official_rouge_l(scorer, normalize_answer(span), norm_refs), default=""))
    return out


def answer_case(path: str) -> tuple[float, float, float]:
    """Of a prepared TweetQA split: the share (%) of answers written in lower case, and of the
    answer words the shares that occur among the words of their source (question and tweet) as
    written and ignoring case: what lower-casing both sides gives a copy model to copy."""
    pairs = load_eval_set(path)
    words = re.compile(r"\w+")
    total = as_written = ignoring_case = 0
    for src, (tgt,) in zip(pairs.sources, pairs.refs):
        source, lower = set(words.findall(src)), set(words.findall(src.lower()))
        answer = words.findall(tgt)
        total += len(answer)
        as_written += sum(w in source for w in answer)
        ignoring_case += sum(w.lower() in lower for w in answer)
    lower_answers = sum(tgt == tgt.lower() for (tgt,) in pairs.refs)
    return (100.0 * lower_answers / max(len(pairs.refs), 1), 100.0 * as_written / max(total, 1),
            100.0 * ignoring_case / max(total, 1))


def answer_pieces(tr, refs: list[list[str]]) -> tuple[float, float]:
    """Over the words of every reference answer, each encoded alone by the model's target
    tokenizer: the share that is one piece (a copy of one pointer step), and pieces per word."""
    counts = [len(tr.tgt_tok.encode(word)) for group in refs for ref in group for word in ref.split()]
    return 100.0 * sum(n == 1 for n in counts) / max(len(counts), 1), sum(counts) / max(len(counts), 1)


def run_tweetqa(config: str, args: argparse.Namespace) -> dict:
    cfg = load_config(config)
    tune = load_eval_set(cfg.data.dev.path)
    progress, tr, checkpoint, tune_rouge = trained_translator(cfg, not args.no_train, tune, "rougeL")
    idx = spread(len(tune.sources), args.tune_max)
    tune_refs = [tune.refs[i] for i in idx]
    tuned, tried = tune_search(tr, [tune.sources[i] for i in idx], {"length_penalty": LENGTH_PENALTIES},
                               lambda hyps: M.score(hyps, tune_refs, ["rougeL"]).values["rougeL"], {"beam_size": args.beam})
    test = load_eval_set(cfg.data.test.path, group_by_source=True)
    test = EvalSet(test.sources[:args.limit], test.refs[:args.limit], [])
    rows = {}
    for name, search in (("greedy", search_config(tr, beam_size=1)),
                         (f"beam {args.beam} (α {tuned['length_penalty']:g})", search_config(tr, beam_size=args.beam, **tuned))):
        hyps, seconds = decode(tr, test.sources, search)
        scores = M.score(hyps, test.refs, ["bleu1", "rougeL"])
        rows[name] = {"ours": scores.values, "official": official_scores(hyps, test.refs), "seconds": seconds,
                      "signatures": scores.signatures, "hyps": hyps}
    return {"config": config, "model": model_label(tr.cfg), "params": tr.model.num_parameters(),
            "steps": f"{progress['step']} ({progress['epoch']})", "train": run_time(progress),
            "checkpoint": f"{checkpoint} ({tune_rouge[checkpoint]:.2f})", "tried": tried, "tune_items": len(idx),
            "rows": rows, "test": test, "train_path": cfg.data.train.path, "pieces": answer_pieces(tr, test.refs)}


def tweetqa_section(runs: list[dict]) -> str:
    head = ("| model | config | parameters | steps (epochs) | training time | checkpoint (tune R-L) | decoding "
            "| BLEU-1 | ROUGE-L | official-script BLEU-1 | official-script ROUGE-L | decoding time |\n"
            "|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|\n")
    first = runs[0]
    body = "".join(
        f"| {r['model']} | `{r['config']}` | {r['params']:,} | {r['steps']} | {r['train']} | {r['checkpoint']} | {name} | "
        f"{d['ours']['bleu1']:.2f} | {d['ours']['rougeL']:.2f} | {d['official']['bleu1']:.2f} | "
        f"{d['official']['rougeL']:.2f} | {d['seconds']:.0f} s |\n" for r in runs for name, d in r["rows"].items())
    oracle = official_scores(oracle_spans(first["test"].sources, first["test"].refs), first["test"].refs)
    lower, as_written, ignoring_case = answer_case(first["train_path"])
    scale = (f"\nFor scale, the best single span of each tweet (at most {ORACLE_WORDS} words, chosen against the "
             f"references: an upper bound for a model that copies one span, not a system): official-script BLEU-1 "
             f"{oracle['bleu1']:.2f}, ROUGE-L {oracle['rougeL']:.2f}. Training answers written in lower case: "
             f"{lower:.1f}%; their words found among the words of their question and tweet: {as_written:.1f}% as "
             f"written, {ignoring_case:.1f}% ignoring case (hence the recipes lower-case both sides).\n")
    paper = ("\nPublished (Xiong et al. 2019, TweetQA, BLEU-1 / METEOR / ROUGE-L by the official script; dev is our test "
             "set): " + "; ".join(f"{name}: dev {dev}, test {test}" for name, dev, test in TWEETQA_PAPER) + ".\n")
    signatures = "".join(f"{k} signature: `{v}`  \n" for k, v in next(iter(first["rows"].values()))["signatures"].items())
    tuning = "".join(f"- `{r['config']}` ({r['tune_items']} tune questions): " + "; ".join(f"α {p['length_penalty']:g}: {s:.2f}" for p, s in r["tried"]) + "\n"
                     for r in runs)
    pieces = "".join(f"- `{r['config']}`: {r['pieces'][0]:.1f}% one piece, {r['pieces'][1]:.2f} pieces a word\n"
                     for r in runs)
    test = first["test"]
    examples = "".join(
        f"- {test.sources[i].splitlines()[0]} | tweet: {' '.join(test.sources[i].splitlines()[1:])}  \n"
        f"  references: {' | '.join(test.refs[i])}; " + "; ".join(
            f"{r['model']}, {name}: {d['hyps'][i]}" for r in runs for name, d in r["rows"].items()) + "\n"
        for i in spread(len(test.sources), 5))
    return (f"Test = the official dev set ({len(test.sources)} questions, each once, its annotators' answers as alternative "
            "references). BLEU-1 / ROUGE-L: ours (sacreBLEU corpus BLEU-1; rouge-score LCS F1, stemmed, best reference); "
            "official-script: SQuAD-normalised answers, NLTK sentence BLEU-1 averaged over questions, COCO ROUGE-L (β 1.2, "
            "best precision and recall over the references): only these compare like for like with the paper. "
            "METEOR is not computed.  \n" + signatures + "\n" + head + body + scale + paper
            + "\nBeam length penalty, ROUGE-L on tune:\n\n" + tuning
            + "\nThe words of the test answers (every reference), each encoded alone by the model's tokenizer:\n\n" + pieces
            + "\nFive test questions (evenly spaced over the file):\n\n" + examples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["babi", "tweetqa"], default=None, help="score one of the two (default: both)")
    ap.add_argument("--babi-config", default=BABI_CONFIG, help=f"default: {BABI_CONFIG}")
    ap.add_argument("--size", nargs="+", choices=list(babi.SIZES), default=None,
                    help="bAbI training sets to score (default: 1k, and 10k where runs/babi-transformer-10k exists)")
    ap.add_argument("--tweetqa-config", nargs="+", default=TWEETQA_CONFIGS,
                    help=f"default: {' '.join(TWEETQA_CONFIGS)} (one that does not exist is skipped)")
    add_arguments(ap, beam=5, limit="score N bAbI test questions spread over the file, and the first N TweetQA questions")
    ap.add_argument("--tune-max", type=int, default=None, metavar="N",
                    help="tune TweetQA's length penalty on N tune questions spread over the file (default: all 1,065)")
    args = parse_arguments(ap)  # --beam: TweetQA's (bAbI answers are decoded greedily)
    limited = f", {args.limit} questions" if args.limit else ""

    if args.only in (None, "babi"):
        sizes = args.size or ["1k"] + (["10k"] if Path(babi_config(args.babi_config, "10k").output_dir).is_dir() else [])
        publish(f"bAbI question answering ({', '.join(sizes)}; test{limited})",
                babi_section([run_babi(args.babi_config, size, args) for size in sizes]), args.record)
    if args.only in (None, "tweetqa"):
        configs, _ = existing(args.tweetqa_config)
        if not configs:
            sys.exit("no TweetQA config to evaluate")
        publish(f"TweetQA (official dev set as test{limited})", tweetqa_section([run_tweetqa(c, args) for c in configs]),
                args.record)
    print(f"machine: {machine()}", file=sys.stderr)


if __name__ == "__main__":
    main()
