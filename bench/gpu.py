"""The GPU path, timed: the README's GPU training commands on the Multi30k Transformer recipe.

    python bench/gpu.py                              # fp32, bf16, fp16: 3 epochs each
    python bench/gpu.py --epochs 5 --full 600        # ... and the bf16 recipe to its end (or 600 s)
    python bench/gpu.py --precisions bf16 --work DIR --out table.md

Each short run is the README's command with a bounded length and its own directory,
``s2s train configs/multi30k-transformer.yaml training.device=cuda training.precision=P
training.epochs=E output_dir=WORK/P``, in its own process. From its ``train_log.jsonl``: target
tokens/s (padding not counted; the median over the log windows after the first), seconds per
epoch (wall clock between the end-of-epoch validations, greedy validation decoding included; the
first epoch, with CUDA's start-up, apart), the most GPU memory PyTorch's allocator held, and the
greedy dev BLEU at the end; the command's wall clock includes start-up and tokenizer training.

``--full SECONDS``: the bf16 recipe as written (37 epochs, early stopping on dev BLEU), stopped
with SIGTERM after SECONDS (it saves a checkpoint); then the minutes it took to first reach each
greedy dev BLEU of the ``--bleu`` list, and the best checkpoint's beam-5 BLEU on dev and on
test_2016_flickr (``s2s evaluate --beam 5``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
CONFIG = "configs/multi30k-transformer.yaml"
DATA = REPO.parent / "shared" / "data" / "multi30k"


def s2s(*args: str, deadline: float | None = None, log: Path | None = None) -> tuple[int, float]:
    """Run ``s2s ARGS`` from the repository root; (exit status, wall seconds). After ``deadline``
    seconds it gets SIGTERM (training then saves its checkpoint and exits)."""
    start = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "seq2seqkit", *args], cwd=REPO, stdout=out, stderr=out)
        try:
            proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
    return proc.returncode, time.perf_counter() - start


def read_log(model_dir: Path) -> tuple[list[dict], list[dict]]:
    entries = [json.loads(line) for line in (model_dir / "train_log.jsonl").read_text().splitlines() if line.strip()]
    return [e for e in entries if e["kind"] == "train"], [e for e in entries if e["kind"] == "valid"]


def summary(model_dir: Path) -> dict:
    train, valid = read_log(model_dir)
    ends = [v["time_s"] for v in valid]
    later = [b - a for a, b in zip(ends, ends[1:])]
    return {
        "tokens_per_s": statistics.median(e["tokens_per_s"] for e in train[1:] or train),
        "first_epoch_s": ends[0] if ends else float("nan"),
        "epoch_s": statistics.median(later) if later else float("nan"),
        "gpu_mib": max((e.get("gpu_peak_mib", 0.0) for e in train), default=0.0),
        "epochs": len(valid),
        "dev_bleu": valid[-1]["bleu"] if valid else float("nan"),
    }


def evaluate(model_dir: Path, split: str, work: Path) -> float:
    """Beam-5 BLEU of the best checkpoint on a Multi30k split, through ``s2s evaluate``."""
    out = work / f"evaluate-{split}.log"
    status, _ = s2s("evaluate", "-m", str(model_dir), "--src", str(DATA / f"{split}.de.gz"),
                    "--ref", str(DATA / f"{split}.en.gz"), "--beam", "5", "--metrics", "bleu", "--device", "cuda",
                    log=out)
    text = out.read_text()
    if status != 0:
        raise SystemExit(f"s2s evaluate failed ({status}):\n{text[-2000:]}")
    for line in text.splitlines():  # "bleu  37.12  (nrefs:1|...)"
        parts = line.split()
        if parts and parts[0].lower() == "bleu":
            return float(parts[1])
    raise SystemExit(f"no BLEU line in s2s evaluate's output:\n{text[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3, help="epochs of each short run (default 3)")
    ap.add_argument("--precisions", nargs="*", default=["fp32", "bf16", "fp16"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--full", type=float, metavar="SECONDS", help="also train the bf16 recipe to its end, at most SECONDS")
    ap.add_argument("--bleu", type=float, nargs="+", default=[30.0, 35.0, 37.0, 38.7],
                    help="greedy dev BLEU levels whose first time --full reports")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "seq2seqkit" / "bench" / "gpu")
    ap.add_argument("--out", type=Path, help="also write the tables (Markdown) here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: no CUDA GPU visible to PyTorch")
    args.work.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0)
    lines = [f"GPU: {gpu} ({torch.cuda.device_count()} visible), torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"{os.cpu_count()} CPU cores; {time.strftime('%Y-%m-%d')}"]
    if args.precisions:
        lines += ["", f"Short runs, {args.epochs} epochs each: `s2s train {CONFIG} training.device=cuda "
                  f"training.precision=P training.epochs={args.epochs} output_dir=...`", "",
                  "| precision | target tokens/s | s/epoch (first) | s/epoch (later, median) | peak GPU MiB | "
                  "dev BLEU (greedy) at the end | command wall s |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in args.precisions:
        out = args.work / p
        if out.exists():
            raise SystemExit(f"{out} exists: give another --work")
        status, wall = s2s("train", CONFIG, "training.device=cuda", f"training.precision={p}",
                           f"training.epochs={args.epochs}", f"output_dir={out}", log=args.work / f"{p}.log")
        if status != 0:
            lines.append(f"| {p} | failed (exit {status}; {args.work / p}.log) | | | | | |")
            continue
        s = summary(out)
        lines.append(f"| {p} | {s['tokens_per_s']:,.0f} | {s['first_epoch_s']:.1f} | {s['epoch_s']:.1f} | "
                     f"{s['gpu_mib']:,.0f} | {s['dev_bleu']:.1f} | {wall:.0f} |")
        print("\n".join(lines[-1:]), flush=True)
    if args.full:
        out = args.work / "full-bf16"
        status, wall = s2s("train", CONFIG, "training.device=cuda", "training.precision=bf16", f"output_dir={out}",
                           deadline=args.full, log=args.work / "full-bf16.log")
        train, valid = read_log(out)
        s = summary(out)
        reached = []
        for level in args.bleu:
            first = next((v for v in valid if v["bleu"] >= level), None)
            reached.append(f"{level:g}: " + (f"{first['time_s'] / 60:.1f} min (epoch {first['epoch']})" if first
                                             else "not reached"))
        best = max(valid, key=lambda v: v["bleu"])
        lines += ["", f"Recipe to its end: `s2s train {CONFIG} training.device=cuda training.precision=bf16 "
                  f"output_dir=...` ({'finished' if status == 0 else f'stopped after {args.full:.0f} s, exit {status}'}, "
                  f"{s['epochs']} epochs, {train[-1]['step'] if train else 0} updates, {wall / 60:.1f} min wall)", "",
                  f"- {s['tokens_per_s']:,.0f} target tokens/s, {s['epoch_s']:.1f} s per epoch (validation included), "
                  f"peak GPU memory {s['gpu_mib']:,.0f} MiB",
                  f"- greedy dev BLEU first reached: {'; '.join(reached)}",
                  f"- best greedy dev BLEU {best['bleu']:.2f} (epoch {best['epoch']}, {best['time_s'] / 60:.1f} min); "
                  f"that checkpoint with beam 5: dev {evaluate(out, 'val', args.work):.2f}, "
                  f"test_2016_flickr {evaluate(out, 'test_2016_flickr', args.work):.2f}"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
