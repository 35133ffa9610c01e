"""The batching queue of `s2s serve` on its own, with a stand-in decoder (no model): what closes
a batch, grouping by key, each caller's own results, withdrawal, and draining at shutdown."""

from __future__ import annotations

import asyncio
import threading

import pytest

from seq2seqkit.serve.batcher import Batcher, Closed, QueueFull


class Recorder:
    """A decoder that returns each input's ids reversed and records every batch it got."""

    def __init__(self) -> None:
        self.batches: list[tuple[object, list[list[int]]]] = []
        self.threads: set[str] = set()

    def __call__(self, key, sources):
        self.batches.append((key, [list(s) for s in sources]))
        self.threads.add(threading.current_thread().name)
        return [list(reversed(s)) for s in sources]


def run(batcher: Batcher, scenario):
    async def go():
        batcher.start()
        try:
            return await scenario()
        finally:
            await batcher.close()
    return asyncio.run(go())


def test_concurrent_jobs_of_one_key_share_a_batch_and_get_their_own_results():
    dec = Recorder()
    b = Batcher(dec, max_wait_ms=10_000, max_batch_tokens=16)
    jobs = [[[1, 2]], [[3]], [[4, 5, 6], [7]]]  # 3 + 2 + (4 + 2) = 11 tokens, EOS counted

    async def scenario():
        futures = [b.submit("k", s).future for s in jobs]
        futures.append(b.submit("k", [[8, 9, 10, 11]]).future)  # 5 more: 16 reached, the batch closes at once
        return await asyncio.gather(*futures)

    results = run(b, scenario)
    assert results == [[[2, 1]], [[3]], [[6, 5, 4], [7]], [[11, 10, 9, 8]]]
    assert len(dec.batches) == 1 and b.batches == 1
    assert dec.threads == {"s2s-decode"}  # off the event loop: the one worker thread


def test_a_batch_never_exceeds_the_token_budget_and_keys_stay_apart():
    dec = Recorder()
    b = Batcher(dec, max_wait_ms=50, max_batch_tokens=6)

    async def scenario():
        futures = [b.submit(key, [[i] * 2]).future for i, key in enumerate("aabab")]
        return await asyncio.gather(*futures)

    results = run(b, scenario)
    assert results == [[[i] * 2] for i in range(5)]
    for key, sources in dec.batches:
        assert sum(len(s) + 1 for s in sources) <= 6
        assert all(s[0] in ([0, 1, 3] if key == "a" else [2, 4]) for s in sources)
    assert sorted(len(s) for _, s in dec.batches) == [1, 2, 2]  # a: 2 + 1, b: 2 (3 tokens each)


def test_without_batching_each_job_is_its_own_batch():
    dec = Recorder()
    b = Batcher(dec, batching=False)

    async def scenario():
        return await asyncio.gather(*(b.submit("k", [[i]]).future for i in range(4)))

    assert run(b, scenario) == [[[i]] for i in range(4)]
    assert [len(s) for _, s in dec.batches] == [1, 1, 1, 1]


def test_a_full_queue_refuses_and_a_withdrawn_job_is_not_decoded():
    dec = Recorder()
    b = Batcher(dec, max_wait_ms=10_000, max_queue=2)

    async def scenario():
        first, second = b.submit("k", [[1]]), b.submit("k", [[2]])
        with pytest.raises(QueueFull):
            b.submit("k", [[3]])
        b.withdraw(first)
        first.future.cancel()
        return await second.future

    assert run(b, scenario) == [[2]]
    assert dec.batches == [("k", [[2]])]


def test_close_drains_the_queue_then_refuses():
    dec = Recorder()
    b = Batcher(dec, max_wait_ms=10_000)

    async def scenario():
        futures = [b.submit(k, [[i]]).future for i, k in enumerate("abc")]
        await b.close()  # SIGTERM: no more waiting for company; everything queued is decoded
        with pytest.raises(Closed):
            b.submit("a", [[9]])
        return [f.result() for f in futures]

    assert run(b, scenario) == [[[0]], [[1]], [[2]]]


def test_a_failing_decode_fails_its_callers_and_the_worker_goes_on():
    calls = []

    def decode(key, sources):
        calls.append(key)
        if key == "bad":
            raise RuntimeError("boom")
        return sources

    b = Batcher(decode, max_wait_ms=0)

    async def scenario():
        bad = b.submit("bad", [[1]])
        with pytest.raises(RuntimeError, match="boom"):
            await bad.future
        return await b.submit("good", [[2]]).future

    assert run(b, scenario) == [[2]]
    assert calls == ["bad", "good"]


