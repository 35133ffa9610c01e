"""Memory: peak resident memory (RSS) of translation and of whole training runs.

    python bench/memory.py translate            # s2s translate on one 1k / 10k / 100k-character line
    python bench/memory.py train --epochs 3     # a Multi30k Transformer run: training steps vs validation
    python bench/memory.py ab --epochs 2 --above 1.5 1.2   # training speed per allocator: never releasing vs limits
    python bench/memory.py step-peak            # the training step's own peak: its largest batches, each alone
    python bench/memory.py ... --record         # ... and append the table to BENCHMARKS.md

* ``translate``: trains (once) a small attention GRU on the G2P task (``configs/g2p-attention.yaml``,
  ``--steps`` updates, into ``runs/mem-att``; the point is the memory of search, not quality),
  then runs ``s2s translate`` in a fresh process on a file holding one line of N characters
  (letters and spaces) and reads the child's peak RSS from ``wait4``. Each length runs with the
  default search limits (the line is truncated to ``search.max_input_tokens``), greedy and beam 5,
  and, to show what the limit protects against, with the limits raised so that the whole line is
  decoded (``--no-limit-max N``: the longest line tried that way).
* ``train``: runs ``configs/multi30k-transformer.yaml`` (bf16, one thread, validation every
  epoch) in a child process that resets the kernel's high-water mark (``/proc/self/clear_refs``)
  at each switch between training and validation and reads ``VmHWM`` at the end of each phase,
  so every training epoch and every validation has its own peak; a side thread samples
  ``VmRSS`` every few seconds into ``OUT/rss.csv``. The table compares the training phases'
  peak with the whole run's (the highest phase peak: after a reset, the child's ``ru_maxrss``
  no longer covers the earlier phases).
* ``step-peak``: the reference a whole run is compared with. Each of the ``--top`` largest
  batches of the first epoch (by padded target tokens, whose logits are the largest tensors,
  by padded source tokens, and by the longest sequence, whose attention weights grow with its
  square) trains two updates alone in a fresh process on each allocator;
  the largest peak RSS among them is what the training step itself needs, without the heap's
  history (the first 10 updates of a run need not meet the largest batch).
* ``ab``: the same training child on each allocator of ``--allocators`` (glibc's malloc and
  jemalloc, preloaded as ``s2s train`` does where the system has it), each with
  ``training.release_memory`` false and with each ``training.release_memory_above`` of ``--above``
  (default 1.5), alternating (``--repeats`` rounds), validation without the exposure-bias
  passes; the logged losses must be identical. Speed is the CPU time the
  training phases took per 1,000 target tokens (one thread, so it does not depend on how busy
  the other cores are, unlike wall-clock tokens/s, which is shown too), beside each run's peak RSS.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
S2S = [sys.executable, "-m", "seq2seqkit.cli"]
MULTI30K = Path(os.environ.get("MULTI30K", "/work/shared/data/multi30k"))
MIB = 1 << 20


# ------------------------------------------------------------------------------ helpers
def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_measured(cmd: list[str], **kw) -> tuple[int, int, float]:
    """Run ``cmd``; return (exit status, peak RSS in bytes, wall seconds) of that child alone."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, **kw)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024, time.perf_counter() - t0


def machine_line() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB"


def record(title: str, command: str, table: str) -> None:
    path = REPO / "BENCHMARKS.md"
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    with path.open("a", encoding="utf-8") as f:
        f.write(f"\n### {title} ({stamp})\n\n`{command}` on {machine_line()}\n\n{table}\n")


# ---------------------------------------------------------------------------- translate
def train_small_attention(out: Path, steps: int) -> None:
    if (out / "checkpoints" / "last.pt").exists():
        return
    cmd = [*S2S, "-q", "train", "configs/g2p-attention.yaml", f"output_dir={out}", f"training.max_steps={steps}",
           "training.num_threads=1"]
    subprocess.run(cmd, cwd=REPO, check=True)


