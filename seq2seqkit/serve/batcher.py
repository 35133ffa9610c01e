"""Batching across requests: concurrent requests with the same search settings decode together.

Requests wait in a queue; one worker thread, off the event loop (which keeps answering
``/health`` meanwhile), owns the models and decodes. Requests with the same key (model and
search settings) share batches; each caller gets the results of exactly its own inputs. Three
modes (``batching``):

* ``"step"`` (step-level, or continuous, batching, as Orca, TGI and vLLM schedule): the worker
  keeps a running batch of rows and, before every decoding step, admits the requests waiting
  with the running key (within ``max_batch_tokens`` source tokens, counting the rows still
  running); after every step the rows that finished leave, and a request whose inputs have all
  finished is answered at once. So a request neither waits for a batch that started before it
  to end nor for the longest output of its own batch. Only for searches of one path per input
  (greedy, sampling): ``open(key)`` returns None for the others (beam search), which are
  batched as in ``"request"``.
* ``"request"``: the worker takes the oldest request and waits for others of its key until
  ``max_wait_ms`` have passed since it arrived or their tokens reach ``max_batch_tokens``;
  they then decode as one batch, to its end.
* ``"off"``: each request decodes alone, one at a time (the design of OpenNMT-py's server).

A step-level batch starts at once (``max_wait_ms`` is for request-level batches): whoever comes
a moment later joins it at the next step, or, with ``join_fraction`` F > 0, once the inputs
waiting number F x the rows running (or ``join_wait_steps`` steps have passed with someone
waiting): admitting newcomers costs an encoder pass and a merge of every running row's state
whatever their number, so in a busy batch joining in groups makes steps cheaper (on a GPU, where
that cost is host time: BENCHMARKS.md, "Serving on a GPU"). Requests of another key wait until
the running batch has drained; while they wait, requests that came after them do not join it (so
no key waits forever).

Results equal decoding each request alone because search is batch-independent: every input is
encoded and decoded under its own length mask and length cap, and a model's ``merge`` pads what
joining a running batch needs (tests/test_step_batching.py, tests/test_serve_api.py). Sampled
outputs are random draws either way: batched, they come from the same distribution.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Mode = Literal["step", "request", "off"]

# (key, every input of the batch as source ids) -> one result per input, in order
Decode = Callable[[Hashable, list[Sequence[int]]], list[Any]]


class Stream(Protocol):
    """A running batch of one key that inputs join and leave between steps."""

    def __len__(self) -> int:
        """Rows decoding."""

    def admit(self, sources: list[Sequence[int]], tags: list[Any]) -> None:
        """Add inputs (source ids), one tag each."""

    def step(self) -> list[tuple[Any, Any]]:
        """One decoding step of every row: (tag, result) of each input that finished."""

    def drop(self, leave: Callable[[Any], bool]) -> None:
        """Remove the unfinished inputs whose tag ``leave`` is true of."""


# key -> an empty Stream for it, or None where that key's search cannot run step by step
Open = Callable[[Hashable], "Stream | None"]


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already."""


class Closed(Exception):
    """The server is shutting down and takes no new requests."""


@dataclass(eq=False)
class Job:
    key: Hashable
    sources: list[Sequence[int]]
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)
    mode: str = ""  # how it was batched: step, request or off (a beam search request in step mode: request)
    started: float | None = None  # when its decoding began (its batch, or its admission to the running one)
    finished: float | None = None
    batch_requests: int = 0  # requests in the batch it joined (step mode: decoding in its first step, itself included)
    batch_inputs: int = 0  # inputs (rows) in that batch (step mode: in its first step)
    steps: int = 0  # step mode: decoding steps it took part in
    withdrawn: bool = False  # its caller gave up (timeout): not decoded further
    results: list[Any] = field(default_factory=list)
    left: int = 0  # step mode: inputs not finished yet

    @property
    def tokens(self) -> int:
        """Source tokens, EOS included: what a batch is measured in."""
        return sum(len(s) + 1 for s in self.sources)

    @property
    def queue_ms(self) -> float:
        return 1000 * ((self.started or time.perf_counter()) - self.arrived)

    @property
    def decode_ms(self) -> float:
        return 1000 * (self.finished - self.started) if self.finished and self.started else 0.0


