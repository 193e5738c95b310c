"""The one retry loop, as a unit: counting, progress, the unreachable-host rule, the events."""

from __future__ import annotations

import threading

import pytest

from halftunes_cli.errors import HTTPStatusError, TransferError
from halftunes_cli.retry import RetryLoop, RetryPolicy

POLICY = RetryPolicy(retries=3, base_seconds=1.0, max_seconds=30.0, jitter=lambda: 1.0)


def unreachable() -> TransferError:
    error = TransferError("could not connect: connection refused")
    error.is_unreachable = True
    return error


def run(loop: RetryLoop, outcomes: list) -> list[int]:
    """Feed the loop one outcome per attempt: None succeeds, an error fails, a tuple
    (error, progressed) fails with progress, "again" asks again at once."""
    tried = []
    for attempt in loop:
        tried.append(attempt.number)
        outcome = outcomes.pop(0)
        if outcome is None:
            return tried
        if outcome == "again":
            continue
        error, progressed = outcome if isinstance(outcome, tuple) else (outcome, False)
        attempt.failed(error, progressed=progressed)
    raise AssertionError("unreachable")


def test_failures_back_off_and_the_last_one_is_raised():
    waits: list[float] = []
    events: list[tuple[float, str]] = []
    loop = RetryLoop(
        POLICY, what="x", sleep=waits.append, on_retry=lambda w, r: events.append((w, r))
    )
    error = HTTPStatusError(503, "http://h/x")
    with pytest.raises(HTTPStatusError):
        run(loop, [error] * 4)
    assert waits == [1.0, 2.0, 4.0]  # three retries, then the fourth failure is raised
    assert events == [(1.0, "HTTP 503"), (2.0, "HTTP 503"), (4.0, "HTTP 503")]


def test_progress_starts_the_count_again_and_again_costs_nothing():
    waits: list[float] = []
    loop = RetryLoop(POLICY, what="x", sleep=waits.append)
    error = TransferError("connection broke")
    outcomes = [error, error, (error, True), error, "again", error, error, None]
    assert run(loop, outcomes) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert waits == [1.0, 2.0, 1.0, 1.0, 2.0, 4.0]


def test_a_host_never_reached_gets_two_attempts_and_one_that_answered_the_policy():
    waits: list[float] = []
    with pytest.raises(TransferError):
        run(
            RetryLoop(POLICY, what="x", sleep=waits.append, has_reached_host=lambda: False),
            [unreachable()] * 5,
        )
    assert waits == [1.0]
    waits.clear()
    loop = RetryLoop(POLICY, what="x", sleep=waits.append, has_reached_host=lambda: True)
    assert run(loop, [unreachable()] * 3 + [None]) == [1, 2, 3, 4]  # a restarted server
    assert waits == [1.0, 2.0, 4.0]


def test_may_retry_tells_whether_a_failure_would_leave_another_attempt():
    loop = RetryLoop(RetryPolicy(retries=1), what="x", sleep=lambda s: None)
    error = HTTPStatusError(503, "http://h/x")
    seen = []
    for attempt in loop:
        seen.append(attempt.may_retry(error))
        if not seen[-1]:
            break
        attempt.failed(error)
    assert seen == [True, False]


def test_retry_after_replaces_the_computed_wait_up_to_its_cap():
    waits: list[float] = []
    loop = RetryLoop(
        RetryPolicy(retries=2, retry_after_cap_seconds=120), what="x", sleep=waits.append
    )
    error = HTTPStatusError(429, "http://h/x")
    for attempt in loop:
        if attempt.number == 3:
            break
        attempt.failed(error, retry_after=7.0 if attempt.number == 1 else 10_000.0)
    assert waits == [7.0, 120.0]


def test_a_stop_cuts_the_wait_short():
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    loop = RetryLoop(
        RetryPolicy(retries=1, base_seconds=30, jitter=lambda: 1.0), what="x", stop=stop
    )
    for attempt in loop:
        if attempt.number == 2:
            break  # reached within 0.05 s, not 30 s: the caller sees its stop and ends
        attempt.failed(TransferError("x"))
    assert stop.is_set()
