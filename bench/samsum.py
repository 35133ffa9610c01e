"""SAMSum dialogue summarization benchmark: the model families on one data set and vocabulary.

    python bench/samsum.py                      # train what is unfinished, tune on val, score test
    python bench/samsum.py --record             # ... and append the tables to BENCHMARKS.md
    python bench/samsum.py --no-train           # only evaluate the existing model directories
    python bench/samsum.py A.yaml --limit 20 --tune-max 20 --plot /tmp/p.png   # a smoke run

Run it from the repository root after ``s2s prepare samsum ../shared/data/samsum/samsum.zip``
(the configs read data/samsum/). Default configs: configs/samsum-{rnn,attention,attention-copy,
transformer,transformer-copy}.yaml; one that does not exist is skipped with a note. A model
directory holding a finished run is evaluated as it is, an unfinished one resumed.

Everything is chosen on val (data/samsum/val.jsonl), never on test:

- the checkpoint: the best single one or the average of the kept epoch checkpoints, whichever
  has the higher greedy ROUGE-L on val (``common.select_checkpoint``);
- the generation controls of beam search (beam ``--beam``, default 4): GNMT length penalty,
  ``no_repeat_ngram_size`` and ``min_len`` (in target pieces), by coordinate ascent over
  :data:`GRID` (``common.tune_search``), maximising the mean of ROUGE-1, ROUGE-2 and ROUGE-L F1 on
  val (``--tune-max N``: on N val dialogues spread evenly over the file, default 400 of 818).

Test (819 dialogues) is then scored with greedy search and with beam search and the tuned
controls: ROUGE-1/2/L/Lsum F1 from ``seq2seqkit.metrics`` (Google's rouge-score, Porter stemming,
signature printed). Also on test: the extractive baseline Longest-3 (:func:`longest3`), ROUGE-L of
the greedy summaries by dialogue length in words (a table and a PNG), and 5 test dialogues (a
fixed rule, :func:`example_ids`) with the reference and every model's beam summary.

Published numbers printed beside ours (Gliwa et al. 2019, SAMSum test, models trained from
scratch): Longest-3 32.46 / 10.27 / 29.92, Transformer 36.62 / 11.18 / 33.06, pointer-generator
37.27 / 14.42 / 34.36 (ROUGE-1 / 2 / L F1; the issue's target rounds the last to 37.3 / 14.4 / 34.4).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import (REPO, add_arguments, by_bucket, decode, existing, machine, model_label,  # first: s2s's process
                    parse_arguments, parse_buckets, plot_lines, publish, repo_path, run_time,  # settings, before
                    search_config, spread, trained_translator, tune_search)  # torch loads

from seq2seqkit import metrics as M
from seq2seqkit.config import load_config
from seq2seqkit.data.corpus import jsonl_labels
from seq2seqkit.evaluate import EvalSet, load_eval_set

DEFAULT_CONFIGS = [f"configs/samsum-{name}.yaml"
                   for name in ("rnn", "attention", "attention-copy", "transformer", "transformer-copy")]
DEFAULT_PLOT = REPO / "bench" / "samsum-rouge-by-length.png"
# Dialogue words on test: median 74, 90th percentile 193, at most 516; these buckets hold
# 100-270 dialogues each (the last, 201+, about 80).
DEFAULT_BUCKETS = "40,80,120,200"
# Beam-search controls tried on val (the first value of each is the starting point).
GRID = {"length_penalty": [1.0, 0.6, 1.4, 2.0], "no_repeat_ngram_size": [0, 3], "min_len": [0, 8, 16]}
# Val dialogues the controls are tuned on (spread over the file): each of the ~8 settings tried is
# a beam search over them, per model; 400 keeps that within the hour on a 2-core CPU.
TUNE_MAX = 400
ROUGE = list(M.ROUGE)
PUBLISHED = [("Longest-3", "32.46 / 10.27 / 29.92"), ("Transformer (from scratch)", "36.62 / 11.18 / 33.06"),
             ("Pointer-generator (from scratch; the issue's target)", "37.27 / 14.42 / 34.36")]
SHOWN = {"length_penalty": "α", "no_repeat_ngram_size": "no-repeat", "min_len": "min-len"}


def longest3(dialogue: str) -> str:
    """The extractive baseline of the SAMSum paper: the three longest utterances of the dialogue,
    long meaning most whitespace words (the speaker's name included: an utterance is its whole
    line), ties to the earlier one, kept in dialogue order, one a line."""
    turns = [t for t in dialogue.split("\n") if t.strip()]
    longest = sorted(range(len(turns)), key=lambda i: -len(turns[i].split()))[:3]  # stable: ties keep order
    return "\n".join(turns[i] for i in sorted(longest))


def rouge_mean(hyps: list[str], refs: list[list[str]]) -> float:
    """What tuning maximises: the mean of ROUGE-1, ROUGE-2 and ROUGE-L F1."""
    values = M.score(hyps, refs, ["rouge1", "rouge2", "rougeL"]).values
    return sum(values.values()) / 3


def example_ids(sources: list[str], k: int = 5) -> list[int]:
    """``k`` test items evenly spaced by dialogue length: the dialogues at the 10th, 30th, 50th,
    70th and 90th percentile of word count (ties by position), the same on every run."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i].split()))
    return [order[(2 * j + 1) * len(order) // (2 * k)] for j in range(k)]


def by_length(hyps: list[str], refs: list[list[str]], sources: list[str], buckets) -> list[tuple[str, int, float | None]]:
    """(bucket, dialogues, ROUGE-L F1) per dialogue-length bucket (whitespace words)."""
    out = []
    for name, idx in by_bucket([len(s.split()) for s in sources], buckets):
        value = M.score([hyps[i] for i in idx], [refs[i] for i in idx], ["rougeL"]).values["rougeL"] if idx else None
        out.append((name, len(idx), value))
    return out


def run(config: str, args: argparse.Namespace, test: EvalSet) -> dict:
    cfg = load_config(config)
    dev = load_eval_set(*cfg.data.dev.files(), fmt=cfg.data.dev.format)
    progress, tr, checkpoint, dev_rouge = trained_translator(cfg, not args.no_train, dev, "rougeL")
    idx = spread(len(dev.sources), args.tune_max)
    dev_src, dev_refs = [dev.sources[i] for i in idx], [dev.refs[i] for i in idx]
    tuned, tried = tune_search(tr, dev_src, GRID, lambda hyps: rouge_mean(hyps, dev_refs), {"beam_size": args.beam})

    hyps_greedy, greedy_s = decode(tr, test.sources, search_config(tr, beam_size=1))
    hyps_beam, beam_s = decode(tr, test.sources, search_config(tr, beam_size=args.beam, **tuned))
    s_greedy, s_beam = M.score(hyps_greedy, test.refs, ROUGE), M.score(hyps_beam, test.refs, ROUGE)
    return {
        "config": config, "name": cfg.name, "model": model_label(tr.cfg), "params": f"{tr.model.num_parameters():,}",
        "steps": f"{progress['step']} ({progress['epoch']})", "train": run_time(progress),
        "checkpoint": f"{checkpoint} ({dev_rouge[checkpoint]:.2f})", "tuned": tuned, "tried": tried,
        "dev_items": len(idx), "greedy": s_greedy.values, "beam": s_beam.values, "signatures": s_greedy.signatures,
        "seconds": f"{greedy_s:.0f} s / {beam_s:.0f} s", "hyps": hyps_beam,
        "by_length": by_length(hyps_greedy, test.refs, test.sources, args.buckets),
    }


def longest3_row(test: EvalSet, buckets) -> dict:
    hyps = [longest3(s) for s in test.sources]
    values = M.score(hyps, test.refs, ROUGE).values
    return {"config": "–", "name": "baseline", "model": "Longest-3 (extractive: the 3 longest utterances)",
            "params": "–", "steps": "–", "train": "–", "checkpoint": "–", "tuned": None, "greedy": values,
            "beam": None, "seconds": "–", "hyps": hyps, "by_length": by_length(hyps, test.refs, test.sources, buckets)}


def rouge_cell(values: dict | None) -> str:
    return "–" if values is None else " / ".join(f"{values[m]:.2f}" for m in ROUGE)


def tuned_cell(tuned: dict | None) -> str:
    return "–" if tuned is None else ", ".join(f"{SHOWN[k]} {v:g}" for k, v in tuned.items())


def scores_table(rows: list[dict], beam: int) -> str:
    head = (f"| model | config | parameters | steps (epochs) | training time | checkpoint (val R-L, greedy) "
            f"| beam {beam} controls (tuned on val) | greedy R-1 / R-2 / R-L / R-Lsum | beam {beam} R-1 / R-2 / R-L / R-Lsum "
            f"| decoding greedy / beam |\n|---|---|---:|---:|---:|---|---|---:|---:|---:|\n")
    return head + "".join(
        f"| {r['model']} | {'`' + r['config'] + '`' if r['config'] != '–' else '–'} | {r['params']} | {r['steps']} | "
        f"{r['train']} | {r['checkpoint']} | {tuned_cell(r['tuned'])} | {rouge_cell(r['greedy'])} | "
        f"{rouge_cell(r['beam'])} | {r['seconds']} |\n" for r in rows)


def tuning_table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        if r["tuned"] is None:
            continue
        cells = [f"{tuned_cell(point)}: {score:.2f}" + (" **(chosen)**" if point == r["tuned"] else "")
                 for point, score in r["tried"]]
        lines.append(f"- {r['model']} (`{r['config']}`, {r['dev_items']} val dialogues): " + "; ".join(cells))
    return "\n".join(lines) + "\n"


def length_table(rows: list[dict]) -> str:
    cols = [f"{name} ({n})" for name, n, _ in rows[0]["by_length"]]
    head = "| model | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols) + "\n"
    return head + "".join(
        f"| {r['model']} | " + " | ".join("–" if v is None else f"{v:.2f}" for _, _, v in r["by_length"]) + " |\n"
        for r in rows)


def examples(test: EvalSet, ids: list[str], rows: list[dict]) -> str:
    out = []
    for i in example_ids(test.sources):
        out.append(f"**{ids[i]}** ({len(test.sources[i].split())} words)\n\n```text\n{test.sources[i]}\n```\n\n"
                   f"- reference: {test.refs[i][0]}\n"
                   + "".join(f"- {r['name']}: {' / '.join(r['hyps'][i].splitlines())}\n" for r in rows))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*", default=DEFAULT_CONFIGS, help=f"default: {' '.join(DEFAULT_CONFIGS)}")
    add_arguments(ap, beam=4, limit="score only the first N test dialogues")
    ap.add_argument("--tune-max", type=int, default=TUNE_MAX, metavar="N",
                    help=f"tune the beam controls on N val dialogues spread over the file (default {TUNE_MAX} of 818)")
    ap.add_argument("--buckets", type=parse_buckets, default=parse_buckets(DEFAULT_BUCKETS), metavar="B1,B2,...",
                    help=f"upper bounds of the dialogue-length buckets in words (default {DEFAULT_BUCKETS})")
    ap.add_argument("--plot", type=Path, default=DEFAULT_PLOT, metavar="PATH",
                    help="where the ROUGE-by-length PNG goes (default: bench/samsum-rouge-by-length.png)")
    args = parse_arguments(ap)

    configs, skipped = existing(args.configs)
    if not configs:
        sys.exit("no config to evaluate")
    test_cfg = load_config(configs[0]).data.test
    test = load_eval_set(*test_cfg.files(), fmt=test_cfg.format)
    ids = [label for _, label in jsonl_labels(test_cfg.path, "id")]
    size = len(test.sources)
    test = EvalSet(test.sources[:args.limit], test.refs[:args.limit], test.rows[:args.limit])

    rows = [run(c, args, test) for c in configs] + [longest3_row(test, args.buckets)]
    plot_lines([(f"{r['name']}: {r['model']}", [v for _, _, v in r["by_length"]]) for r in rows],
               [f"{name}\n(n={n})" for name, n, _ in rows[0]["by_length"]], "dialogue length (words)",
               "ROUGE-L F1 (greedy)", f"SAMSum, ROUGE-L by dialogue length ({len(test.sources)} test dialogues)", args.plot)

    shown = f"first {len(test.sources)} of {size}" if len(test.sources) < size else str(size)
    scores = (f"Test set `{test_cfg.path}` ({shown} dialogues). Checkpoint and beam controls chosen on val only "
              f"(controls: coordinate ascent over {GRID}, maximising the mean of ROUGE-1/2/L F1 on val; "
              f"`min_len` in target pieces). ROUGE F1 in percent.  \n"
              f"ROUGE signature: `{rows[0]['signatures']['rouge']}`\n\n" + scores_table(rows, args.beam)
              + (f"\nSkipped (no such config): {', '.join(f'`{c}`' for c in skipped)}.\n" if skipped else "")
              + "\nPublished (Gliwa et al. 2019, SAMSum test, ROUGE-1 / 2 / L F1): "
              + "; ".join(f"{name} {v}" for name, v in PUBLISHED) + ".\n"
              "\nBeam controls tried on val (mean of ROUGE-1/2/L F1):\n\n" + tuning_table(rows))
    lengths = (f"\nROUGE-L F1 of the greedy summaries (Longest-3: its extract) by dialogue length in words "
               f"(dialogues per bucket in brackets); plot: `{repo_path(args.plot)}`\n\n" + length_table(rows))
    shown_examples = ("\nFive test dialogues (the 10th, 30th, 50th, 70th and 90th percentile of length), the "
                      f"reference and every model's summary (beam {args.beam} with its tuned controls; ` / `: a line break):\n\n"
                      + examples(test, ids, rows))
    publish(f"SAMSum dialogue summarization (test{f', first {args.limit}' if args.limit else ''})",
            scores + lengths + shown_examples, args.record)
    print(f"machine: {machine()}", file=sys.stderr)


if __name__ == "__main__":
    main()
