"""Per-update memory probe of a training run: what `bench/memory.py` measures per phase, update by update.

Trains the Multi30k Transformer (bf16, one thread, no dev set; or ``--config``) for ``--steps`` updates and, after
each, records the resident memory, the high-water mark so far (VmHWM),
glibc's heap (``mallinfo2``: arena and free bytes) or, under jemalloc, its live (``allocated``) and
resident bytes and the update's live peak (bytes allocated before it plus jemalloc's
``thread.peak`` over it: one training thread only), the CPU seconds and the heap releases so far. ``--resume`` continues the run in OUT
instead (a resumed process: its overrides as given, e.g. ``training.epochs=19``; ``--steps`` unused).
Prints the first 10 updates' peak, the run's peak and their ratio, the releases, and CPU ms per
1k target tokens over updates 2..N. The rows go to ``OUT-probe.jsonl``.

    python bench/heap_probe.py /tmp/p-keep --steps 100 training.release_memory=false
    python bench/heap_probe.py /tmp/p-12 --steps 100 training.release_memory_above=1.2
    python bench/heap_probe.py /tmp/p-mid --steps 100 --mid-check      # also check after the forward pass
    python bench/heap_probe.py /tmp/p-mmap --steps 33 --mmap-threshold 33554432   # with THP_MEM_ALLOC_ENABLE=1
    python bench/heap_probe.py /work/mem/long-cap3 --resume training.epochs=18 training.num_threads=2
    python bench/heap_probe.py /tmp/s-keep --steps 80 --config configs/samsum-attention-copy.yaml \
        data.dev.path=null data.test.path=null training.lr_schedule=constant \
        training.early_stopping.patience=null training.release_memory=false     # another model
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time

from seq2seqkit.runtime import configure_process, jemalloc, jemalloc_get, release_freed_memory, resident_bytes

configure_process()

from common import REPO  # noqa: E402

from seq2seqkit.config import load_config  # noqa: E402
from seq2seqkit.training import Trainer, load_for_resume  # noqa: E402

D = REPO.parent / "shared" / "data" / "multi30k"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def high_water_mib() -> int:
    """VmHWM: the process's peak resident memory so far (what HeapBound's first-updates peak reads too)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) >> 10 for line in f if line.startswith("VmHWM"))


def jemalloc_mib() -> dict[str, int]:
    """Under jemalloc: its live allocations and the pages it holds resident (freed ones included), MiB."""
    je = jemalloc()
    if je is None:
        return {}
    epoch = ctypes.c_uint64(1)  # refreshes the statistics
    je.mallctl(b"epoch", None, None, ctypes.byref(epoch), ctypes.sizeof(epoch))
    return {k: (jemalloc_get(f"stats.{k}", ctypes.c_size_t) or 0) >> 20 for k in ("allocated", "resident")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="the run's output_dir; the rows go to OUT-probe.jsonl")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--mid-check", action="store_true", help="check the heap limit after each forward pass too")
    ap.add_argument("--mmap-threshold", type=int, help="glibc M_MMAP_THRESHOLD in bytes (blocks above it are mmapped)")
    ap.add_argument("--resume", action="store_true", help="continue the run in OUT (a resumed process)")
    ap.add_argument("--config", help="train this config instead (its dev set and schedule as the overrides leave them; "
                                     "default: the Multi30k Transformer, bf16, no dev set)")
    ap.add_argument("overrides", nargs="*", help="config overrides, k=v")
    args = ap.parse_intermixed_args()
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    if args.mmap_threshold:
        assert libc.mallopt(-3, args.mmap_threshold) == 1  # M_MMAP_THRESHOLD
    if args.resume:
        tr = Trainer(load_for_resume(args.out, args.overrides), resume=True)
    elif args.config:
        tr = Trainer(load_config(args.config, [f"output_dir={args.out}", "training.num_threads=1",
                                               f"training.max_steps={args.steps}", *args.overrides]))
    else:
        tr = Trainer(load_config(REPO / "configs" / "multi30k-transformer.yaml", [
            f"output_dir={args.out}", "training.precision=bf16", "training.num_threads=1",
            f"training.max_steps={args.steps}", "training.keep_epoch_checkpoints=0",
            f"data.train.src={D}/train.de.gz", f"data.train.tgt={D}/train.en.gz", "data.dev.src=null",
            "data.dev.tgt=null", "data.test.src=null", "data.test.tgt=null", "training.early_stopping.patience=null",
            *args.overrides]))
    if args.mid_check:
        forward = tr.forward

        def checked(*a, **k):
            out = forward(*a, **k)
            heap = tr.heap
            if heap.limit is not None and (resident_bytes() or 0) > heap.limit and release_freed_memory():
                heap.releases += 1
            return out
        tr.forward = checked
    step, rows = tr.train_step, []
    log = open(f"{args.out}-probe.jsonl", "w")

    def probed(batch, *a, **k):
        live0 = jemalloc_mib().get("allocated")
        if live0 is not None:  # the update's live peak: allocated before it + this thread's peak increase in it
            jemalloc().mallctl(b"thread.peak.reset", None, None, None, 0)
        rss0, cpu0 = resident_bytes() >> 20, time.process_time()
        loss = step(batch, *a, **k)
        heap = libc.mallinfo2()
        live = {} if live0 is None else {"live_peak": live0 + ((jemalloc_get("thread.peak.read", ctypes.c_uint64) or 0) >> 20)}
        rows.append({"step": tr.progress.step, "tokens": sum(b.n_tokens for b in batch), "rss0": rss0,
                     "rss1": resident_bytes() >> 20, "peak": high_water_mib(), "cpu": time.process_time() - cpu0,
                     "arena": heap.arena >> 20, "free": heap.fordblks >> 20, "releases": tr.heap.releases,
                     **jemalloc_mib(), **live})
        log.write(json.dumps(rows[-1]) + "\n")
        log.flush()
        return loss

    tr.train_step = probed
    tr.train()
    first = max(r["peak"] for r in rows[:10])
    run = max(r["peak"] for r in rows)
    later = rows[1:]
    ms = 1e6 * sum(r["cpu"] for r in later) / max(sum(r["tokens"] for r in later), 1)
    print(f"{len(rows)} updates: first 10 updates' peak {first:,} MiB, run's peak {run:,} MiB = {run / first:.2f}x, "
          f"{tr.heap.releases} releases, {ms:.1f} CPU ms per 1k target tokens (updates 2..{len(rows)})")


if __name__ == "__main__":
    main()
