"""`Deadline` behaves as `asyncio.timeout` does, in the cases its callers rely on, and its
scan stops when nothing is armed."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from proxy.deadline import Deadlines


def deadlines() -> Deadlines:
    return Deadlines(asyncio.get_running_loop(), resolution_s=0.01)


async def test_a_block_past_its_deadline_raises_timeout_and_leaves_the_task_uncancelled(
) -> None:
    d = deadlines()
    never = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        async with d.after(0.02) as deadline:
            await never
    assert deadline.expired and len(d) == 0
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # the next await is not cancelled


async def test_a_block_done_in_time_is_disarmed_and_never_fires() -> None:
    d = deadlines()
    async with d.after(0.02) as deadline:
        assert len(d) == 1
        await asyncio.sleep(0)
    assert len(d) == 0
    never = asyncio.get_running_loop().create_future()
    done, _ = await asyncio.wait([never], timeout=0.1)  # well past it: nothing was cancelled
    assert not done and not deadline.expired


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    d = deadlines()
    started = asyncio.get_running_loop().create_future()

    async def inside() -> None:
        async with d.after(10):
            started.set_result(None)
            await asyncio.get_running_loop().create_future()

    task = asyncio.create_task(inside())
    await started
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(d) == 0


async def test_an_outer_cancel_and_the_deadline_together_stay_a_cancellation() -> None:
    d = deadlines()
    started = asyncio.get_running_loop().create_future()

    async def inside() -> None:
        async with d.after(10) as deadline:
            started.set_result(deadline)
            await asyncio.get_running_loop().create_future()

    task = asyncio.create_task(inside())
    deadline = await started
    deadline.expire()  # the deadline's cancel, then one from elsewhere in the same turn
    assert deadline.expired
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelling() == 1  # ours was taken back; the other one stands


async def test_a_block_that_turns_the_timeout_into_another_error_leaves_no_cancel_behind(
) -> None:
    d = deadlines()
    with pytest.raises(LookupError):
        async with d.after(0.01):
            try:
                await asyncio.get_running_loop().create_future()
            except asyncio.CancelledError:
                raise LookupError("the block's own error") from None
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # not cancelled


async def test_one_failing_expiry_does_not_stop_the_scan() -> None:
    d = deadlines()
    loop = asyncio.get_running_loop()

    class Broken:
        when = 0.0

        def expire(self) -> None:
            raise RuntimeError("broken")

    loop.set_exception_handler(lambda loop, context: None)  # the scan's error, on purpose
    try:
        d.arm(Broken())
        fired = False
        with contextlib.suppress(TimeoutError):  # the guard's: the deadline never fired
            async with asyncio.timeout(2):
                try:
                    async with d.after(0.05):
                        await loop.create_future()
                except TimeoutError:
                    fired = True
        assert fired, "the scan stopped at the failing expiry"
    finally:
        loop.set_exception_handler(None)


async def test_many_deadlines_fire_each_at_its_own_time() -> None:
    d = deadlines()
    loop = asyncio.get_running_loop()

    async def wait(delay: float) -> float:
        began = loop.time()
        try:
            async with d.after(delay):
                await loop.create_future()
        except TimeoutError:
            return loop.time() - began
        raise AssertionError("no timeout")

    took = await asyncio.gather(*(wait(x) for x in (0.03, 0.1, 0.2)))
    for delay, t in zip((0.03, 0.1, 0.2), took, strict=True):
        assert delay <= t < delay + 0.5  # late by at most a scan (and a busy host)
    assert len(d) == 0