# ------------------------------------------------------------------ step-level batching
class Steps:
    """A stand-in running batch (the batcher's ``Stream``): an input of n ids finishes after n
    steps with its ids reversed. Records every step's rows (their first ids) and, when
    ``pause_at`` is set, waits before that step until ``go`` is set (``paused`` tells it has)."""

    def __init__(self, log: list, pause_at: int | None = None, fail_at: int | None = None) -> None:
        self.rows: list[list] = []  # [tag, ids, steps done]
        self.log, self.pause_at, self.fail_at = log, pause_at, fail_at
        self.paused, self.go = threading.Event(), threading.Event()
        self.dropped: list = []

    def __len__(self) -> int:
        return len(self.rows)

    def admit(self, sources, tags) -> None:
        self.rows += [[tag, list(s), 0] for s, tag in zip(sources, tags)]

    def step(self):
        if len(self.log) == self.pause_at:
            self.paused.set()
            assert self.go.wait(30)
        if len(self.log) == self.fail_at:
            raise RuntimeError("boom")
        self.log.append(sorted(ids[0] for _, ids, _ in self.rows))
        for row in self.rows:
            row[2] += 1
        done = [(tag, list(reversed(ids))) for tag, ids, n in self.rows if n == len(ids)]
        self.rows = [row for row in self.rows if row[2] < len(row[1])]
        return done

    def drop(self, leave) -> None:
        self.dropped += [ids for tag, ids, _ in self.rows if leave(tag)]
        self.rows = [row for row in self.rows if not leave(row[0])]


def stepper(max_batch_tokens: int = 4096, max_wait_ms: float = 0, beam_keys=(), join: dict | None = None, **stream):
    """A step-level batcher over :class:`Steps` (one log of steps per key); keys in
    ``beam_keys`` cannot step (as beam search) and decode by request with a Recorder."""
    logs: dict = {}
    streams: list[Steps] = []

    def open_stream(key):
        if key in beam_keys:
            return None
        streams.append(Steps(logs.setdefault(key, []), **stream))
        return streams[-1]

    dec = Recorder()
    b = Batcher(dec, max_wait_ms=max_wait_ms, max_batch_tokens=max_batch_tokens, batching="step", open=open_stream,
                **(join or {}))
    return b, logs, streams, dec


async def until(event: threading.Event) -> None:
    while not event.is_set():
        await asyncio.sleep(0.005)


def test_requests_join_the_running_batch_between_steps_and_leave_when_done():
    b, logs, streams, _ = stepper(pause_at=2)  # new requests arrive during the third step
    done_order = []

    async def scenario():
        first = b.submit("k", [[10, 11, 12, 13, 14, 15]])  # 6 steps
        first.future.add_done_callback(lambda _: done_order.append("first"))
        while not streams:
            await asyncio.sleep(0.005)
        await until(streams[0].paused)  # two steps done, the third is starting
        later = [b.submit("k", [[20]]), b.submit("k", [[30, 31, 32], [40, 41]])]
        later[0].future.add_done_callback(lambda _: done_order.append("second"))
        streams[0].go.set()
        results = await asyncio.gather(first.future, *(j.future for j in later))
        return results, [first, *later]

    results, jobs = run(b, scenario)
    assert results == [[[15, 14, 13, 12, 11, 10]], [[20]], [[32, 31, 30], [41, 40]]]
    assert logs["k"] == [[10], [10], [10], [10, 20, 30, 40], [10, 30, 40], [10, 30]]  # joined at step 4, left when done
    assert done_order == ["second", "first"]  # answered as soon as its row finished, not at the batch's end
    assert (b.admissions, b.steps, b.batches) == (2, 6, 0)
    first, second, third = jobs
    assert (first.batch_requests, first.batch_inputs, first.steps, first.mode) == (1, 1, 6, "step")
    assert (second.batch_requests, second.batch_inputs, second.steps) == (3, 4, 1)
    assert (third.batch_requests, third.batch_inputs, third.steps) == (3, 4, 3)
    assert second.decode_ms <= first.decode_ms


