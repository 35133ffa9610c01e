"""Cost of one update: teacher forcing vs parallel vs step-by-step scheduled sampling.

    python bench/scheduled_sampling.py --cost                  # Multi30k Transformer and attention GRU
    python bench/scheduled_sampling.py --cost --rounds 10 --threads 2

Times ``Trainer.train_step`` (exactly what training runs: forward, backward, optimizer step) on
the Multi30k configs (``configs/multi30k-transformer.yaml``, ``configs/multi30k-attention.yaml``)
for three settings of ``training.teacher_forcing``: ratio 1 (teacher forcing), ratio 0.5 with
``mode: parallel`` (two passes) and ratio 0.5 with ``mode: sequential`` (T decoder steps).
The three are interleaved on the same batch in every round, in one process, and the table gives
the median over rounds of each one's time divided by teacher forcing's in the same round: on a
shared, loaded machine those paired ratios are far steadier than absolute times (also shown).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

from common import REPO, machine  # first: s2s's process settings, before torch loads

import torch  # noqa: E402

from seq2seqkit.config import TeacherForcingConfig, load_config
from seq2seqkit.data.dataset import collate, token_batches
from seq2seqkit.training import Trainer

CONFIGS = {"transformer": "configs/multi30k-transformer.yaml", "attention": "configs/multi30k-attention.yaml"}
SETTINGS = {
    "teacher forcing": TeacherForcingConfig(ratio=1.0),
    "parallel SS 0.5": TeacherForcingConfig(ratio=0.5, mode="parallel"),
    "sequential SS 0.5": TeacherForcingConfig(ratio=0.5, mode="sequential"),
}


def multi30k_overrides(data_root: Path) -> list[str]:
    """The Multi30k configs name ``../shared/data/multi30k`` relative to the repository root;
    point them at ``data_root`` instead (a worktree elsewhere, another mount)."""
    d = data_root / "multi30k"
    return [f"data.train.src={d / 'train.de.gz'}", f"data.train.tgt={d / 'train.en.gz'}",
            f"data.dev.src={d / 'val.de.gz'}", f"data.dev.tgt={d / 'val.en.gz'}",
            f"data.test.src={d / 'test_2016_flickr.de.gz'}", f"data.test.tgt={d / 'test_2016_flickr.en.gz'}"]


def cost(family: str, rounds: int, warmup: int, threads: int, data_root: Path, scratch: Path) -> dict:
    out = scratch / family
    shutil.rmtree(out, ignore_errors=True)  # the bench's own scratch run: always from scratch
    cfg = load_config(REPO / CONFIGS[family], [f"output_dir={out}", f"training.num_threads={threads}",
                                               *multi30k_overrides(data_root)])
    trainer = Trainer(cfg)
    try:
        data, tc = trainer.train_data, trainer.cfg.training
        batches = token_batches(data.src_lens, data.tgt_lens, tc.batch_tokens, tc.seed, 0)
        times: dict[str, list[float]] = {name: [] for name in SETTINGS}
        tokens = []
        for r in range(warmup + rounds):
            batch = collate(data, batches[r % len(batches)])
            for name, setting in SETTINGS.items():
                trainer.cfg.training.teacher_forcing = setting
                start = time.perf_counter()
                trainer.train_step(batch)
                if r >= warmup:
                    times[name].append(time.perf_counter() - start)
            if r >= warmup:
                tokens.append(batch.n_tokens)
            print(f"{family} round {r + 1}/{warmup + rounds}: "
                  + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items() if t), file=sys.stderr, flush=True)
    finally:
        trainer.close()
    base = times["teacher forcing"]
    return {"family": family, "tokens": statistics.median(tokens),
            "seconds": {n: statistics.median(t) for n, t in times.items()},
            "ratio": {n: statistics.median(a / b for a, b in zip(t, base)) for n, t in times.items()},
            "spread": {n: (min(a / b for a, b in zip(t, base)), max(a / b for a, b in zip(t, base))) for n, t in times.items()}}


def table(rows: list[dict], rounds: int) -> str:
    names = list(SETTINGS)
    head = "| model | target tokens/batch | " + " | ".join(names) + " |\n"
    head += "|---|---:|" + "---:|" * len(names) + "\n"
    for r in rows:
        cells = [f"{r['seconds'][n]:.2f} s (×{r['ratio'][n]:.2f}, {r['spread'][n][0]:.2f}–{r['spread'][n][1]:.2f})"
                 for n in names]
        head += f"| {r['family']} | {r['tokens']:.0f} | " + " | ".join(cells) + " |\n"
    return head + (f"\nSeconds per update (median of {rounds} rounds); ×: median over rounds of the time divided by "
                   f"teacher forcing's on the same batch in the same round (range in brackets).\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cost", action="store_true", help="time an update in each setting (the only mode so far)")
    ap.add_argument("--families", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--rounds", type=int, default=6, help="timed rounds (each: one update per setting)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data",
                    help="the folder holding multi30k/ (default: ../shared/data beside the repository)")
    ap.add_argument("--scratch", type=Path, default=REPO / "runs" / "bench-scheduled-sampling")
    args = ap.parse_args()
    if not args.cost:
        ap.error("nothing to do: pass --cost")
    rows = [cost(f, args.rounds, args.warmup, args.threads, args.data_root, args.scratch) for f in args.families]
    print(f"Machine: {machine()}\n")
    print(table(rows, args.rounds))


if __name__ == "__main__":
    main()
