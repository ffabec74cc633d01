"""Deadlines: one sweeping timer instead of a loop timer per exchange, with asyncio.timeout's semantics."""

from __future__ import annotations

import asyncio

import pytest

from proxy.routing.deadlines import Deadlines


async def test_a_passed_deadline_raises_timeout_error_within_a_tick():
    dl = Deadlines(tick=0.01)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError):
        with dl.after(0.05):
            await asyncio.sleep(5)
    assert 0.05 <= loop.time() - t0 < 0.5
    assert not dl.live


async def test_moving_a_deadline_is_an_assignment_and_counts():
    dl = Deadlines(tick=0.01)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError):
        with dl.after(0.05) as d:
            d.reschedule(loop.time() + 0.3)          # moved later: survives the first 0.05 s
            await asyncio.sleep(0.15)
            d.reschedule(loop.time() + 0.02)         # moved close: fires soon after
            await asyncio.sleep(5)
    assert 0.17 <= loop.time() - t0 < 0.6


async def test_a_block_that_finishes_in_time_leaves_nothing_behind():
    dl = Deadlines(tick=0.01)
    with dl.after(1.0):
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)
    assert not dl.live and dl._timer is None         # the sweep stopped with nothing to watch


async def test_a_cancellation_from_outside_stays_a_cancellation():
    dl = Deadlines(tick=0.01)

    async def exchange() -> None:
        with dl.after(10):
            await asyncio.sleep(5)

    task = asyncio.create_task(exchange())
    await asyncio.sleep(0.02)
    task.cancel()                                    # the client went away: not a timeout
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not dl.live


async def test_many_exchanges_each_get_their_own_deadline():
    dl = Deadlines(tick=0.01)

    async def exchange(limit: float, work: float) -> str:
        try:
            with dl.after(limit):
                await asyncio.sleep(work)
            return "done"
        except TimeoutError:
            return "timeout"

    got = await asyncio.gather(*(exchange(0.05, 0.2) if i % 2 else exchange(1.0, 0.02) for i in range(20)))
    assert got == ["done" if i % 2 == 0 else "timeout" for i in range(20)]