class Batcher:
    def __init__(self, decode: Decode, max_wait_ms: float = 5.0, max_batch_tokens: int = 4096,
                 max_queue: int = 64, batching: Mode | bool = "request", open: Open | None = None,
                 join_fraction: float = 0.0, join_wait_steps: int = 4) -> None:
        self.decode, self.open, self.max_wait = decode, open, max_wait_ms / 1000
        self.join_fraction, self.join_wait_steps = join_fraction, join_wait_steps
        self.mode: Mode = {True: "request", False: "off"}.get(batching, batching)  # type: ignore[call-overload]
        if self.mode == "step" and open is None:
            raise ValueError("step-level batching needs open(key)")
        self.max_batch_tokens, self.max_queue = max_batch_tokens, max_queue
        self.pending: deque[Job] = deque()
        self.batches = 0  # request-level batches decoded so far
        self.admissions = 0  # step mode: times new requests joined a running batch (or started one)
        self.steps = 0  # step mode: decoding steps run
        self.last_decode_s = 0.0  # the decoding time of the last batch (step mode: of the last request answered)
        self.closing = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self.closing

    def start(self) -> None:
        """Start the worker thread; results go back to the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._work, name="s2s-decode", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Take no new requests, decode those already queued or running, then stop the worker."""
        with self._cond:
            self.closing = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def retry_after(self) -> int:
        """Seconds a refused client should wait: about the time to decode one batch."""
        return max(1, math.ceil(self.last_decode_s))

    def submit(self, key: Hashable, sources: list[Sequence[int]]) -> Job:
        if self.closing or self._thread is None:
            raise Closed
        with self._cond:
            if len(self.pending) >= self.max_queue:
                raise QueueFull
            job = Job(key, sources, asyncio.get_running_loop().create_future())
            self.pending.append(job)
            self._cond.notify_all()
        return job

    def withdraw(self, job: Job) -> None:
        """Drop a job whose caller gave up: out of the queue, or out of the running batch at its next step."""
        with self._cond:
            job.withdrawn = True
            try:
                self.pending.remove(job)
            except ValueError:
                pass
            self._cond.notify_all()

    # -- the worker thread ----------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self.pending and not self.closing:
                    self._cond.wait()
                if not self.pending:
                    return  # closing, and nothing left
                first = self.pending[0]
            if self.mode == "step":
                try:
                    stream = self.open(first.key)  # type: ignore[misc]
                except Exception as e:  # e.g. settings the model cannot decode: that request fails, the worker goes on
                    self._fail_first(first, e)
                    continue
                if stream is not None:  # it starts at once: whoever comes later joins at the next step
                    self._run_stream(first.key, stream)
                    continue
            with self._cond:
                if self.mode != "off":
                    self._wait_for_company(first)
                if not self.pending or self.pending[0] is not first:  # it was withdrawn meanwhile
                    continue
                batch = self._take_batch(first.key) if self.mode != "off" else [self.pending.popleft()]
            self._decode(batch)

    def _wait_for_company(self, first: Job) -> None:
        """(Holding the lock) until ``max_wait`` after the oldest request came, its key's tokens
        fill a batch, it is withdrawn, or the server closes."""
        while not self.closing and self.pending and self.pending[0] is first \
                and self._tokens_of(first.key) < self.max_batch_tokens:
            remaining = first.arrived + self.max_wait - time.perf_counter()
            if remaining <= 0:
                return
            self._cond.wait(min(remaining, threading.TIMEOUT_MAX))  # longer: OverflowError, the worker would die

    def _tokens_of(self, key: Hashable) -> int:
        return sum(job.tokens for job in self.pending if job.key == key)

    def _take_batch(self, key: Hashable) -> list[Job]:
        """(Holding the lock) the oldest request's batch: requests of its key within the budget."""
        batch, tokens = [], 0
        for job in list(self.pending):
            if job.key == key and (not batch or tokens + job.tokens <= self.max_batch_tokens):
                batch.append(job)
                tokens += job.tokens
        for job in batch:
            self.pending.remove(job)
        return batch

    def _decode(self, batch: list[Job]) -> None:
        sources = [s for job in batch for s in job.sources]
        start = time.perf_counter()
        for job in batch:
            job.started, job.batch_requests, job.batch_inputs = start, len(batch), len(sources)
            job.mode = "off" if self.mode == "off" else "request"
        try:
            results, error = self.decode(batch[0].key, sources), None
        except Exception as e:  # every caller of the batch learns of it; the worker goes on
            results, error = None, e
        end = time.perf_counter()
        self.batches += 1
        self.last_decode_s = end - start
        at = 0
        for job in batch:
            job.finished = end
            self._settle(job, None if results is None else results[at : at + len(job.sources)], error)
            at += len(job.sources)

    def _fail_first(self, first: Job, error: Exception) -> None:
        with self._cond:
            if self.pending and self.pending[0] is first:
                self.pending.popleft()
        first.finished = time.perf_counter()
        self._settle(first, None, error)

    def _admit(self, key: Hashable, budget: int, empty: bool) -> list[Job]:
        """(Holding the lock) the requests of ``key`` that join the running batch now, oldest
        first, within ``budget`` tokens (the first always, into an ``empty`` batch). A batch
        that starts takes all of its key that wait; a running one only those that came before
        the oldest request of another key, so that its key's newcomers cannot keep it running
        while others wait: it drains, and that key comes next."""
        cutoff = None if empty else next((job.arrived for job in self.pending if job.key != key), None)
        taken: list[Job] = []
        for job in self.pending:
            if job.key != key:
                continue
            if (cutoff is not None and job.arrived > cutoff) or (job.tokens > budget and not (empty and not taken)):
                break  # first come, first served within the key too: no later, smaller one jumps the queue
            taken.append(job)
            budget -= job.tokens
        for job in taken:
            self.pending.remove(job)
        return taken

    def _may_join(self, waiting: int, rows: int, held: int) -> bool:
        """Whether the ``waiting`` inputs of the running key join its ``rows`` running rows
        before this step: into an empty batch at once; else once they number ``join_fraction``
        x ``rows``, or after ``held`` = ``join_wait_steps`` steps of waiting."""
        return not rows or (waiting > 0 and (waiting >= self.join_fraction * rows or held >= self.join_wait_steps))

    def _run_stream(self, key: Hashable, stream: Stream) -> None:
        """Step-level batching of ``key`` until no row is left and no request of it waits at the head."""
        running: list[Job] = []
        held = 0  # steps run while requests of this key waited to join
        try:
            while True:
                with self._cond:
                    # join_fraction 0 (the default): newcomers join before every step, uncounted
                    waiting = self.join_fraction and sum(len(job.sources) for job in self.pending if job.key == key)
                    if not self.join_fraction or self._may_join(waiting, len(stream), held):
                        new = self._admit(key, self.max_batch_tokens - sum(j.tokens for j in running), not running)
                        held = 0
                    else:
                        new, held = [], held + (waiting > 0)
                if new:
                    now = time.perf_counter()
                    for job in new:
                        job.started, job.left, job.results = now, len(job.sources), [None] * len(job.sources)
                        job.mode = "step"
                    running += new
                    stream.admit([s for job in new for s in job.sources],
                                 [(job, i) for job in new for i in range(len(job.sources))])
                    self.admissions += 1
                    for job in new:
                        job.batch_requests, job.batch_inputs = len(running), len(stream)
                if any(job.withdrawn for job in running):
                    stream.drop(lambda tag: tag[0].withdrawn)
                    running = [job for job in running if not job.withdrawn]
                if not running:
                    return
                for job in running:
                    job.steps += 1
                finished = stream.step()
                self.steps += 1
                for (job, i), result in finished:
                    job.results[i] = result
                    job.left -= 1
                    if job.left == 0:
                        job.finished = time.perf_counter()
                        self.last_decode_s = job.finished - (job.started or job.finished)
                        self._settle(job, job.results, None)
                running = [job for job in running if job.left]
                if not running:  # drained: the oldest request decides what runs next
                    return
        except Exception as e:  # every request of the running batch learns of it; the worker goes on
            end = time.perf_counter()
            for job in running:
                job.finished = end
                self._settle(job, None, e)

    def _settle(self, job: Job, results: list[Any] | None, error: Exception | None) -> None:
        """Hand a job's results (or error) to its caller, on the event loop."""
        assert self._loop is not None

        def settle() -> None:
            if job.future.done():  # the caller gave up (timeout)
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(results)

        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the event loop is gone: nobody is waiting any more
            pass
