"""G2P benchmark: train (or reuse) models on the CMUdict split and score them on its test set.

    python bench/g2p.py configs/g2p-rnn.yaml            # train if needed, evaluate, print a table
    python bench/g2p.py configs/g2p-*.yaml --record     # ... and append it to BENCHMARKS.md
    python bench/g2p.py configs/g2p-*.yaml --ensemble   # ... plus the models decoding as one ensemble

A model directory that already holds a finished run is evaluated as it is; an unfinished one
is resumed. The checkpoint scored is the best single one or the average of the kept epoch
checkpoints, whichever has the lower greedy WER on the dev split (the test split plays no part).
Scores on the test split, greedy and beam search: a word is right if its output equals any
listed pronunciation (WER = wrong words; PER = phoneme edit distance / reference length).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import dev_curve, duration, ensure_trained, record, select_checkpoint

from seq2seqkit.config import load_config
from seq2seqkit.evaluate import EvalSet, evaluate_model, load_eval_set
from seq2seqkit.tasks import resolve_dataset
from seq2seqkit.translate import Translator


def test_scores(tr: Translator, test: EvalSet, beam: int) -> dict:
    """WER/PER and decoding seconds on the test split, greedy and with beam ``beam``."""
    out = {}
    for name, size in (("greedy", 1), (f"beam{beam}", beam)):
        tr.cfg.search = tr.cfg.search.model_copy(update={"beam_size": size, "nbest": 1, "sample": False})
        start = time.perf_counter()
        scores, _ = evaluate_model(tr, test, ["wer", "per"])
        out[name] = {**scores.values, "seconds": time.perf_counter() - start}
    return out


def run(config: str, train: bool, beam: int) -> tuple[dict, Translator, EvalSet]:
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
        "train_s": progress.get("train_seconds") or None, "words": len(test.sources),  # None: a run from before the counter
        "checkpoint": f"{checkpoint} ({dev_wer[checkpoint]:.2f})",
    }
    return {**row, **test_scores(tr, test, beam)}, tr, test


def ensemble_row(rows: list[dict], translators: list[Translator], test: EvalSet, beam: int) -> dict:
    """The models above decoding as one (each with its chosen checkpoint): the mean of their
    next-token probabilities (``s2s translate -m A B C``)."""
    tr = Translator.combine(translators, [r["config"] for r in rows], device=str(translators[0].device))
    families = " + ".join(r["family"].split(" ")[0] for r in rows)
    times = [r["train_s"] for r in rows]
    row = {"config": "the models above", "family": f"ensemble ({families})", "params": tr.model.num_parameters(),
           "steps": sum(r["steps"] for r in rows), "epochs": sum(r["epochs"] for r in rows),
           "train_s": None if None in times else sum(times), "words": len(test.sources), "checkpoint": "each one's"}
    return {**row, **test_scores(tr, test, beam)}


def curves(configs: list[str]) -> str:
    """Each model's dev WER after every epoch, as validation scored it during training (on the
    config's ``data.dev_max_examples`` first dev words): how far from converged each one stopped.
    Values only, in order (these configs validate once an epoch), since old logs mislabel epochs."""
    lines = []
    for config in configs:
        cfg = load_config(config)
        curve = dev_curve(Path(cfg.output_dir), "wer")
        subset = f"first {cfg.data.dev_max_examples} dev words" if cfg.data.dev_max_examples else "dev"
        lines.append(f"- `{config}` ({subset}): " + ", ".join(f"{w:.1f}" for _, w in curve))
    return "Dev WER by epoch:\n\n" + "\n".join(lines) + "\n"


def table(rows: list[dict], beam: int) -> str:
    head = (f"| config | model | parameters | steps (epochs) | training time | checkpoint (dev WER) | test words "
            f"| WER greedy | PER greedy | WER beam {beam} | PER beam {beam} | decoding greedy / beam {beam} |\n")
    head += "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|\n"
    return head + "".join(
        f"| {'`' + r['config'] + '`' if r['config'].endswith('.yaml') else r['config']} | {r['family']} | {r['params']:,} | {r['steps']} ({r['epochs']}) | {duration(r['train_s']) if r['train_s'] else 'not recorded'} | "
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
    ap.add_argument("--ensemble", action="store_true", help="add a row: all the models decoding as one ensemble")
    args = ap.parse_args()
    if args.ensemble and len(args.configs) < 2:
        ap.error("--ensemble needs at least two configs")
    if args.beam < 2:
        ap.error("--beam must be at least 2 (greedy is always evaluated)")
    runs = [run(c, not args.no_train, args.beam) for c in args.configs]
    rows = [r for r, _, _ in runs]
    if args.ensemble:
        rows.append(ensemble_row(rows, [tr for _, tr, _ in runs], runs[0][2], args.beam))
    text = table(rows, args.beam) + "\n" + curves(args.configs)
    print(text)
    if args.record:
        record(f"G2P (CMUdict test split, greedy and beam {args.beam})", text)


if __name__ == "__main__":
    main()
