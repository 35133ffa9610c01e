"""Training on several processes: PyTorch's torchrun and DistributedDataParallel.

``torchrun --nproc-per-node N -m seq2seqkit train CONFIG`` (or ``s2s train --nproc N CONFIG``,
which runs torchrun's own launcher, ``torch.distributed.run``) starts N processes; torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...) tells each which it is, and
:func:`setup` joins them into one process group: gloo on CPU, NCCL on CUDA (one GPU per
process, ``cuda:LOCAL_RANK``). Without torchrun (or with one process) nothing here changes
training: :class:`Group` is then a group of one whose methods do no communication.

What each process trains on (:meth:`Group.share`): every process computes the batch order one
process would train on (it depends on the seed and the epoch only); an update takes the next
``world_size x training.accumulate_steps`` batches of it and process ``r`` trains on the r-th,
(r + world_size)-th, ... of them (accumulating their gradients, synchronised once, at the last).
Nothing is dropped: in an epoch's last update, which may take fewer batches, a process left
without one runs a batch with weight 0, so that it still joins the gradient exchange.

Rank 0 alone owns the model directory (lock, logs, checkpoints, validation); the others wait
for it in a collective. The model directory must be one that every process can read (on
several machines: a shared file system), since the others read the tokenizers rank 0 wrote and,
on ``--resume``, the checkpoint. A collective that fails (a process died, or hung for longer
than ``training.distributed_timeout_s``) raises :class:`PeerLost`, one line naming what was
under way, instead of a hang.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from .config import TrainingConfig
from .data.tokenizers import Tokenizer, load_tokenizers
from .errors import UserError
from .runtime import capped_threads, usable_cores
from .translate import resolve_device

log = logging.getLogger("seq2seqkit")
T = TypeVar("T")

# What a failed collective says (gloo: "Connection reset by peer", "Timed out waiting ...";
# NCCL: "NCCL error", watchdog timeouts).
_LOST = re.compile(r"gloo|nccl|connection|timed out|timeout|broken pipe|closed", re.IGNORECASE)


class PeerLost(UserError):
    """A collective failed: another process of the run died or stopped answering."""


@dataclass
class Group:
    """This process's place in the run (a group of one without torchrun) and the collectives
    training needs. Every collective is called by all processes at the same point of the loop."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    timeout_s: float = 0.0
    model_dir: str = ""
    device: str = "cpu"  # where collectives' tensors live (NCCL: this process's GPU)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives ----------------------------------------------------------------------------
    @contextmanager
    def talking(self, what: str) -> Iterator[None]:
        """Turn a failed collective inside into :class:`PeerLost`, naming ``what`` was under way."""
        try:
            yield
        except (RuntimeError, dist.DistError) as e:
            if not self.enabled or not (isinstance(e, dist.DistError) or _LOST.search(str(e))):
                raise
            cause = re.sub(r"^\[[^\]]*\]\s*", "", str(e).strip()).split("\n")[0].split(". ")[0]
            raise PeerLost(
                f"process {self.rank} of {self.world_size}: lost the other processes of the run during {what} "
                f"({cause}): one of them died or hung (each waits at most training.distributed_timeout_s="
                f"{self.timeout_s:g} s); its own log says why. Checkpoints already written are kept: continue with "
                f"'s2s train --resume {self.model_dir}'") from e

    def sum(self, value: torch.Tensor, what: str) -> torch.Tensor:
        """``value`` summed over all processes (a new tensor; ``value`` itself when alone)."""
        if not self.enabled:
            return value
        total = value.detach().clone()
        with self.talking(what):
            dist.all_reduce(total)
        return total

    def agreed_signal(self, requested: str | None) -> str | None:
        """The stop signal (``SIGTERM``, ``SIGINT``) that any process has received, the same
        answer on all of them, so that they all stop after the same update."""
        if not self.enabled:
            return requested
        number = torch.tensor([int(signal.Signals[requested]) if requested else 0], device=self.device)
        with self.talking("the agreement on stopping"):
            dist.all_reduce(number, op=dist.ReduceOp.MAX)
        return signal.Signals(int(number)).name if int(number) else None

    def barrier(self, what: str) -> None:
        if self.enabled:
            with self.talking(what):
                dist.barrier()

    def broadcast(self, obj: T, what: str) -> T:
        """Rank 0's ``obj`` on every process (pickled)."""
        if not self.enabled:
            return obj
        box = [obj]
        with self.talking(what):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any, what: str) -> list[Any] | None:
        """Every process's ``obj``, in rank order, on rank 0 (None on the others; ``[obj]`` alone)."""
        if not self.enabled:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        with self.talking(what):
            dist.gather_object(obj, out, dst=0)
        return out

    def on_main(self, fn: Callable[[], T], what: str) -> T | None:
        """``fn()`` on rank 0 while the others wait; its result there (None elsewhere). A user
        error on rank 0 is raised on every process, with the same one-line message, so that no
        process waits for one that has already given up."""
        if not self.enabled:
            return fn()
        result, failure = None, None
        if self.is_main:
            try:
                result = fn()
            except UserError as e:  # ConfigError and DataError are UserErrors
                failure = e
        message = self.broadcast(None if failure is None else str(failure), what)
        if failure is not None:
            raise failure
        if message is not None:
            raise UserError(message)
        return result

    # -- the model and the data -----------------------------------------------------------------
    def wrap(self, model: torch.nn.Module, forward: Callable[..., Any], device: torch.device) -> torch.nn.Module:
        """``forward(model, *args)`` as a module: DistributedDataParallel over it when there are
        several processes. DDP synchronises the gradients of what runs inside its forward, so the
        whole training computation (teacher forcing included) goes through it, not only
        ``model.forward``."""
        step = _Forward(model, forward)
        if not self.enabled:
            return step
        ids = [device.index] if device.type == "cuda" else None
        # No buffers to send at each forward: the models' buffers (positions) are constants.
        return torch.nn.parallel.DistributedDataParallel(step, device_ids=ids, forward_sync_buffers=False)

    def synced(self, module: torch.nn.Module, sync: bool) -> Any:
        """Context for one micro-step: gradients are exchanged only at the update's last one
        (``sync``); before it they accumulate locally (DDP's ``no_sync``)."""
        if self.enabled and not sync:
            return module.no_sync()  # type: ignore[operator]
        return nullcontext()

    def share(self, num_batches: int, start: int, accumulate: int) -> tuple[list[int], int]:
        """The update that starts at batch ``start`` of an epoch of ``num_batches``: this
        process's batches of it (positions in the epoch's order; micro-step k of rank r is
        ``start + k * world_size + r``) and how many batches the update takes in all (the
        next ``world_size * accumulate``, fewer at the end of the epoch)."""
        taken = min(self.world_size * accumulate, num_batches - start)
        return list(range(start + self.rank, start + taken, self.world_size)), taken

    def updates_per_epoch(self, num_batches: int, accumulate: int) -> int:
        per_update = self.world_size * accumulate
        return -(-num_batches // per_update)

    # -- random states ---------------------------------------------------------------------------
    def seed(self, seed: int, step: int) -> None:
        """Seed the RNGs of a process other than rank 0 from (seed, rank, step), so that its
        dropout and sampling draws differ from the other processes' (rank 0 keeps the stream a
        single process has). The model is built before this, under the common seed."""
        if self.rank == 0:
            return
        state = np.random.SeedSequence([seed, self.rank, step]).generate_state(2)
        random.seed(int(state[0]))
        torch.manual_seed(int(state[1]))

    def own_rng(self, saved: dict[str, Any], per_rank: list[dict[str, Any]] | None) -> dict[str, Any] | None:
        """The RNG states this process resumes with: its own from a run of as many processes,
        else rank 0's saved ones on rank 0 and None (seed it: :meth:`seed`) on the others."""
        if per_rank is not None and len(per_rank) == self.world_size:
            return per_rank[self.rank]
        return saved if self.rank == 0 else None


class _Forward(torch.nn.Module):
    """``fn(model, *args)`` as a module's forward (see :meth:`Group.wrap`)."""

    def __init__(self, model: torch.nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *args: Any) -> Any:
        return self.fn(self.model, *args)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value is not None else default
    except ValueError:
        raise UserError(f"environment variable {name}={value!r}: expected a whole number (torchrun sets it)") from None


def setup(tc: TrainingConfig, model_dir: str | Path) -> tuple[Group, torch.device]:
    """This process's :class:`Group` and device. Under torchrun with more than one process it
    joins the process group (gloo on CPU, NCCL on CUDA: ``cuda:LOCAL_RANK``; once per process);
    on CPU it gives each process its share of the cores (``training.num_threads`` if set, else
    the usable cores divided among the processes of this machine); processes other than rank 0
    log warnings only."""
    device = resolve_device(tc.device)
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Group(timeout_s=tc.distributed_timeout_s, model_dir=str(model_dir)), device
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process {rank}: local rank {local_rank} has no GPU of its own ({torch.cuda.device_count()} "
                            f"visible): start at most one process per GPU (--nproc-per-node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    group = Group(rank, world, local_world, tc.distributed_timeout_s, str(model_dir), str(device))
    if not dist.is_initialized():
        with group.talking("the start (joining the other processes)"):
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                    timeout=timedelta(seconds=tc.distributed_timeout_s))
    elif dist.get_world_size() != world:
        raise UserError(f"a process group of {dist.get_world_size()} processes is already set up, "
                        f"but WORLD_SIZE says {world}")
    if device.type == "cpu":
        torch.set_num_threads(capped_threads(tc.num_threads) if tc.num_threads else max(1, usable_cores() // local_world))
    if rank:
        log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
    log.info("distributed training: %d processes (%s), %d on this machine, %d thread%s each", world,
             dist.get_backend(), local_world, torch.get_num_threads(), "s" * (torch.get_num_threads() != 1))
    return group, device


def shared_tokenizers(model_dir: Path, group: Group) -> tuple[Tokenizer, Tokenizer]:
    """The tokenizers rank 0 trained and wrote, as another process reads them."""
    if not (model_dir / "tokenizers.json").is_file():
        raise UserError(f"process {group.rank}: {model_dir}/tokenizers.json, which rank 0 wrote, is not visible to this "
                        f"process: every process must see the model directory (output_dir; on several machines, a "
                        f"shared file system)")
    return load_tokenizers(model_dir)


def shutdown() -> None:
    """Leave the process group (at the end of a distributed ``s2s train``), all processes
    together: one that tore its connections down while another still used them could abort
    at exit (gloo's threads), so they meet at a barrier first."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def leave(status: int) -> NoReturn:
    """End a process of a distributed run with ``status`` once its work is saved and said:
    output flushed, then ``os._exit``, skipping the interpreter's teardown. Tearing down
    destroys gloo's and the rendezvous store's C++ threads, and about one resumed run in four
    under load aborted there ("terminate called without an active exception", SIGABRT), which
    torchrun reports as the whole run failing although its checkpoint and log were complete."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m seq2seqkit ARGV`` in ``nproc`` processes on this machine through
    torchrun's launcher (``torch.distributed.run``, standalone rendezvous on a free port);
    returns the exit status: 0, or that of the first process that failed (143 after SIGTERM,
    130 after SIGINT, 2 after an error)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # each process's share of the cores (torchrun would set 1 and say so; setup() sets the same share)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // nproc)))
    try:
        run(parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "seq2seqkit", *argv]))
    except ChildFailedError as e:
        _, failure = e.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
    except SignalException as e:  # the launcher was signalled: the processes were, too, and saved
        return 128 + int(e.sigval)
    return 0
