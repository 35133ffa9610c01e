"""Process-level settings that make PyTorch on CPU fast: malloc tuning and the thread policy.

They change the whole process, so the library never applies them by itself: the ``s2s`` command
calls :func:`configure_process` before any command runs, and a script opts in by calling it
first thing (before ``import torch``, whose OpenMP runtime reads its settings once, at load).

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
(``training.release_memory_above``; ``python bench/memory.py train``; BENCHMARKS.md, "Memory").
jemalloc fragments far less than glibc's heap, so the commands that train restart themselves on
it where the system has it (:func:`run_under_jemalloc`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import math
import os
import resource
import sys
import time
from dataclasses import dataclass
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


@functools.cache
def jemalloc() -> ctypes.CDLL | None:
    """The process's malloc if it is jemalloc (preloaded: ``LD_PRELOAD=.../libjemalloc.so.2``),
    found by its ``mallctl`` among the process's symbols; None under glibc's."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        process = ctypes.CDLL(None)
    except OSError:
        return None
    mallctl = getattr(process, "mallctl", None)
    if mallctl is None:
        return None
    mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p,
                        ctypes.c_size_t]
    mallctl.restype = ctypes.c_int
    return process


def jemalloc_get(name: str, kind: type = ctypes.c_ssize_t) -> int | None:
    """A jemalloc setting or statistic (``mallctl`` read), None without jemalloc or on error."""
    je = jemalloc()
    if je is None:
        return None
    value, size = kind(), ctypes.c_size_t(ctypes.sizeof(kind))
    return None if je.mallctl(name.encode(), ctypes.byref(value), ctypes.byref(size), None, 0) else value.value


def _jemalloc_set(je: ctypes.CDLL, name: str, value: int) -> bool:
    v = ctypes.c_ssize_t(value)
    return je.mallctl(name.encode(), None, None, ctypes.byref(v), ctypes.sizeof(v)) == 0


JEMALLOC_ALL_ARENAS = 4096  # MALLCTL_ARENAS_ALL
ALLOCATOR_ENV = "S2S_ALLOCATOR"  # auto (default) | jemalloc | system
_PRELOADED_ENV = "_S2S_JEMALLOC_PRELOADED"  # set in the re-executed program: never exec twice


def find_jemalloc() -> str | None:
    """The system's jemalloc shared library (Debian: ``apt-get install libjemalloc2``), None if absent."""
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.util.find_library("jemalloc")


def run_under_jemalloc() -> None:
    """Run this program under jemalloc, if the system has it: re-execute the same command line
    (``sys.orig_argv``, interpreter options included) with jemalloc in ``LD_PRELOAD``. Returns
    only where nothing is to be done: already under jemalloc, ``S2S_ALLOCATOR=system``, no jemalloc
    on the system, not Linux, or the exec failed (a warning then; the run goes on under glibc).

    Why: glibc's heap fragments over a training run (batches differ in shape), so resident memory
    grows with the run's length, and releasing it costs speed; jemalloc's does not grow that way
    (two epochs of the Multi30k Transformer: 1.50x the first updates' peak against 2.73x, at 8.6%
    less CPU per token; BENCHMARKS.md, "Memory"). An allocator is chosen when a process starts, so
    the only way to switch is to start again: PyTorch's own CPU launcher
    (``python -m torch.backends.xeon.run_cpu --enable-jemalloc``) does the same. Call it before
    anything else happens in the process (the ``s2s`` command does, for the commands that train);
    torchrun's workers inherit the environment, so they run under jemalloc too."""
    choice = os.environ.get(ALLOCATOR_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "jemalloc", "system"):
        raise ValueError(f"{ALLOCATOR_ENV}={os.environ[ALLOCATOR_ENV]!r}: expected auto, jemalloc or system")
    if choice == "system" or os.environ.get(_PRELOADED_ENV) or jemalloc() is not None:
        return
    lib = find_jemalloc()
    if lib is None:
        if choice == "jemalloc":
            log.warning("%s=jemalloc: no jemalloc library on this system (Debian: apt-get install libjemalloc2); "
                        "running on the system's malloc", ALLOCATOR_ENV)
        return
    env = dict(os.environ, **{_PRELOADED_ENV: "1"})
    env["LD_PRELOAD"] = ":".join(x for x in (lib, os.environ.get("LD_PRELOAD", "")) if x)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError as e:
        log.warning("could not restart under jemalloc (%s); running on the system's malloc", e)