def long_line(chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words, n = [], 0
    while n < chars:
        w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
        words.append(w)
        n += len(w) + 1
    return " ".join(words)[:chars]


def bench_translate(args: argparse.Namespace) -> str:
    model = REPO / args.model_dir
    train_small_attention(model, args.steps)
    rows = ["| input line | limit | tokens decoded | output tokens | peak RSS | wall |", "|---|---|---|---|---|---|"]
    tmp = model / "bench-memory"
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for chars in args.lengths:
        src = tmp / f"line-{chars}.txt"
        src.write_text(long_line(chars) + "\n", encoding="utf-8")
        settings = [("default", []), ("default, beam 5", ["--beam=5"])]
        if chars <= args.no_limit_max:
            settings.append(("raised", [f"--max-input-tokens={chars + 10}", f"--max-output-tokens={2 * chars + 20}"]))
        for label, flags in settings:
            out = tmp / f"out-{chars}-{label}.txt"
            err = tmp / f"err-{chars}-{label}.txt"
            with err.open("w") as ferr:
                rc, peak, wall = run_measured([*S2S, "translate", "-m", str(model), "-i", str(src), "-o", str(out), "--force",
                                               *flags], cwd=REPO, env=env, stderr=ferr)
            if rc:
                raise SystemExit(f"translate failed ({rc}): {err.read_text()[-2000:]}")
            n_out = len(out.read_text(encoding="utf-8").split())
            decoded = "truncated" if "truncated" in err.read_text() else "all"
            rows.append(f"| {chars:,} characters | {label} | {decoded} | {n_out:,} | {peak / MIB:,.0f} MiB | {wall:.1f} s |")
            print(rows[-1], flush=True)
    return "\n".join(rows)


# -------------------------------------------------------------------------------- train
def child_overrides(out: Path, dev: bool) -> list[str]:
    """What every training child changes in configs/multi30k-transformer.yaml: its output
    directory, bf16 on one thread, the corpus from MULTI30K, no test split (and no dev split,
    so no early stopping, unless ``dev``)."""
    data = MULTI30K
    splits = [f"data.dev.src={data}/val.de.gz", f"data.dev.tgt={data}/val.en.gz"] if dev else \
        ["data.dev.src=null", "data.dev.tgt=null", "training.early_stopping.patience=null"]
    return [f"output_dir={out}", "training.precision=bf16", "training.num_threads=1",
            f"data.train.src={data}/train.de.gz", f"data.train.tgt={data}/train.en.gz", *splits,
            "data.test.src=null", "data.test.tgt=null"]


def train_child(args: argparse.Namespace) -> None:
    """In the child: train with per-phase peaks, then print one JSON line of results. The
    process settings are those ``s2s train`` runs with (``configure_process``: glibc malloc keeps
    freed blocks), applied before torch loads."""
    from seq2seqkit.runtime import configure_process

    configure_process()
    import torch

    from seq2seqkit.config import load_config
    from seq2seqkit.training import Trainer

    out = Path(args.out)
    cfg = load_config(REPO / "configs" / "multi30k-transformer.yaml",
                      [*child_overrides(out, dev=True), f"training.epochs={args.epochs}",
                       "training.keep_epoch_checkpoints=0", *args.overrides])
    phases: list[dict] = []
    phase = {"name": "setup", "t0": time.time(), "c0": time.process_time()}
    can_reset = reset_peak()

    def switch(name: str) -> None:
        nonlocal phase
        st = proc_status()
        phase.update(end_rss=st["VmRSS"], peak=st["VmHWM"], seconds=time.time() - phase["t0"],
                     cpu_seconds=time.process_time() - phase["c0"])
        phases.append(phase)
        reset_peak()
        phase = {"name": name, "t0": time.time(), "c0": time.process_time(), "start_rss": proc_status()["VmRSS"]}

    stop = threading.Event()

    def sampler() -> None:
        with (out.parent / f"{out.name}-rss.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["seconds", "phase", "rss_mib", "hwm_mib"])
            t0 = time.time()
            while not stop.wait(args.sample_every):
                st = proc_status()
                w.writerow([f"{time.time() - t0:.0f}", phase["name"], st["VmRSS"] // MIB, st["VmHWM"] // MIB])
                f.flush()

    trainer = Trainer(cfg)
    switch("train")
    validate = trainer._validate

    def measured_validate():
        switch("validate")
        values = validate()
        switch("train")
        return values

    trainer._validate = measured_validate  # type: ignore[method-assign]
    step = trainer.train_step
    trained = {"tokens": 0, "updates": 0, "peak10": None}

    def counted_step(batch, *args, **kwargs):
        trained["tokens"] += sum(b.n_tokens for b in (batch if isinstance(batch, list) else [batch]))
        loss = step(batch, *args, **kwargs)
        trained["updates"] += 1
        if trained["updates"] == 10:  # the training step's own peak: the first 10 updates' (ru_maxrss, KiB)
            trained["peak10"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return loss

    trainer.train_step = counted_step  # type: ignore[method-assign]
    threading.Thread(target=sampler, daemon=True).start()
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    stop.set()
    switch("end")
    log_file = out / "train_log.jsonl"  # absent when no update was logged
    log = [json.loads(line) for line in log_file.read_text().splitlines()] if log_file.exists() else []
    tok_s = [e["tokens_per_s"] for e in log if e["kind"] == "train"]
    print(json.dumps({"phases": [{k: v for k, v in p.items() if k not in ("t0", "c0")} for p in phases],
                      "hwm_reset": can_reset, "steps": trainer.progress.step, "seconds": seconds,
                      "tokens_per_s": tok_s, "train_tokens": trained["tokens"], "peak10": trained["peak10"],
                      "losses": [[e["kind"], e["step"], e["loss"]] for e in log if "loss" in e],
                      "heap_releases": trainer.heap.releases, "heap_limit": trainer.heap.limit,
                      "heap_peak": trainer.heap.peak,
                      "threads": torch.get_num_threads()}))


def step_child(args: argparse.Namespace) -> None:
    """In the child: the training step alone on one batch of the first epoch, in a fresh process
    (no heap history): two updates on it (the first allocates Adam's states), then this
    process's peak RSS. The batch is the ``--rank``-th largest by ``--by``: ``tgt`` (padded target
    tokens: the logits, the largest tensors), ``src`` (padded source tokens) or ``long`` (the longest
    sequence: attention's weights grow with its square)."""
    from seq2seqkit.runtime import configure_process

    configure_process()
    import numpy as np

    from seq2seqkit.config import load_config
    from seq2seqkit.data.dataset import collate, token_batches
    from seq2seqkit.training import Trainer

    cfg = load_config(REPO / "configs" / "multi30k-transformer.yaml",
                      [*child_overrides(Path(args.out), dev=False), *args.overrides])
    trainer = Trainer(cfg)
    d, tc = trainer.train_data, cfg.training
    batches = token_batches(d.src_lens, d.tgt_lens, tc.batch_tokens, tc.seed, 0)
    if args.by == "long":  # the longest sequences: attention's weights grow with length squared
        size = [max(int(d.src_lens[b].max()), int(d.tgt_lens[b].max())) for b in batches]
    else:
        lens = d.tgt_lens if args.by == "tgt" else d.src_lens
        size = [len(b) * (int(lens[b].max()) + 1) for b in batches]
    chosen = batches[int(np.argsort(size)[::-1][args.rank])]
    batch = collate(d, chosen).to(trainer.device)
    tokens = int(d.tgt_lens[chosen].sum()) + len(chosen)
    for _ in range(2):
        trainer.train_step(batch, tokens)
    print(json.dumps({"peak": proc_status()["VmHWM"], "sentences": len(chosen),
                      "src_len": int(d.src_lens[chosen].max()) + 1, "tgt_len": int(d.tgt_lens[chosen].max()) + 1}))


BY = {"tgt": "padded target tokens", "src": "padded source tokens", "long": "longest sequence"}


def bench_step_peak(args: argparse.Namespace) -> str:
    """The training step's own peak: the largest batches of an epoch, each alone in a fresh process."""
    rows = ["| allocator | batch | sentences | longest source / target (tokens) | padded source / target tokens "
            "| peak RSS (2 updates, fresh process) |", "|---|---|---|---|---|---|"]
    peaks = []
    for allocator in args.allocators:
        for by in ("tgt", "src", "long"):
            for rank in range(args.top):
                out = Path(args.out) / f"{allocator}-{by}-{rank}"
                cmd = [sys.executable, str(Path(__file__).resolve()), "step-child", "--out", str(out), "--by", by,
                       "--rank", str(rank), "--", *args.overrides]
                proc = subprocess.run(cmd, cwd=REPO, env=child_env(allocator), capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(f"step child failed ({proc.returncode}): {proc.stderr[-2000:]}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                peaks.append((allocator, r["peak"]))
                rows.append(f"| {allocator} | #{rank + 1} by {BY[by]} "
                            f"| {r['sentences']} | {r['src_len']} / {r['tgt_len']} "
                            f"| {r['sentences'] * r['src_len']:,} / {r['sentences'] * r['tgt_len']:,} "
                            f"| {r['peak'] / MIB:,.0f} MiB |")
                print(rows[-1], flush=True)
    rows.append("")
    for allocator in args.allocators:
        rows.append(f"{allocator}: the step's own peak (largest of these) "
                    f"{max(p for a, p in peaks if a == allocator) / MIB:,.0f} MiB")
    return "\n".join(rows)


def child_env(allocator: str) -> dict[str, str]:
    """The environment of a training child on ``allocator``: ``jemalloc`` preloaded (what ``s2s
    train`` restarts itself with where the system has it), or ``system`` (glibc's malloc)."""
    from seq2seqkit.runtime import find_jemalloc

    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if allocator == "auto":
        allocator = "jemalloc" if find_jemalloc() else "system"
    if allocator == "jemalloc":
        lib = find_jemalloc()
        if lib is None:
            raise SystemExit("no jemalloc library on this system (Debian: apt-get install libjemalloc2)")
        env["LD_PRELOAD"] = lib
    return env


def run_train_child(out: Path, epochs: int, sample_every: float, overrides: list[str],
                    allocator: str = "auto") -> tuple[dict, int, float]:
    """One measured training child: (its result line, its peak RSS, wall seconds); ``allocator``:
    ``auto`` (as ``s2s train``: jemalloc where the system has it), ``jemalloc`` or ``system``."""
    out = out.resolve()
    if out.exists():
        raise SystemExit(f"{out} exists: remove it or give another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "train-child", "--out", str(out), "--epochs", str(epochs),
           "--sample-every", str(sample_every), "--", *overrides]
    result = out.parent / f"{out.name}-result.json"
    with result.open("w") as f:
        rc, peak, wall = run_measured(cmd, cwd=REPO, stdout=f, env=child_env(allocator))
    if rc:
        raise SystemExit(f"training child failed with status {rc}")
    res = json.loads(result.read_text().strip().splitlines()[-1])
    # The child resets the kernel's high-water mark at each phase, and what wait4 reports is the
    # mark at exit (or at a thread's exit), so the whole run's peak is the highest phase peak.
    return res, max([peak, *(p["peak"] for p in res["phases"])]), wall


def bench_train(args: argparse.Namespace) -> str:
    return train_table(*run_train_child(Path(args.out), args.epochs, args.sample_every, args.overrides, args.allocator))


def bench_ab(args: argparse.Namespace) -> str:
    """Training speed and peak RSS per allocator, never releasing the freed heap and with each
    limit, alternating."""
    rows = ["| allocator | freed heap released above | run | updates | training CPU s | CPU ms per 1k target tokens "
            "| logged tokens/s (median, wall) | first 10 updates' peak RSS | whole run's peak RSS | heap releases |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    # (allocator, limit): limit None is training.release_memory=false
    arms = [(a, x) for a in args.allocators for x in [*args.above, None]]
    per_1k: dict[tuple, list[float]] = {arm: [] for arm in arms}
    same = []  # per round: are the logged losses (training windows, validation) bit-identical in every arm?
    for run in range(1, args.repeats + 1):
        losses = []
        for allocator, above in arms:
            out = Path(args.out) / f"{allocator}-{'keep' if above is None else f'above-{above}'}-{run}"
            setting = (["training.release_memory=false"] if above is None
                       else ["training.release_memory=true", f"training.release_memory_above={above}"])
            res, peak, _ = run_train_child(out, args.epochs, args.sample_every,
                                           [*setting, "training.exposure_bias=false", *args.overrides], allocator)
            cpu = sum(p["cpu_seconds"] for p in res["phases"] if p["name"] == "train")
            ms = 1000 * cpu / max(res["train_tokens"] / 1000, 1e-9)
            per_1k[(allocator, above)].append(ms)
            losses.append(res["losses"])
            tok = sorted(res["tokens_per_s"])
            median = f"{tok[len(tok) // 2]:,.0f}" if tok else ""
            ref = res["peak10"] or peak
            rows.append(f"| {allocator} | {'never' if above is None else f'{above}x'} | {run} | {res['steps']} | {cpu:,.0f} "
                        f"| {ms:.2f} | {median} | {ref / MIB:,.0f} MiB | {peak / MIB:,.0f} MiB = {peak / ref:.2f}x "
                        f"| {'off' if above is None else res['heap_releases']} |")
        same.append(bool(losses[0]) and all(x == losses[0] for x in losses))
    mean = {arm: sum(v) / len(v) for arm, v in per_1k.items()}
    base = arms[len(args.above)]  # the first allocator, never releasing
    costs = ", ".join(f"{a} {'never' if x is None else f'above {x}x'} {mean[(a, x)]:.2f} "
                      f"({100 * (mean[(a, x)] / mean[base] - 1):+.1f}%)" for a, x in arms)
    rows += ["", f"mean CPU ms per 1k target tokens (against {base[0]} never releasing): {costs}",
             f"logged losses bit-identical across the arms: {', '.join('yes' if x else 'NO' for x in same)} "
             f"(per round; {len(losses[0])} logged values each)"]
    return "\n".join(rows)


def train_table(res: dict, peak: int, wall: float) -> str:
    phases = res["phases"]
    rows = ["| phase | seconds | RSS at start | peak RSS of the phase | RSS at end |", "|---|---|---|---|---|"]
    epoch = 0
    for i, p in enumerate(phases):
        name = p["name"]
        if name == "train":
            last = not any(q["name"] == "validate" for q in phases[i:])
            epoch += 1
            name = "after the last validation (checkpoint)" if last and epoch > 1 else f"epoch {epoch} training"
        elif name == "validate":
            name = f"epoch {epoch} validation"
        start = f"{p['start_rss'] / MIB:,.0f} MiB" if "start_rss" in p else ""
        rows.append(f"| {name} | {p['seconds']:.0f} | {start} | {p['peak'] / MIB:,.0f} MiB | {p['end_rss'] / MIB:,.0f} MiB |")
    tok = res["tokens_per_s"]
    rows.append("")
    line = f"whole run's peak {peak / MIB:,.0f} MiB; {res['steps']} updates in {wall / 60:.1f} min"
    if tok:
        line += f"; logged tokens/s median {sorted(tok)[len(tok) // 2]:,.0f}"
    if res.get("heap_peak"):
        line += (f"; the first 10 updates' peak {res['heap_peak'] / MIB:,.0f} MiB (whole run "
                 f"{peak / res['heap_peak']:.2f}x), freed heap released {res['heap_releases']} times above "
                 f"{res['heap_limit'] / MIB:,.0f} MiB")
    rows.append(line)
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("translate")
    t.add_argument("--model-dir", default="runs/mem-att")
    t.add_argument("--steps", type=int, default=50)
    t.add_argument("--lengths", type=int, nargs="+", default=[1000, 10000, 100000])
    t.add_argument("--no-limit-max", type=int, default=10000)
    t.add_argument("--record", action="store_true")
    tr = sub.add_parser("train")
    tr.add_argument("--out", default="runs/mem-multi30k")
    tr.add_argument("--epochs", type=int, default=3)
    tr.add_argument("--sample-every", type=float, default=5.0)
    tr.add_argument("--allocator", choices=["auto", "system", "jemalloc"], default="auto",
                    help="the child's malloc: auto (as s2s train: jemalloc where the system has it), system or jemalloc")
    tr.add_argument("--record", action="store_true")
    tr.add_argument("overrides", nargs="*")
    ab = sub.add_parser("ab")
    ab.add_argument("--out", default="runs/mem-ab")
    ab.add_argument("--epochs", type=int, default=2)
    ab.add_argument("--repeats", type=int, default=2)
    ab.add_argument("--sample-every", type=float, default=5.0)
    ab.add_argument("--above", type=float, nargs="+", default=[1.5],
                    help="training.release_memory_above of the releasing arms (beside one that never releases)")
    ab.add_argument("--allocators", nargs="+", choices=["system", "jemalloc"], default=["system", "jemalloc"],
                    help="the mallocs to compare: glibc's (system) and jemalloc, preloaded as s2s train does "
                         "(Debian: apt-get install libjemalloc2)")
    ab.add_argument("--record", action="store_true")
    ab.add_argument("overrides", nargs="*")
    c = sub.add_parser("train-child")
    c.add_argument("--out", required=True)
    c.add_argument("--epochs", type=int, required=True)
    c.add_argument("--sample-every", type=float, default=5.0)
    c.add_argument("overrides", nargs="*")
    sp = sub.add_parser("step-peak", help="the training step's own peak: the largest batches, each in a fresh process")
    sp.add_argument("--out", default="runs/mem-step")
    sp.add_argument("--top", type=int, default=3, help="the N largest batches by padded target and by source tokens")
    sp.add_argument("--allocators", nargs="+", choices=["system", "jemalloc"], default=["system", "jemalloc"])
    sp.add_argument("--record", action="store_true")
    sp.add_argument("overrides", nargs="*")
    sc = sub.add_parser("step-child")
    sc.add_argument("--out", required=True)
    sc.add_argument("--by", choices=["tgt", "src", "long"], required=True)
    sc.add_argument("--rank", type=int, required=True)
    sc.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if args.what == "train-child":
        train_child(args)
        return
    if args.what == "step-child":
        step_child(args)
        return
    sys.path.insert(0, str(REPO))
    table = {"translate": bench_translate, "train": bench_train, "ab": bench_ab, "step-peak": bench_step_peak}[args.what](args)
    print(table)
    if args.record:
        cmd = "python bench/memory.py " + " ".join(sys.argv[1:]).replace(" --record", "")
        record(f"Memory: {args.what}", cmd, table)


if __name__ == "__main__":
    main()
