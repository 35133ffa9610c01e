"""Training on a busy machine: target tokens/s of the demo config beside CPU-bound programs.

    python bench/busy.py                    # the table: 3 settings x 3 loads x 3 repeats, up to a minute each
    python bench/busy.py --record           # ... and appends it to BENCHMARKS.md
    python bench/busy.py --steps 10 --competitors 0 1 --max-seconds 20   # a quick look

Each cell is a fresh process (OpenMP reads its wait policy once, when torch loads) that trains
the demo config (``configs/g2p-quick.yaml``, what ``make demo`` trains) for ``--warmup`` updates,
then times ``--steps`` updates (or as many as fit in ``--max-seconds``) of ``Trainer.train_step``,
as training runs them; target tokens/s counts real tokens, not padding. The competitors are
``python -c 'while True: pass'`` processes started before the cell's process, so its start-up
sees them as ``make demo`` on a busy laptop would, and killed after it. Variants:

* ``before``: OpenMP's default wait policy (libgomp spins 300,000 turns at every barrier before it
  sleeps) and one thread per core: what ``s2s`` did before ``configure_process``;
* ``default``: ``seq2seqkit.runtime.configure_process()``, as ``s2s`` runs it (1,000 turns of
  spinning; the thread count follows the free cores, checked 1 s after set-up begins, then every 30 s);
* ``threads1``: the same with ``training.num_threads=1``;
* ``before1``: the spinning default with ``training.num_threads=1`` (not in the default set).

Besides tokens/s the table gives the CPU time the process spent per 1,000 tokens: the time
threads spend spinning at barriers shows there, whatever the other programs take.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "g2p-quick.yaml"
VARIANTS = {
    "before": "spin-waiting OpenMP, one thread per core (before)",
    "default": "s2s default (configure_process)",
    "threads1": "s2s default + training.num_threads=1",
    "before1": "spin-waiting OpenMP + training.num_threads=1 (before)",
}
SPIN_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")


# ----------------------------------------------------------------------------- one cell (child)
def worker(variant: str, model_dir: str, warmup: int, steps: int, max_seconds: float) -> dict:
    """Runs in a fresh process: the process set-up of ``variant``, then the timed updates."""
    from seq2seqkit import runtime

    if variant.startswith("before"):
        runtime.keep_freed_memory()  # the trainer applied it itself before configure_process existed
    else:
        runtime.configure_process()
    import torch

    from seq2seqkit.data.dataset import collate, token_batches
    from seq2seqkit.training import Trainer, load_for_resume

    overrides = ["training.num_threads=1"] if variant.endswith("1") else []
    trainer = Trainer(load_for_resume(model_dir, overrides), resume=True)
    data, tc = trainer.train_data, trainer.cfg.training
    batches = token_batches(data.src_lens, data.tgt_lens, tc.batch_tokens, tc.seed, 0)
    for idx in batches[:warmup]:
        trainer.train_step(collate(data, idx))
        trainer.cores.check(torch.get_num_threads())  # as Trainer.train does: the default follows free cores
    tokens, done = 0, 0
    start, cpu = time.perf_counter(), time.process_time()
    for idx in batches[warmup : warmup + steps]:
        batch = collate(data, idx)
        trainer.train_step(batch)
        trainer.cores.check(torch.get_num_threads())
        tokens, done = tokens + batch.n_tokens, done + 1
        if time.perf_counter() - start > max_seconds and done >= 3:
            break
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"tokens_per_s": tokens / seconds, "cpu_ms_per_1k": 1e6 * cpu / tokens, "steps": done,
            "seconds": seconds, "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- orchestration
def prepare(model_dir: Path) -> None:
    """The demo run's directory at step 0 (tokenizers, encoded config, a checkpoint), made once so
    that each cell resumes it instead of training tokenizers again."""
    from seq2seqkit.config import load_config
    from seq2seqkit.training import Trainer

    Trainer(load_config(CONFIG, [f"output_dir={model_dir}"])).save("last")


def run_cell(variant: str, model_dir: Path, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SPIN_ENV}
    cmd = [sys.executable, __file__, "--worker", variant, "--model-dir", str(model_dir), "--warmup", str(args.warmup),
           "--steps", str(args.steps), "--max-seconds", str(args.max_seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def competing(n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(1.0)  # running, and counted by the kernel's CPU statistics
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait()


def measure(args: argparse.Namespace, model_dir: Path) -> dict[tuple[str, int], list[dict]]:
    """Every (variant, competitors) cell ``--repeats`` times; the variants take turns within each
    load, so a change in the background load falls on all of them alike."""
    results: dict[tuple[str, int], list[dict]] = {}
    for rep in range(args.repeats):
        for n in args.competitors:
            procs = competing(n)
            try:
                for variant in args.variants:
                    r = run_cell(variant, model_dir, args)
                    results.setdefault((variant, n), []).append(r)
                    print(f"[{rep + 1}/{args.repeats}] {n} competing, {variant}: {r['tokens_per_s']:,.0f} tok/s, "
                          f"{r['threads']} thread(s), {r['cpu_ms_per_1k']:.0f} ms CPU / 1k tokens, {r['steps']} steps",
                          file=sys.stderr, flush=True)
            finally:
                stop(procs)
    return results


def table(results: dict[tuple[str, int], list[dict]], args: argparse.Namespace, load: tuple[float, ...]) -> str:
    heads = ["alone" if n == 0 else f"beside {n} busy program{'s' * (n != 1)}" for n in args.competitors]
    text = (f"Target tokens/s, median of {args.repeats} (in brackets: threads at the end, CPU ms per 1k tokens); "
            f"the machine's 1-minute load average was {load[0]:.1f} before the first cell\n\n")
    text += "| settings | " + " | ".join(heads) + " |\n|---|" + "---:|" * len(heads) + "\n"
    for v in args.variants:
        cells = []
        for n in args.competitors:
            rs = results[(v, n)]
            cells.append(f"{statistics.median(r['tokens_per_s'] for r in rs):,.0f} "
                         f"({'/'.join(sorted({str(r['threads']) for r in rs}))} thr, "
                         f"{statistics.median(r['cpu_ms_per_1k'] for r in rs):.0f} ms)")
        text += f"| {VARIANTS[v]} | " + " | ".join(cells) + " |\n"
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100, help="timed updates per cell (default: 100)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed updates first (default: 5)")
    ap.add_argument("--max-seconds", type=float, default=60.0,
                    help="stop timing a cell after this long (at least 3 updates; default: 60)")
    ap.add_argument("--competitors", type=int, nargs="+", default=[0, 1, 2], help="busy programs beside (default: 0 1 2)")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["before", "default", "threads1"])
    ap.add_argument("--repeats", type=int, default=3, help="runs per cell; the table gives medians (default: 3)")
    ap.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model_dir, args.warmup, args.steps, args.max_seconds)))
        return

    from common import machine, record  # imports torch: only here, never in a cell's process

    with tempfile.TemporaryDirectory(prefix="s2s-busy-") as tmp:
        model_dir = Path(tmp) / "g2p-quick"
        prepare(model_dir)
        load = os.getloadavg()
        results = measure(args, model_dir)
    text = table(results, args, load)
    print(f"\nDemo config training, {args.warmup} + up to {args.steps} updates per cell; {machine()}\n")
    print(text)
    if args.record:
        record("Training beside busy programs (configs/g2p-quick.yaml)", text)


if __name__ == "__main__":
    main()