def allocator() -> str:
    """The allocator this process runs on: ``jemalloc`` or ``system``."""
    return "jemalloc" if jemalloc() is not None else "system"


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

    Under jemalloc (preloaded), the same idea: freed pages are kept for reuse (its dirty and
    muzzy decay off), unless ``MALLOC_CONF`` already says how jemalloc should run. jemalloc's size
    classes fragment far less than glibc's heap: over two epochs of the Multi30k Transformer it
    held 1.50x the first updates' peak without ever releasing, against 2.73x for glibc with this
    setting, and spent 8.6% less CPU per token (BENCHMARKS.md, "Memory", 2026-11-26).

    Returns whether the settings were applied: False off glibc and jemalloc (macOS, Windows,
    musl), where this is a no-op. Idempotent.
    """
    global _configured
    if _configured:
        return True
    je = jemalloc()
    if je is not None:
        ok = True
        if "MALLOC_CONF" not in os.environ:
            narenas = jemalloc_get("arenas.narenas", ctypes.c_uint) or 0
            ok = all(_jemalloc_set(je, f"arenas.{kind}_decay_ms", -1) for kind in ("dirty", "muzzy"))
            for i in range(narenas):  # the arenas made before this call (uninitialised ones refuse: no matter)
                for kind in ("dirty", "muzzy"):
                    _jemalloc_set(je, f"arena.{i}.{kind}_decay_ms", -1)
        _configured = ok
        log.debug("jemalloc keeps freed pages: %s", ok)
        return ok
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, trim_threshold), (_M_TOP_PAD, top_pad)))
    _configured = ok
    log.debug("glibc malloc tuned for tensor reuse: %s", ok)
    return ok


# ------------------------------------------------------------------------------ threads
def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def capped_threads(requested: int, setting: str = "training.num_threads") -> int:
    """``requested`` threads, or the cores this process may use (:func:`usable_cores`) where it
    asks for more, said once in the log. torch starts every thread it is asked for, and threads
    beyond the cores spin waiting for each other: ``s2s train configs/g2p-quick.yaml
    training.num_threads=1000 training.max_steps=2`` on 2 cores (beside a one-thread training) had
    not finished its 2 updates after 10 minutes; with ``training.num_threads=1`` they took seconds."""
    cores = usable_cores()
    if requested <= cores:
        return requested
    if (setting, requested) not in _said_capped:  # distributed set-up and the trainer both ask
        _said_capped.add((setting, requested))
        log.warning("%s=%d: this process may use %d core%s; training with %d thread%s (threads beyond the "
                    "cores only wait for each other)", setting, requested, cores, "s" * (cores != 1), cores,
                    "s" * (cores != 1))
    return cores


_said_capped: set[tuple[str, int]] = set()


class FreeCores:
    """How many cores the other programs left to this process between two readings: the busy time
    of its cores in ``/proc/stat`` (user, system, interrupts, and steal: time a hypervisor gave
    to another machine) less this process's own CPU time. Reading it costs no waiting, so a loop
    can take one reading per interval; ``reading()`` is None where ``/proc/stat`` is missing."""

    STAT = Path("/proc/stat")
    _BUSY = (1, 2, 3, 6, 7, 8)  # user nice system irq softirq steal (idle 4, iowait 5 are free)

    def __init__(self) -> None:
        try:
            self.cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        except (AttributeError, OSError):
            self.cpus = set()
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, float] | None:
        """(wall clock, busy core-seconds of our cores, this process's CPU seconds)."""
        try:
            lines = self.STAT.read_text().splitlines()
        except OSError:
            return None
        busy = 0
        for line in lines:
            fields = line.split()
            if fields and fields[0] in self.cpus:
                busy += sum(int(fields[i]) for i in self._BUSY if i < len(fields))
        return time.monotonic(), busy / self._tick, time.process_time()

    def reading(self) -> float | None:
        """Free cores, on average, since the previous reading (or since construction)."""
        now, last = self._sample(), self._last
        self._last = now
        if now is None or last is None or now[0] - last[0] <= 0 or not self.cpus:
            return None
        wall = now[0] - last[0]
        others = max(0.0, (now[1] - last[1]) - (now[2] - last[2])) / wall
        return max(0.0, min(float(usable_cores()), len(self.cpus) - others))


# libgomp's turns of spinning at a barrier before its thread sleeps (its default: 300,000).
SPIN_COUNT = 1000


@dataclass
class ProcessSettings:
    """What :func:`configure_process` applied."""

    spin_count: int | None  # GOMP_SPINCOUNT set here (None: the user's OMP_WAIT_POLICY/GOMP_SPINCOUNT kept)
    spin_applies: bool  # False if it was set after torch had loaded its OpenMP runtime: too late
    follow_free_cores: bool  # training's thread count follows the free cores (no OMP_NUM_THREADS)
    malloc_tuned: bool
    onednn_cache: int | None = None  # ONEDNN_PRIMITIVE_CACHE_CAPACITY set here (None: the user's kept)


_process: ProcessSettings | None = None
ONEDNN_CACHE_CAPACITY = 64  # see configure_process


def process_settings() -> ProcessSettings | None:
    """The settings :func:`configure_process` applied in this process (None: it was not called)."""
    return _process


def threads_spin() -> bool:
    """Whether torch's OpenMP threads spin their default 300,000 turns at a barrier, as far as the
    environment tells (OpenMP reads it once, when torch loads)."""
    if _process is not None and not _process.spin_applies:
        return True
    return "GOMP_SPINCOUNT" not in os.environ and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE"


def configure_process(malloc: bool = True, follow_free_cores: bool = True) -> ProcessSettings:
    """Apply the process-wide settings the ``s2s`` command runs with; call it first thing in a
    script, before ``import torch``, to get the same. Idempotent: later calls return the first
    call's settings. What the environment already sets is kept.

    * OpenMP threads spin briefly, then sleep, while they wait at a barrier
      (``GOMP_SPINCOUNT=1000``). PyTorch's OpenMP runtime (GNU libgomp in the Linux wheels) by
      default spins 300,000 turns first, milliseconds. A training step is thousands of small
      parallel regions, and when another program holds a core, the thread a barrier waits for is
      off the CPU while its partner spins away the time it could have run in: the demo's
      training fell from about 14,400 to 250 target tokens/s beside two CPU-bound programs on 2
      cores, spending 5-15x the CPU time per token. Sleeping at once (``OMP_WAIT_POLICY=PASSIVE``)
      cured that but cost speed where nothing else runs, since the next region starts within
      microseconds: run at real-time priority (our stand-in for an idle machine), passive
      training made 8,700-11,700 target tokens/s against 12,000-14,000 with the default spin,
      and 1,000 turns (tens of microseconds) 11,600-14,200 (``bench/busy.py``'s worker). Read
      once, when torch loads: set later, it changes nothing, and a warning says so.
    * ``follow_free_cores``: training (with ``training.num_threads`` unset, and no
      ``OMP_NUM_THREADS``) uses as many threads as other programs leave cores free, checked as
      it runs (:class:`CoreWatch`): one thread beside a busy program on 2 cores trains as fast
      as ``training.num_threads=1``, and an idle machine gets all its cores back. Programs that
      take whatever CPU is idle count as busy, so beside them training keeps fewer threads than
      a fair share would give it. Set ``training.num_threads`` for a fixed count (a run's float
      arithmetic then does not depend on the machine's load).
    * ``malloc``: :func:`keep_freed_memory` (glibc malloc keeps freed blocks for reuse).
    * oneDNN's primitive cache holds ``ONEDNN_CACHE_CAPACITY`` entries (its default: 1,024).
      Matrix multiplies in bf16 (and fp16) on a CPU run through oneDNN, which builds a primitive,
      with its buffers, for every new shape and keeps the last 1,024; a training batch brings a
      new shape at almost every update, so the cache only grows. It held about 420 MiB of a
      Multi30k Transformer run in bf16 (one epoch, one thread, jemalloc: 2,340 MiB peak with
      1,024 entries, 1,920 with 64, 1,901 with none; CPU per token +1.2% with 64, +3.1% with
      none, one run each; ``bench/memory.py``). fp32 runs do not use it.
    """
    global _process
    if _process is not None:
        return _process
    spin, applies = None, True
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        spin, applies = SPIN_COUNT, "torch" not in sys.modules
        os.environ["GOMP_SPINCOUNT"] = str(spin)
        if not applies:
            log.warning("configure_process: torch was imported first, so its OpenMP threads keep spinning "
                        "while they wait; call configure_process() before importing torch")
    follow = follow_free_cores and "OMP_NUM_THREADS" not in os.environ
    cache = None
    if not {"ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY"} & os.environ.keys():
        cache = ONEDNN_CACHE_CAPACITY
        os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(cache)  # read when oneDNN first builds one
    _process = ProcessSettings(spin, applies, follow, malloc and keep_freed_memory(), cache)
    log.debug("process settings: %s", _process)
    return _process


class CoreWatch:
    """Compares torch's threads with the cores the other programs leave free, while a loop runs:
    each ``check`` is a clock comparison, and ``first`` seconds after construction, then every
    ``every`` seconds, a reading of :class:`FreeCores` (no waiting). With fewer cores free than
    threads, it says so once in the log, naming ``setting`` (e.g. ``training.num_threads``), the
    setting that helps; with ``adapt`` (the caller leaves the thread count to the toolkit) and
    :func:`configure_process` applied with ``follow_free_cores``, it sets the thread count to the
    free cores instead, down and up again (never above the count of its first check)."""

    def __init__(self, setting: str, every: float = 30.0, first: float = 1.0, enabled: bool = True,
                 adapt: bool = False) -> None:
        self.setting, self.every, self.enabled = setting, every, enabled
        self.adapt = adapt and _process is not None and _process.follow_free_cores
        self.probe = FreeCores() if enabled else None
        self._due = time.monotonic() + first
        self.warned = False
        self.most = 0  # the thread count at the first check: the ceiling when threads come back

    def check(self, threads: int) -> None:
        if not self.enabled or (self.warned and not self.adapt) or time.monotonic() < self._due:
            return
        self._due = time.monotonic() + self.every
        free = self.probe.reading() if self.probe else None
        if free is None:
            return
        self.most = self.most or threads
        fits = max(1, min(self.most, usable_cores(), math.floor(free + 0.5)))
        if self.adapt and fits != threads:
            import torch

            torch.set_num_threads(fits)
            log.debug("%.1f cores free: %d threads", free, fits)
        if fits >= threads or self.warned:
            return
        self.warned = True
        busy = f"other programs are using the CPU: {free:.1f} of {usable_cores()} cores free for {threads} threads"
        slow = "threads that wait for each other's cores slow each other down"
        if self.adapt:
            log.warning("%s: training goes on with %d while they run, as %s (%s fixes the count)",
                        busy, fits, slow, self.setting)
        elif threads_spin():
            log.warning("%s: %s, and spinning while they wait can make training many times slower; set %s=%d, "
                        "or GOMP_SPINCOUNT=%d before torch loads (s2s sets it; a script calls "
                        "seq2seqkit.runtime.configure_process() before importing torch)",
                        busy, slow, self.setting, fits, SPIN_COUNT)
        else:
            log.warning("%s: %s; %s=%d is faster while they run", busy, slow, self.setting, fits)


# ------------------------------------------------------------------------------ memory
def release_freed_memory() -> bool:
    """Give the pages of all freed heap blocks back to the kernel (glibc ``malloc_trim(0)``, which
    also releases whole free pages in the middle of the heap, not only at its top).

    Under :func:`keep_freed_memory` the heap keeps every page it ever touched: a phase that
    allocates differently shaped tensors than the training step (validation's decoding and its
    batches) lands partly in fresh memory and would otherwise stay resident for the rest of the
    run, on top of the step's own heap. Trimming at the switch between such phases costs one
    round of page faults for the blocks reused afterwards (about one update's worth), not one per
    update. Under jemalloc: its ``arena.<all>.purge``. Returns whether it was done (False
    elsewhere, where this is a no-op)."""
    je = jemalloc()
    if je is not None:
        return je.mallctl(f"arena.{JEMALLOC_ALL_ARENAS}.purge".encode(), None, None, None, 0) == 0
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


def peak_resident_mib() -> float | None:
    """This process's peak resident memory so far, MiB (``ru_maxrss``); None where unknown."""
    try:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, AttributeError):
        return None
    return peak / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS, KiB on Linux