def test_with_a_join_fraction_newcomers_join_in_groups_or_after_the_wait():
    """join_fraction 0.5 over 4 running rows: one newcomer waits (1 < 2) until join_wait_steps
    (2) steps have passed; two that wait together join at once; into an empty batch at once."""
    b, logs, streams, _ = stepper(pause_at=1, join={"join_fraction": 0.5, "join_wait_steps": 2})

    async def scenario():
        jobs = [b.submit("k", [[1] * 9, [2] * 9, [3] * 9, [4] * 9])]  # empty batch: starts at once
        while not streams:
            await asyncio.sleep(0.005)
        await until(streams[0].paused)  # before the second step:
        jobs.append(b.submit("k", [[5, 5]]))  # alone: 1 < 0.5 x 4 rows
        streams[0].go.set()
        await jobs[-1].future
        jobs += [b.submit("k", [[6]]), b.submit("k", [[7]])]  # 2 >= 0.5 x 4: at once
        return await asyncio.gather(*(j.future for j in jobs))

    results = run(b, scenario)
    assert results[1:] == [[[5, 5]], [[6]], [[7]]]
    steps = logs["k"]
    assert steps[:5] == [[1, 2, 3, 4]] * 4 + [[1, 2, 3, 4, 5]]  # came during step 2, held steps 3 and 4
    assert 7 in next(rows for rows in steps if 6 in rows)  # 6 and 7 joined together
    # the rule itself: into an empty batch at once; a group of join_fraction x rows; or the wait
    assert b._may_join(1, 0, 0) and b._may_join(2, 4, 0) and b._may_join(1, 4, 2)
    assert not b._may_join(1, 4, 1) and not b._may_join(0, 4, 5)


def test_the_running_batch_stays_within_the_token_budget_and_other_keys_wait_their_turn():
    b, logs, streams, _ = stepper(max_batch_tokens=8, pause_at=1)

    async def scenario():
        jobs = [b.submit("a", [[1, 1, 1, 1]])]  # 5 tokens, 4 steps
        while not streams:
            await asyncio.sleep(0.005)
        await until(streams[0].paused)  # during its second step:
        jobs += [b.submit("a", [[2]]),  # 2 tokens: fits (8)
                 b.submit("a", [[3, 3]]),  # 3 more: over the budget until a row leaves
                 b.submit("b", [[4]]),  # another key: waits for "a" to drain
                 b.submit("a", [[5]])]  # came after "b": does not join the running "a"
        streams[0].go.set()
        return await asyncio.gather(*(j.future for j in jobs))

    assert run(b, scenario) == [[[1, 1, 1, 1]], [[2]], [[3, 3]], [[4]], [[5]]]
    assert logs["a"] == [[1], [1], [1, 2], [1, 3], [3], [5]]  # 3 joins once 2 has left; 5 after b
    assert logs["b"] == [[4]]
    assert len(streams) == 3  # a, then b, then a again: three running batches


def test_searches_that_cannot_step_batch_by_request_and_errors_reach_their_callers():
    b, logs, streams, dec = stepper(beam_keys=("beam",), fail_at=1)

    async def scenario():
        beams = [b.submit("beam", [[i]]) for i in range(3)]
        stepped = b.submit("k", [[7, 8, 9]])
        with pytest.raises(RuntimeError, match="boom"):  # the stream fails at its second step
            await stepped.future
        results = await asyncio.gather(*(j.future for j in beams))
        return results, beams

    results, beams = run(b, scenario)
    assert results == [[[0]], [[1]], [[2]]] and dec.batches == [("beam", [[0], [1], [2]])]
    assert [j.mode for j in beams] == ["request"] * 3


def test_a_withdrawn_request_leaves_the_running_batch():
    b, logs, streams, _ = stepper(pause_at=1)

    async def scenario():
        gone, stays = b.submit("k", [[1, 1, 1, 1, 1]]), b.submit("k", [[2, 2, 2]])
        while not streams:
            await asyncio.sleep(0.005)
        await until(streams[0].paused)
        b.withdraw(gone)  # what a 504 does
        gone.future.cancel()
        streams[0].go.set()
        return await stays.future

    assert run(b, scenario) == [[2, 2, 2]]
    assert logs["k"] == [[1, 2], [1, 2], [2]] and streams[0].dropped == [[1, 1, 1, 1, 1]]  # gone after the step it was in


def test_a_step_level_batch_starts_at_once_and_only_request_level_ones_wait_for_company():
    b, logs, streams, dec = stepper(max_wait_ms=60_000, beam_keys=("beam",))

    async def scenario():
        alone = await asyncio.wait_for(b.submit("k", [[1, 2]]).future, 30)  # no 60 s wait for company
        beams = [b.submit("beam", [[i]]) for i in range(2)]
        await asyncio.sleep(0.05)
        assert not any(j.future.done() for j in beams)  # a request-level batch waits (here: until close)
        await b.close()
        return alone, [j.future.result() for j in beams]

    assert run(b, scenario) == ([[2, 1]], [[[0]], [[1]]])
    assert dec.batches == [("beam", [[0], [1]])]
