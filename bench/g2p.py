"""G2P benchmark: train (or reuse) models on the CMUdict split and score them on its test set.

    python bench/g2p.py configs/g2p-rnn.yaml            # train if needed, evaluate, print a table
    python bench/g2p.py configs/g2p-*.yaml --record     # ... and append it to BENCHMARKS.md

A model directory that already holds a finished run is evaluated as it is; an unfinished one
is resumed. The checkpoint scored is the best single one or the average of the kept epoch
checkpoints, whichever has the lower greedy WER on the dev split (the test split plays no part).
Scores on the test split, greedy and beam search: a word is right if its output equals any
listed pronunciation (WER = wrong words; PER = phoneme edit distance / reference length).
"""

from __future__ import annotations

import argparse
import time

from common import duration, ensure_trained, record, select_checkpoint

from seq2seqkit.config import load_config
from seq2seqkit.evaluate import evaluate_model, load_eval_set
from seq2seqkit.tasks import resolve_dataset
from seq2seqkit.translate import Translator


def run(config: str, train: bool, beam: int) -> dict:
    cfg = load_config(config)
    progress = ensure_trained(cfg, train)
    data_cfg = resolve_dataset(cfg.data)
    dev = load_eval_set(*data_cfg.dev.files(), fmt=data_cfg.dev.format, group_by_source=True)
    checkpoint, dev_wer = select_checkpoint(cfg, dev, "wer")
    tr = Translator.load(cfg.output_dir, checkpoint=checkpoint)
    test = load_eval_set(*data_cfg.test.files(), fmt=data_cfg.test.format, group_by_source=True)
    row = {
        "config": config, "family": f"{tr.cfg.model.family} ({tr.cfg.model.cell})" if tr.cfg.model.family != "transformer"
        else "transformer", "params": tr.model.num_parameters(), "steps": progress["step"], "epochs": progress["epoch"],
        "train_s": progress.get("train_seconds", 0.0), "words": len(test.sources),
        "checkpoint": f"{checkpoint} ({dev_wer[checkpoint]:.2f})",
    }
    for name, size in (("greedy", 1), (f"beam{beam}", beam)):
        tr.cfg.search = tr.cfg.search.model_copy(update={"beam_size": size, "nbest": 1, "sample": False})
        start = time.perf_counter()
        scores, _ = evaluate_model(tr, test, ["wer", "per"])
        row[name] = {**scores.values, "seconds": time.perf_counter() - start}
    return row


def table(rows: list[dict], beam: int) -> str:
    head = (f"| config | model | parameters | steps (epochs) | training time | checkpoint (dev WER) | test words "
            f"| WER greedy | PER greedy | WER beam {beam} | PER beam {beam} | decoding greedy / beam {beam} |\n")
    head += "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|\n"
    return head + "".join(
        f"| `{r['config']}` | {r['family']} | {r['params']:,} | {r['steps']} ({r['epochs']}) | {duration(r['train_s'])} | "
        f"{r['checkpoint']} | {r['words']} | {r['greedy']['wer']:.2f} | {r['greedy']['per']:.2f} | "
        f"{r[f'beam{beam}']['wer']:.2f} | {r[f'beam{beam}']['per']:.2f} | "
        f"{r['greedy']['seconds']:.1f} s / {r[f'beam{beam}']['seconds']:.1f} s |\n"
        for r in rows
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+")
    ap.add_argument("--no-train", action="store_true", help="only evaluate existing model directories")
    ap.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    ap.add_argument("--beam", type=int, default=5, help="beam size of the beam-search columns (default 5)")
    args = ap.parse_args()
    if args.beam < 2:
        ap.error("--beam must be at least 2 (greedy is always evaluated)")
    rows = [run(c, not args.no_train, args.beam) for c in args.configs]
    text = table(rows, args.beam)
    print(text)
    if args.record:
        record(f"G2P (CMUdict test split, greedy and beam {args.beam})", text)


if __name__ == "__main__":
    main()