class HeapBound:
    """Keeps a training process's resident memory near ``ceiling`` times the peak of its first
    ``warmup`` updates (``training.release_memory_above``).

    Whatever the allocator settings, the heap fragments over a run: batches differ in shape, so a
    step's blocks do not fit the holes the previous step left, and the pages of those holes stay
    resident. Measured on the Multi30k Transformer (bf16, one thread; bench/memory.py): 2.0 GB
    after the first updates, 4.0-4.1 GB after 80 with either glibc's default or
    :func:`keep_freed_memory`, 5.8 GB in the third epoch, while ``malloc_trim`` at update 80 left
    0.9 GB: the rest was free heap. So after each update, once resident memory passes the limit,
    the freed heap is given back (:func:`release_freed_memory`), instead of the heap growing for
    the rest of the run.

    The limit trades memory for speed; it is not a hard cap. Resident memory after an update is
    the update's own peak (the kept heap does not shrink within it), and the heap grows in jumps
    (0.1-0.6 GB: an update whose largest blocks, the logits and their gradients, fit no free
    hole), so the peak passes the limit by up to one jump. A release costs page faults: the next
    update faults 1.1-1.4 GB back in (0.3-0.6 s CPU on a 1.2-1.6 s update), and within two or
    three updates batches of other shapes have made most of the heap resident again. With glibc
    and :func:`keep_freed_memory`, over two epochs, 1.5x released 83 times in 268 updates, held
    the run at 1.91x and cost 28% more CPU per token than never releasing (2.73x). Under jemalloc
    the Multi30k Transformer's heap stays near 1.4x by itself, and the SAMSum copy model's grew
    without end (BENCHMARKS.md, "Memory", 2026-11-26)."""

    def __init__(self, warmup: int = 10, ceiling: float = 1.5, enabled: bool = True) -> None:
        self.warmup, self.ceiling, self.enabled = warmup, ceiling, enabled
        self.updates, self.releases = 0, 0
        self.peak: int | None = None  # the first updates' peak RSS (bytes)
        self.limit: int | None = None  # ceiling x peak

    def release(self) -> None:
        """Give the freed heap back now (between phases of different shapes, e.g. validation)."""
        if self.enabled:
            release_freed_memory()

    def after_update(self) -> None:
        self.updates += 1
        if not self.enabled:
            return
        if self.limit is None:
            if self.updates >= self.warmup and (peak := peak_resident_mib()) is not None:
                self.peak = int(peak * 2**20)
                self.limit = int(self.ceiling * self.peak)
                log.info("memory: peak %d MiB after %d updates; freed heap is released above %d MiB",
                         self.peak >> 20, self.updates, self.limit >> 20)
            return
        rss = resident_bytes()
        if rss is not None and rss > self.limit and release_freed_memory():
            self.releases += 1
