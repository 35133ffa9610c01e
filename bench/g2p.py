"""G2P benchmark: train (or reuse) models on the CMUdict split and score them on its test set.

    python bench/g2p.py configs/g2p-rnn.yaml            # train if needed, evaluate, print a table
    python bench/g2p.py configs/g2p-rnn.yaml --record   # ... and append it to BENCHMARKS.md

A model directory that already holds a finished run is evaluated as it is; an unfinished one
is resumed. Scores: greedy decoding on the test split, a word right if its output equals any
listed pronunciation (WER = wrong words, PER = phoneme edit distance / reference length).
"""

from __future__ import annotations

import argparse
import time

from common import ensure_trained, record

from seq2seqkit.config import load_config
from seq2seqkit.evaluate import evaluate_model, load_eval_set
from seq2seqkit.tasks import resolve_dataset
from seq2seqkit.translate import Translator


def run(config: str, train: bool) -> dict:
    cfg = load_config(config)
    progress = ensure_trained(cfg, train)
    tr = Translator.load(cfg.output_dir)
    test = resolve_dataset(cfg.data).test
    data = load_eval_set(*test.files(), fmt=test.format, group_by_source=True)
    start = time.perf_counter()
    scores, _ = evaluate_model(tr, data, ["wer", "per", "exact"])
    decode_s = time.perf_counter() - start
    return {
        "config": config, "family": f"{tr.cfg.model.family} ({tr.cfg.model.cell})",
        "params": tr.model.num_parameters(), "steps": progress["step"], "epochs": progress["epoch"],
        "train_min": progress.get("train_seconds", 0.0) / 60, "words": len(data.sources),
        "decode_s": decode_s, **scores.values,
    }


def table(rows: list[dict]) -> str:
    head = "| config | model | parameters | steps (epochs) | training time | test words | WER % | PER % | decoding (greedy) |\n"
    head += "|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
    return head + "".join(
        f"| `{r['config']}` | {r['family']} | {r['params']:,} | {r['steps']} ({r['epochs']}) | "
        f"{r['train_min']:.1f} min | {r['words']} | {r['wer']:.2f} | {r['per']:.2f} | {r['decode_s']:.1f} s |\n"
        for r in rows
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+")
    ap.add_argument("--no-train", action="store_true", help="only evaluate existing model directories")
    ap.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args()
    rows = [run(c, not args.no_train) for c in args.configs]
    text = table(rows)
    print(text)
    if args.record:
        record("G2P (CMUdict test split, greedy)", text)


if __name__ == "__main__":
    main()
