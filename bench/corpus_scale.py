"""Memory and start-up time as the corpus grows: Multi30k's training set repeated 1x, 10x, 100x.

    python bench/corpus_scale.py                              # 1x, 10x, 100x; 10 updates a run
    python bench/corpus_scale.py --scales 1 10 --updates 20   # a shorter run
    python bench/corpus_scale.py --data /work/shared/data/multi30k --work /tmp/scale

For each scale, three child processes of ``s2s`` (the Multi30k Transformer recipe, no dev set,
so no validation), each measured from outside:

* ``s2s preprocess``: tokenizer training and encoding into shards (data/shards.py): its wall
  time and peak RSS;
* ``s2s train`` tokenizing at start (``data.cache=false``: tokenizers trained and the corpus
  encoded into memory, as every run did before shards);
* ``s2s train`` on the preprocessed shards (``data.preprocessed=DIR``).

Start-up is the time from starting the process to its first update (the ``step 1/`` log line
at ``training.log_every=1``, so it includes that update); set-up is the time to the start of the
training loop (the ``training: N steps planned`` line): start-up less the first update, the part
that preprocessing removes, and the one the speed-up is computed from. The set-up peak RSS is
the process's VmHWM at that point (all data loading, no batch yet); the peak RSS is the child's ``ru_maxrss`` from ``wait4``. Targets
(issue 17): peak RSS at 100x within 10% of 1x, and start-up on a preprocessed corpus at least
10x faster than tokenizing it. The repeated corpora are written as plain text under --work
(default ``$S2S_CACHE_DIR/bench/corpus-scale`` or ``~/.cache/seq2seqkit/bench/corpus-scale``),
never into the repository.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "multi30k-transformer.yaml"
MIB = 2**20


def default_work() -> Path:
    root = os.environ.get("S2S_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "seq2seqkit") / "bench" / "corpus-scale"


def repeated_corpus(data: Path, work: Path, scale: int) -> tuple[Path, Path, int]:
    """Multi30k's train.de/train.en written ``scale`` times over (plain text); (src, tgt, pairs)."""
    out = work / f"x{scale}"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for lang in ("de", "en"):
        text = gzip.decompress((data / f"train.{lang}.gz").read_bytes())
        path = out / f"train.{lang}"
        if not path.is_file() or path.stat().st_size != len(text) * scale:
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                for _ in range(scale):
                    f.write(text)
            tmp.replace(path)
        paths.append(path)
    return paths[0], paths[1], text.count(b"\n") * scale


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int) -> float:
    """The peak resident memory of a running process so far, in MiB (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(cmd: list[str], first_update: bool) -> dict[str, float]:
    """Run ``cmd``: its wall time, CPU time and peak RSS and (``first_update``) the wall and CPU
    seconds to the training loop (set-up) and to its first update (start-up)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    tail: deque[str] = deque(maxlen=20)
    seen: dict[str, float] = {}

    def read() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            tail.append(line)
            for key, mark in (("setup", " steps planned"), ("startup", " step 1/")):
                if first_update and key not in seen and mark in line:
                    seen[key] = time.perf_counter() - start
                    seen[f"{key}_cpu"] = cpu_seconds(proc.pid)
                    if key == "setup":  # the peak so far: what loading the data cost, before any batch
                        seen["setup_rss"] = peak_rss(proc.pid)

    reader = threading.Thread(target=read)
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    reader.join()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{''.join(tail)}")
    if first_update and ("startup" not in seen or "setup" not in seen):
        sys.exit(f"no 'training: ... steps planned' or 'step 1/' line from: {' '.join(cmd)}\n{''.join(tail)}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss * 1024 / MIB, **seen}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--updates", type=int, default=10, help="updates per training run (default 10)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "multi30k",
                    help="the Multi30k directory (train.de.gz, train.en.gz)")
    ap.add_argument("--work", type=Path, default=default_work(), help="scratch directory (corpora, shards, runs)")
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--no-tokenize-above", type=int, metavar="SCALE",
                    help="skip the tokenizing-at-start training run above this scale (it is the slowest)")
    args = ap.parse_args()
    s2s = [sys.executable, "-m", "seq2seqkit.cli"]
    rows = []
    for scale in args.scales:
        src, tgt, pairs = repeated_corpus(args.data, args.work, scale)
        data = [f"data.train.src={src}", f"data.train.tgt={tgt}", "data.dev.src=null", "data.dev.tgt=null",
                "data.test.src=null", "data.test.tgt=null", "training.early_stopping.patience=null"]
        train = [*data, f"training.max_steps={args.updates}", "training.log_every=1", "training.keep_epoch_checkpoints=0",
                 f"training.checkpoint_every={args.updates}"]
        pre = args.work / f"shards-x{scale}"
        prep = run([*s2s, "preprocess", str(args.config), str(pre), *data], first_update=False)
        shard_mb = sum(p.stat().st_size for p in pre.iterdir()) / 1e6
        print(f"x{scale}: preprocessed {pairs:,} pairs in {prep['wall']:.1f} s ({prep['cpu']:.1f} s CPU), peak RSS {prep['rss']:.0f} MiB, "
              f"{shard_mb:.1f} MB", flush=True)
        result = {"scale": scale, "pairs": pairs, "prep": prep, "shard_mb": shard_mb}
        modes = [("preprocessed", [f"data.preprocessed={pre}"])]
        if args.no_tokenize_above is None or scale <= args.no_tokenize_above:
            modes.append(("tokenize", ["data.cache=false"]))
        for mode, extra in modes:
            out = args.work / "runs" / f"{mode}-x{scale}"
            shutil.rmtree(out, ignore_errors=True)  # this script's own run directory from an earlier run
            result[mode] = run([*s2s, "train", str(args.config), *train, *extra, f"output_dir={out}"], first_update=True)
            print(f"x{scale} {mode}: set-up {result[mode]['setup']:.1f} s ({result[mode]['setup_cpu']:.1f} s CPU), "
                  f"start-up {result[mode]['startup']:.1f} s ({result[mode]['startup_cpu']:.1f} s CPU), "
                  f"peak RSS at the end of set-up {result[mode]['setup_rss']:.0f} MiB, peak RSS {result[mode]['rss']:.0f} MiB, "
                  f"{args.updates} updates in {result[mode]['wall']:.1f} s", flush=True)
        rows.append(result)

    def cell(r: dict, mode: str, key: str, fmt: str) -> str:
        return format(r[mode][key], fmt) if mode in r else "-"

    print(f"\n{args.updates} updates of {args.config.name} per run; start-up = process start to first update\n")
    print("Times are wall-clock seconds (CPU seconds of the process in brackets: less sensitive to a busy machine).\n")
    print("| corpus | pairs | preprocess: time s | peak RSS MiB | shards MB "
          "| tokenize at start: set-up s | start-up s | set-up peak RSS MiB | peak RSS MiB "
          "| preprocessed: set-up s | start-up s | set-up peak RSS MiB | peak RSS MiB | set-up speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def timed(r: dict, mode: str, key: str) -> str:
        return f"{r[mode][key]:.1f} ({r[mode][key + '_cpu']:.1f})" if mode in r else "-"

    for r in rows:
        speedup = "-"
        if "tokenize" in r:
            speedup = (f"{r['tokenize']['setup'] / r['preprocessed']['setup']:.1f}x "
                       f"({r['tokenize']['setup_cpu'] / r['preprocessed']['setup_cpu']:.1f}x)")
        print(f"| {r['scale']}x | {r['pairs']:,} | {r['prep']['wall']:.1f} ({r['prep']['cpu']:.1f}) | {r['prep']['rss']:.0f} "
              f"| {r['shard_mb']:.1f} "
              + "".join(f"| {timed(r, m, 'setup')} | {timed(r, m, 'startup')} | {cell(r, m, 'setup_rss', '.0f')} "
                        f"| {cell(r, m, 'rss', '.0f')} "
                        for m in ("tokenize", "preprocessed")) + f"| {speedup} |")
    first = rows[0]["preprocessed"]
    for r in rows[1:]:
        print(f"training on shards, {r['scale']}x vs {rows[0]['scale']}x: peak RSS {r['preprocessed']['rss'] / first['rss'] - 1:+.1%} "
              f"(target: within 10%), at the end of set-up {r['preprocessed']['setup_rss'] / first['setup_rss'] - 1:+.1%}")


if __name__ == "__main__":
    main()
