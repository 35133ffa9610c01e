"""Process-level settings that make PyTorch on CPU fast.

glibc's allocator serves large blocks (above its adaptive mmap threshold, at most 32 MiB) with
``mmap`` and hands each back to the kernel when it is freed, so a training step that allocates and
frees the same activation tensors each time pays a page fault for every 4 KiB page of them, over
and over. On a 2-core machine that was a third of a Transformer training step (dropout masks,
residual adds and gradient buffers spent their time faulting pages in, not computing): keeping
blocks up to 32 MiB on the heap took a 4k-token Multi30k Transformer step from 2.66 s to 1.79 s
on 2 cores. The tensors above 32 MiB, the logits and their gradients (4096 tokens x 8k vocabulary
x 4 bytes = 131 MB each), still faulted: serving *every* block from the heap took the same step
from about 5.5 s to 4.3 s at 1 thread (``python bench/profile_step.py transformer --threads 1
[--glibc-default-malloc]``; both pairs measured beside other jobs, so compare within a pair).

Keeping freed memory has a price over a long run: the heap fragments and its resident size
grows with it. :func:`release_freed_memory` gives the free pages back, and :class:`HeapBound`
does so during training whenever resident memory passes 1.5x what the first updates needed
(``python bench/memory.py train``; BENCHMARKS.md, "Memory").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_configured = False


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory(trim_threshold: int = 1 << 30, top_pad: int = 64 << 20) -> bool:
    """Tell glibc malloc to serve every block from the heap (no ``mmap``, whose blocks go back to
    the kernel on free) and to keep up to ``trim_threshold`` bytes of freed heap instead of
    returning it. Threads whose arena cannot grow fall back to the main heap, as glibc does when
    mmap fails.

    The cost is memory: freed blocks stay mapped between steps, and a heap fragments where mmap'd
    blocks would not (variable batch shapes leave holes), so peak RSS grows: 2.0 -> 2.7-2.8 GB for
    the Transformer step above, against 1.3 s less page-fault (system) time per update. PyTorch's
    ``posix_memalign`` asks for the size plus the alignment, so a hole left by a freed block does not
    fit the same block again until it coalesces with a neighbour: a block allocated and freed in a
    loop lands in fresh memory for its first 2-7 rounds, then reuses the heap for good.

    Returns whether the settings were applied: False off glibc (macOS, Windows, musl), where this
    is a no-op. Idempotent.
    """
    global _configured
    if _configured:
        return True
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, trim_threshold), (_M_TOP_PAD, top_pad)))
    _configured = ok
    log.debug("glibc malloc tuned for tensor reuse: %s", ok)
    return ok


def release_freed_memory() -> bool:
    """Give the pages of all freed heap blocks back to the kernel (glibc ``malloc_trim(0)``, which
    also releases whole free pages in the middle of the heap, not only at its top).

    Under :func:`keep_freed_memory` the heap keeps every page it ever touched: a phase that
    allocates differently shaped tensors than the training step (validation's decoding and its
    batches) lands partly in fresh memory and would otherwise stay resident for the rest of the
    run, on top of the step's own heap. Trimming at the switch between such phases costs one
    round of page faults for the blocks reused afterwards (about one update's worth), not one per
    update. Returns whether glibc did it (False elsewhere, where this is a no-op)."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux ``/proc/self/statm``); None where unknown."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()
    except (OSError, IndexError, ValueError):
        return None


class HeapBound:
    """Keeps a training process's resident memory near what its updates need.

    Whatever the allocator settings, the heap fragments over a run: batches differ in shape, so a
    step's blocks do not fit the holes the previous step left, and the pages of those holes stay
    resident. Measured on the Multi30k Transformer (bf16, one thread; bench/memory.py): 2.0 GB
    after the first updates, 4.0-4.1 GB after 80 with either glibc's default or
    :func:`keep_freed_memory`, 5.8 GB in the third epoch, while ``malloc_trim`` at update 80 left
    0.9 GB: the rest was free heap. So after each update, once resident memory passes ``headroom``
    times the peak of the first ``warmup`` updates, the freed heap is given back
    (:func:`release_freed_memory`); the next update faults its pages in again, once, instead of
    the heap growing for the rest of the run."""

    def __init__(self, warmup: int = 10, headroom: float = 1.5) -> None:
        self.warmup, self.headroom = warmup, headroom
        self.updates, self.releases = 0, 0
        self.limit: int | None = None

    def after_update(self) -> None:
        self.updates += 1
        if self.limit is None:
            if self.updates >= self.warmup:  # ru_maxrss is in KiB on Linux
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                self.limit = int(self.headroom * peak)
                log.info("memory: peak %d MiB after %d updates; freed heap is released above %d MiB",
                         peak >> 20, self.updates, self.limit >> 20)
            return
        rss = resident_bytes()
        if rss is not None and rss > self.limit and release_freed_memory():
            self.releases += 1
