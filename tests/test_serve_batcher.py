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
