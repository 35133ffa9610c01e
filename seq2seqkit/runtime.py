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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_configured = False


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
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, trim_threshold), (_M_TOP_PAD, top_pad)))
    _configured = ok
    log.debug("glibc malloc tuned for tensor reuse: %s", ok)
    return ok
