"""Teacher forcing vs scheduled sampling, and the exposure-bias measure, on G2P and Multi30k.

    python bench/exposure.py --max-steps 4000                  # the experiment (hours on a CPU)
    python bench/exposure.py --minutes 60 --decay-steps 3000   # the same wall-clock budget instead
    python bench/exposure.py --no-train                        # table and plots from runs/exposure as it is
    python bench/exposure.py --tasks g2p --max-steps 20 --threads 1 --dev-limit 300 --test-limit 300   # a smoke run

For each task (G2P on CMUdict: ``configs/g2p-{attention,transformer}.yaml``; Multi30k de->en:
``configs/multi30k-{attention,transformer}.yaml``) and family (attention RNN, Transformer), three
runs with the same budget (updates, or minutes of training wall-clock):

* ``tf``: teacher forcing (ratio 1);
* ``ss-linear``: scheduled sampling, the ratio of gold inputs falling linearly from 1 to
  ``--min-ratio`` over ``--decay-steps`` updates;
* ``ss-sigmoid``: the same range on Bengio et al.'s inverse-sigmoid schedule, half-way at
  ``--decay-steps / 2``.

Scheduled sampling uses ``--mode`` (parallel by default: two passes through ``model.forward``).
Everything else is the config's (``--config`` names another recipe for a task and family), except:
the exposure-bias passes on at every validation, no early stopping and no epoch limit (the budget ends
every run), validation every ``--validate-every`` updates, no epoch checkpoints. Runs live in
``runs/exposure/TASK-FAMILY-VARIANT/`` and resume where they stopped (kill the script at any
time and run it again; a raised budget continues the runs). A run keeps the config it started
with: when raising ``--max-steps``, pass the old value as ``--decay-steps`` so that runs started
later get the same schedules. Wall-clock numbers are only comparable between runs made on the
same, equally loaded machine.

Printed: per run its minutes, its median training throughput (target tokens/s over the log's
windows: the cost per token, robust to a window slowed by another program), the last validation
(teacher-forced dev loss, next-token accuracy, the
exposure-bias gaps eb_gap@p, dev WER or BLEU) and the greedy test WER/PER or BLEU/chrF of the
last checkpoint; quality by reference-length bucket on the test set (quartiles of the reference
lengths: where do free-running outputs go wrong?); and a few plain comparisons against ``tf``.
Drawn (PNG, ``--plots``): per task, the teacher-forced dev loss against updates and against
wall-clock minutes (``time_s`` in the log: time spent in training, validations included), the
dev WER/BLEU against minutes, and eb_gap at the middle rate against updates.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
from pathlib import Path

from common import REPO, machine  # first: s2s's process settings, before torch loads

import torch  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scheduled_sampling import multi30k_overrides  # noqa: E402

from seq2seqkit import metrics as M
from seq2seqkit.checkpoint import atomic_write_bytes, load_checkpoint
from seq2seqkit.config import Config, exposure_bias_key, load_config
from seq2seqkit.evaluate import EvalSet, evaluate_model, load_eval_set
from seq2seqkit.tasks import resolve_dataset
from seq2seqkit.training import Trainer, load_for_resume
from seq2seqkit.translate import Translator
from seq2seqkit.validation import lower_is_better

TASKS = {"g2p": {"metric": "wer", "test_metrics": ["wer", "per"], "grouped": True, "label": "G2P (CMUdict)"},
         "multi30k": {"metric": "bleu", "test_metrics": ["bleu", "chrf"], "grouped": False, "label": "Multi30k de→en"}}
FAMILIES = ["attention", "transformer"]
VARIANTS = ["tf", "ss-linear", "ss-sigmoid"]


def sigmoid_k(midpoint: float) -> float:
    """k of the inverse-sigmoid schedule k / (k + exp(step / k)), which is half-way at step k ln k."""
    lo, hi = 1.0, max(midpoint, 2.0)
    for _ in range(100):  # k ln k is increasing for k >= 1: bisect
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid * math.log(mid) < midpoint else (lo, mid)
    return max(1.0, lo)


def run_config(task: str, family: str, variant: str, args: argparse.Namespace) -> Config:
    teacher = {"tf": ["training.teacher_forcing.ratio=1.0"],
               "ss-linear": ["training.teacher_forcing.schedule=linear", f"training.teacher_forcing.decay_steps={args.decay_steps}"],
               "ss-sigmoid": ["training.teacher_forcing.schedule=inverse_sigmoid",
                              f"training.teacher_forcing.sigmoid_k={sigmoid_k(args.decay_steps / 2):.3f}"]}[variant]
    if variant != "tf":
        teacher += ["training.teacher_forcing.ratio=1.0", f"training.teacher_forcing.min_ratio={args.min_ratio}",
                    f"training.teacher_forcing.mode={args.mode}"]
    overrides = [
        f"name={task}-{family}-{variant}", "training.exposure_bias=true", f"output_dir={args.out / f'{task}-{family}-{variant}'}",
        "training.epochs=1000000", "training.early_stopping.patience=null", "training.keep_epoch_checkpoints=0",
        f"training.validate_every={args.validate_every}", f"training.num_threads={args.threads}",
        f"training.max_steps={args.max_steps or args.validate_every}", *teacher,
        *(multi30k_overrides(args.data_root) if task == "multi30k" else []),
        *([f"data.dev_max_examples={args.dev_limit}"] if args.dev_limit else []),
    ]
    config = args.config.get(f"{task}-{family}", REPO / "configs" / f"{task}-{family}.yaml")
    return load_config(config, overrides)


def train(cfg: Config, args: argparse.Namespace) -> dict:
    """Train ``cfg``'s run to the budget (starting, resuming or raising it); its progress."""
    out = Path(cfg.output_dir)
    last = out / "checkpoints" / "last.pt"
    while True:
        progress = load_checkpoint(last)["progress"] if last.exists() else None
        if args.max_steps:
            if progress and progress["step"] >= args.max_steps:
                return progress
            target = args.max_steps
        else:  # minutes: train in chunks of validate_every updates until the time is spent
            if progress and progress["train_seconds"] >= args.minutes * 60:
                return progress
            target = (progress["step"] if progress else 0) + args.validate_every
        print(f"{out.name}: training to step {target}", file=sys.stderr, flush=True)
        if progress is None:
            cfg.training.max_steps = target
            Trainer(cfg).train()
        else:
            Trainer(load_for_resume(out, [f"training.max_steps={target}"]), resume=True).train()


