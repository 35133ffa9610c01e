"""Process-level settings that make PyTorch on CPU fast.

glibc's allocator hands every block above 128 KiB–32 MiB (its adaptive mmap threshold) back to
the kernel when freed, so a training step that allocates and frees the same activation tensors
each time pays a page fault for every 4 KiB page of them, over and over. On a 2-core machine
that was a third of a Transformer training step (dropout masks, residual adds and gradient
buffers spent their time faulting pages in, not computing). Keeping freed memory in the
process makes the next step reuse it: 2.66 s -> 1.79 s per 4k-token Multi30k Transformer step
on 2 cores (``python bench/profile_step.py transformer --threads 2 [--glibc-default-malloc]``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_configured = False


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30,
                      top_pad: int = 64 << 20) -> bool:
    """Tell glibc malloc to serve blocks up to ``mmap_threshold`` from the heap and to keep up to
    ``trim_threshold`` bytes of freed heap instead of returning it to the kernel.

    Peak memory is unchanged (freed blocks are reused, not added to); what changes is that memory
    stays mapped between steps. Returns whether the settings were applied: False off glibc (macOS,
    Windows, musl), where this is a no-op. Idempotent.
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
        (_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold), (_M_TOP_PAD, top_pad)))
    _configured = ok
    log.debug("glibc malloc tuned for tensor reuse: %s", ok)
    return ok
