"""bf16 autocast vs fp32: one config trained twice, differing only in ``training.precision``.

    python bench/precision.py configs/multi30k-transformer.yaml --epochs 8            # train both, compare
    python bench/precision.py configs/multi30k-transformer.yaml --epochs 8 --no-train --record

The two runs (``runs/precision/NAME-fp32`` and ``-bf16``; an unfinished one is resumed) share
the seed, so they see the same batches in the same order from the same initial weights: only
the forward pass's dtype differs. Both can be trained side by side beforehand with
``s2s train CONFIG training.precision=P training.epochs=N output_dir=runs/precision/NAME-P``.
Reported: the dev metric after every epoch (training's own validation, greedy), the test
BLEU/chrF of each run's final weights (greedy; the BLEU-within-0.5 criterion of the bf16
option) and the training time of each run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import REPO, dev_curve, duration, ensure_trained, record

from seq2seqkit import metrics as M
from seq2seqkit.config import load_config
from seq2seqkit.evaluate import load_eval_set
from seq2seqkit.translate import Translator

PRECISIONS = ("fp32", "bf16")


def run_dir(name: str, precision: str) -> Path:
    return REPO / "runs" / "precision" / f"{name}-{precision}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--epochs", type=int, default=8, help="epochs per run (default 8)")
    ap.add_argument("--no-train", action="store_true", help="only compare existing runs")
    ap.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args()

    base = load_config(args.config)
    metric = base.evaluation.metrics[0]
    rows = {}
    for precision in PRECISIONS:
        out = run_dir(base.name, precision)
        cfg = load_config(args.config, [f"training.precision={precision}", f"training.epochs={args.epochs}",
                                        f"output_dir={out}", "training.keep_epoch_checkpoints=0"])
        progress = ensure_trained(cfg, not args.no_train)
        tr = Translator.load(out, checkpoint="last")
        tr.cfg.search = tr.cfg.search.model_copy(update={"beam_size": 1, "nbest": 1, "sample": False})
        test = load_eval_set(*cfg.data.test.files(), fmt=cfg.data.test.format)
        hyps = tr.translate(test.sources)
        scores = M.score(hyps, test.refs, ["bleu", "chrf"]).values
        rows[precision] = {"curve": dict(dev_curve(out, metric)), "test": scores, "train_s": progress["train_seconds"],
                           "epochs": progress["epoch"], "hyps": hyps}
    same = sum(a == b for a, b in zip(rows["fp32"]["hyps"], rows["bf16"]["hyps"]))

    epochs = sorted(set(rows["fp32"]["curve"]) & set(rows["bf16"]["curve"]))
    text = (f"`{args.config}`, {args.epochs} epochs per run, same seed and batches; dev {metric} after each epoch "
            f"(greedy), then test scores of each run's final weights (greedy):\n\n"
            f"| run | " + " | ".join(f"ep {e}" for e in epochs) + " | test BLEU | test chrF | training time |\n"
            + "|---|" + "---:|" * (len(epochs) + 3) + "\n")
    for precision, r in rows.items():
        text += (f"| {precision} | " + " | ".join(f"{r['curve'][e]:.2f}" for e in epochs)
                 + f" | {r['test']['bleu']:.2f} | {r['test']['chrf']:.3f} | {duration(r['train_s'])} |\n")
    diff = [rows["bf16"]["curve"][e] - rows["fp32"]["curve"][e] for e in epochs]
    text += (f"| bf16 − fp32 | " + " | ".join(f"{d:+.2f}" for d in diff)
             + f" | {rows['bf16']['test']['bleu'] - rows['fp32']['test']['bleu']:+.2f}"
             + f" | {rows['bf16']['test']['chrf'] - rows['fp32']['test']['chrf']:+.3f}"
             + f" | {rows['fp32']['train_s'] / max(rows['bf16']['train_s'], 1e-9):.2f}× faster |\n")
    text += f"\nTest outputs identical between the two runs: {same} of {len(rows['fp32']['hyps'])}.\n"
    print(text)
    if args.record:
        record("Training precision: bf16 autocast vs fp32", text)


if __name__ == "__main__":
    main()