def read_log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]


def test_set(task: str, args: argparse.Namespace) -> EvalSet:
    cfg = load_config(REPO / "configs" / f"{task}-attention.yaml",
                      multi30k_overrides(args.data_root) if task == "multi30k" else [])
    data = resolve_dataset(cfg.data)
    full = load_eval_set(*data.test.files(), fmt=data.test.format, group_by_source=TASKS[task]["grouped"])
    n = args.test_limit or len(full.refs)
    return EvalSet(full.sources[:n] if full.sources else None, full.refs[:n], list(range(n)))


def length_buckets(test: EvalSet) -> list[tuple[str, list[int]]]:
    """Test items in four buckets by the length of their (first) reference in tokens, cut at the
    quartiles: (label, item indices)."""
    lengths = [len(r[0].split()) for r in test.refs]
    ordered = sorted(lengths)
    cuts = sorted({ordered[min(len(ordered) - 1, len(ordered) * q // 4)] for q in (1, 2, 3)})
    bounds = [(1, cuts[0] - 1)] + [(a, b - 1) for a, b in zip(cuts, cuts[1:])] + [(cuts[-1], None)]
    buckets = []
    for lo, hi in bounds:
        idx = [i for i, n in enumerate(lengths) if n >= lo and (hi is None or n <= hi)]
        if idx:
            buckets.append((f"{lo}+" if hi is None else (f"{lo}" if lo == hi else f"{lo}-{hi}"), idx))
    return buckets


def evaluate(task: str, out: Path, test: EvalSet, buckets: list[tuple[str, list[int]]]) -> dict:
    """Greedy test scores of the run's last checkpoint (the same budget for all), overall and per bucket."""
    tr = Translator.load(out, checkpoint="last")
    tr.cfg.search = tr.cfg.search.model_copy(update={"beam_size": 1, "nbest": 1, "sample": False})
    scores, hyps = evaluate_model(tr, test, TASKS[task]["test_metrics"])
    metric = TASKS[task]["metric"]
    by_length = [M.score([hyps[i] for i in idx], [test.refs[i] for i in idx], [metric]).values[metric] for _, idx in buckets]
    return {"test": scores.values, "by_length": by_length}


def summarize(task: str, family: str, variant: str, out: Path, result: dict, rates: list[float]) -> dict:
    log = read_log(out)
    valid = [e for e in log if e["kind"] == "valid"]
    last = valid[-1] if valid else {}
    speeds = [e["tokens_per_s"] for e in log if e["kind"] == "train" and e.get("tokens_per_s")]
    return {"task": task, "family": family, "variant": variant, "dir": out, "log": log, "valid": valid,
            "steps": last.get("step", 0), "minutes": last.get("time_s", 0.0) / 60, "last": last, "rates": rates,
            # the cost of an update's tokens, robust to a window slowed by another program on the machine
            "tokens_per_s": statistics.median(speeds) if speeds else None, **result}


def fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def results_table(rows: list[dict]) -> str:
    rates = rows[0]["rates"]
    gaps = [exposure_bias_key("gap", p) for p in rates]
    head = ["task", "model", "variant", "updates", "min", "median target tok/s", "dev loss", "dev acc %", *gaps,
            "dev metric", "test"]
    text = "| " + " | ".join(head) + " |\n|" + "---|" * 3 + "---:|" * (len(head) - 3) + "\n"
    for r in rows:
        last, metric = r["last"], TASKS[r["task"]]["metric"]
        test = ", ".join(f"{k.upper()} {v:.2f}" for k, v in r["test"].items())
        text += (f"| {r['task']} | {r['family']} | {r['variant']} | {r['steps']} | {r['minutes']:.1f} | {fmt(r['tokens_per_s'], 0)} "
                 f"| {fmt(last.get('loss'), 3)} "
                 f"| {fmt(last.get('acc'), 1)} | " + " | ".join(fmt(last.get(g), 3) for g in gaps)
                 + f" | {metric.upper()} {fmt(last.get(metric))} | {test} |\n")
    return text


def length_table(task: str, rows: list[dict], buckets: list[tuple[str, list[int]]]) -> str:
    metric = TASKS[task]["metric"].upper()
    text = (f"{TASKS[task]['label']}: test {metric} (greedy) by reference length in tokens\n\n| model | variant | "
            + " | ".join(f"{name} (n={len(idx)})" for name, idx in buckets) + " |\n|---|---|" + "---:|" * len(buckets) + "\n")
    for r in rows:
        text += f"| {r['family']} | {r['variant']} | " + " | ".join(f"{v:.2f}" for v in r["by_length"]) + " |\n"
    return text


def comparisons(rows: list[dict]) -> list[str]:
    """Plain statements of how each scheduled-sampling run differs from teacher forcing."""
    lines = []
    for r in rows:
        tf = next((x for x in rows if x["task"] == r["task"] and x["family"] == r["family"] and x["variant"] == "tf"), None)
        if r["variant"] == "tf" or tf is None or not r["last"] or not tf["last"]:
            continue
        metric = TASKS[r["task"]]["metric"]
        mid = exposure_bias_key("gap", r["rates"][len(r["rates"]) // 2])
        d_gap = r["last"].get(mid, math.nan) - tf["last"].get(mid, math.nan)
        d_test = r["test"][metric] - tf["test"][metric]
        better = (d_test < 0) if lower_is_better(metric) else (d_test > 0)
        lines.append(f"{r['task']} {r['family']} {r['variant']} vs tf: {mid} {d_gap:+.3f} nats "
                     f"({'smaller' if d_gap < 0 else 'not smaller'}), test {metric.upper()} {d_test:+.2f} "
                     f"({'better' if better else 'not better'}), dev loss {r['last']['loss'] - tf['last']['loss']:+.3f}")
    return lines


def plot(task: str, rows: list[dict], path: Path) -> None:
    """Per family (rows of panels): dev loss vs updates, dev loss vs minutes, dev metric vs minutes,
    eb_gap at the middle rate vs updates; one line per variant."""
    metric = TASKS[task]["metric"]
    families = [f for f in FAMILIES if any(r["family"] == f for r in rows)]
    fig = Figure(figsize=(16, 3.6 * len(families)))
    FigureCanvasAgg(fig)
    for i, family in enumerate(families):
        runs = [r for r in rows if r["family"] == family]
        mid = exposure_bias_key("gap", runs[0]["rates"][len(runs[0]["rates"]) // 2])
        panels = [("step", "loss", "updates", "dev loss (teacher-forced)"), ("time_s", "loss", "minutes", "dev loss (teacher-forced)"),
                  ("time_s", metric, "minutes", f"dev {metric.upper()} (greedy)"), ("step", mid, "updates", f"dev {mid} (nats)")]
        for j, (x, y, xlabel, ylabel) in enumerate(panels):
            ax = fig.add_subplot(len(families), len(panels), i * len(panels) + j + 1)
            for r in runs:
                pts = [(e[x] / (60 if x == "time_s" else 1), e[y]) for e in r["valid"] if y in e and x in e]
                if pts:
                    ax.plot(*zip(*pts), marker="o", markersize=3, label=r["variant"])
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_title(f"{TASKS[task]['label']}, {family}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    atomic_write_bytes(path, buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--max-steps", type=int, help="budget: updates per run")
    budget.add_argument("--minutes", type=float, help="budget: minutes of training per run (validations included)")
    ap.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    ap.add_argument("--families", nargs="+", choices=FAMILIES, default=FAMILIES)
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    ap.add_argument("--decay-steps", type=int, help="updates over which the schedules fall (default: --max-steps)")
    ap.add_argument("--min-ratio", type=float, default=0.5, help="lowest share of gold decoder inputs (default 0.5)")
    ap.add_argument("--mode", choices=["parallel", "sequential"], default="parallel", help="scheduled sampling mode")
    ap.add_argument("--validate-every", type=int, help="updates between validations (default: a tenth of --max-steps)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--config", action="append", default=[], metavar="TASK-FAMILY=PATH",
                    help="another recipe for one task and family, e.g. multi30k-transformer="
                         "configs/multi30k-transformer-32min.yaml for short budgets (default: configs/TASK-FAMILY.yaml)")
    ap.add_argument("--no-train", action="store_true", help="only evaluate and report the runs that exist")
    ap.add_argument("--test-limit", type=int, help="score only the first N test items (smoke runs)")
    ap.add_argument("--dev-limit", type=int, help="validate on the first N dev items (data.dev_max_examples; smoke runs)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "exposure")
    ap.add_argument("--plots", type=Path, help="folder for the PNGs (default: --out)")
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data",
                    help="the folder holding multi30k/ (default: ../shared/data beside the repository)")
    args = ap.parse_args()
    if not args.no_train and not (args.max_steps or args.minutes):
        ap.error("give a budget: --max-steps N or --minutes M (or --no-train)")
    if args.minutes and not (args.decay_steps and args.validate_every):
        ap.error("with --minutes, give --decay-steps and --validate-every (the schedules count updates)")
    configs = {}
    for item in args.config:
        key, sep, path = item.partition("=")
        if not sep or key not in {f"{t}-{f}" for t in TASKS for f in FAMILIES} or not Path(path).is_file():
            ap.error(f"--config {item}: give TASK-FAMILY=PATH with an existing file (TASK-FAMILY: e.g. multi30k-transformer)")
        configs[key] = Path(path).resolve()
    args.config = configs
    args.decay_steps = args.decay_steps or args.max_steps or 1
    args.validate_every = args.validate_every or max(1, (args.max_steps or 10) // 10)
    plots = args.plots or args.out

    for task in args.tasks:
        test = test_set(task, args)
        buckets = length_buckets(test)
        rows = []
        for family in args.families:
            for variant in args.variants:
                cfg = run_config(task, family, variant, args)
                out = Path(cfg.output_dir)
                if not args.no_train:
                    train(cfg, args)
                elif not (out / "checkpoints" / "last.pt").exists():
                    continue
                rates = cfg.training.exposure_bias_rates
                rows.append(summarize(task, family, variant, out, evaluate(task, out, test, buckets), rates))
                rows[-1]["threads"] = load_config(out / "config.yaml").training.num_threads  # as it trained
        if not rows:
            continue
        threads = ", ".join(str(t) for t in sorted({r["threads"] or "auto" for r in rows}, key=str))
        print(f"\n## {TASKS[task]['label']}\n\nMachine: {machine()} (this report); the runs trained with {threads} "
              f"thread(s) each\n")
        print(results_table(rows))
        print(length_table(task, rows, buckets))
        for line in comparisons(rows):
            print(line)
        path = plots / f"{task}-curves.png"
        plot(task, rows, path)
        print(f"\ncurves: {path}")


if __name__ == "__main__":
    main()
