"""Batching across requests: concurrent requests with the same search settings decode as one batch.

Requests wait in a queue. A worker takes the oldest one and waits for others with the same key
(model and search settings) until ``max_wait_ms`` have passed since the oldest arrived or their
source tokens reach ``max_batch_tokens``; those requests then decode as one batch in a worker
thread, off the event loop (which keeps answering ``/health`` meanwhile), and each caller gets
the results of exactly its own inputs. Requests of other keys wait for a later batch. With
``batching`` off each request decodes alone, one at a time (the design of OpenNMT-py's server).

Results equal decoding each request alone because search is batch-independent: every input is
encoded and decoded under its own length mask and length cap (tests/test_serve_api.py checks
it). Sampled outputs are random draws either way: batched, they come from the same distribution.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

# (key, every input of the batch as source ids) -> one result per input, in order
Decode = Callable[[Hashable, list[Sequence[int]]], list[Any]]


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
    started: float | None = None  # when its batch began decoding
    finished: float | None = None
    batch_requests: int = 0  # requests in the batch it joined
    batch_inputs: int = 0  # inputs in that batch

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
                 max_queue: int = 64, batching: bool = True) -> None:
        self.decode, self.max_wait = decode, max_wait_ms / 1000
        self.max_batch_tokens, self.max_queue, self.batching = max_batch_tokens, max_queue, batching
        self.pending: deque[Job] = deque()
        self.batches = 0  # batches decoded so far
        self.last_decode_s = 0.0
        self.closing = False
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self.closing

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="s2s-decode")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Take no new requests, decode those already queued, then stop the worker."""
        self.closing = True
        if self._task is None:
            return
        assert self._wakeup is not None and self._executor is not None
        self._wakeup.set()
        await self._task
        self._executor.shutdown(wait=True)

    def retry_after(self) -> int:
        """Seconds a refused client should wait: about the time to decode one batch."""
        return max(1, math.ceil(self.last_decode_s))

    def submit(self, key: Hashable, sources: list[Sequence[int]]) -> Job:
        if self.closing or self._wakeup is None:
            raise Closed
        if len(self.pending) >= self.max_queue:
            raise QueueFull
        job = Job(key, sources, asyncio.get_running_loop().create_future())
        self.pending.append(job)
        self._wakeup.set()
        return job

    def withdraw(self, job: Job) -> None:
        """Drop a job that timed out, if no batch has taken it yet."""
        try:
            self.pending.remove(job)
        except ValueError:
            pass

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self.pending:
                if self.closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = await self._gather()
            if batch:
                await self._decode(batch)

    def _tokens_of(self, key: Hashable) -> int:
        return sum(job.tokens for job in self.pending if job.key == key)

    async def _gather(self) -> list[Job]:
        """The next batch: the oldest request and, with batching, those of its key that came
        until its wait ran out or their tokens filled a batch (at least the oldest request)."""
        assert self._wakeup is not None
        first = self.pending[0]
        if not self.batching:
            return [self.pending.popleft()]
        while not self.closing and self._tokens_of(first.key) < self.max_batch_tokens:
            remaining = first.arrived + self.max_wait - time.perf_counter()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
            if not self.pending or self.pending[0] is not first:  # it timed out meanwhile
                return []
        batch, tokens = [], 0
        for job in list(self.pending):
            if job.key == first.key and (not batch or tokens + job.tokens <= self.max_batch_tokens):
                batch.append(job)
                tokens += job.tokens
        for job in batch:
            self.pending.remove(job)
        return batch

    async def _decode(self, batch: list[Job]) -> None:
        assert self._executor is not None
        sources = [s for job in batch for s in job.sources]
        start = time.perf_counter()
        for job in batch:
            job.started, job.batch_requests, job.batch_inputs = start, len(batch), len(sources)
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.decode, batch[0].key, sources)
        except Exception as e:  # every caller of the batch learns of it; the worker goes on
            results, error = None, e
        end = time.perf_counter()
        self.batches += 1
        self.last_decode_s = end - start
        at = 0
        for job in batch:
            job.finished = end
            if job.future.done():  # the caller gave up (timeout)
                at += len(job.sources)
                continue
            if results is None:
                job.future.set_exception(error)
            else:
                job.future.set_result(results[at : at + len(job.sources)])
            at += len(job.sources)
