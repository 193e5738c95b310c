"""The one retry policy and the one retry loop: which answers are transient, jittered
exponential back-off, Retry-After, when to give up.

Every caller that tries again (data, upload and download tasks, the iTunes client, the job
planner's lookups) writes only what one attempt is:

    for attempt in RetryLoop(policy, what=url, stop=stop_event, on_retry=tell):
        try:
            return send()
        except TransferError as error:
            attempt.failed(error)

and the loop decides the rest: count the failure (an attempt that made progress starts the
count again), give up (raise the error) or log, tell `on_retry(wait_seconds, reason)` and
sleep, which a stop request (pause, cancel) cuts short. An iteration that reports no
failure and does not leave the loop simply goes again at once (a restart from 0).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .errors import HTTPStatusError, TransferError
from .headers import parse_retry_after

__all__ = [
    "RETRYABLE_STATUSES",
    "Attempt",
    "RetryLoop",
    "RetryPolicy",
    "parse_retry_after",
    "sleep_unless_stopped",
]

log = logging.getLogger(__name__)

# 408 and 429 are the client-side statuses worth another try; the rest are server trouble.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

# A server may ask for a long pause; we honour it up to this many seconds per wait.
RETRY_AFTER_CAP_SECONDS = 120.0

# A host never reached in this transfer (refused, unknown) gets this many attempts, not the
# whole policy: a dead address should fail in a second, not in a minute.
UNREACHED_HOST_ATTEMPTS = 2


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` further attempts after the first; waits grow base, 2x base, 4x base ...

    Each computed wait is jittered down by up to 25% (so many clients do not return at the
    same instant) and capped at `max_seconds`. A `Retry-After` from the server replaces the
    computed wait, capped at `retry_after_cap_seconds`.
    """

    retries: int = 5
    base_seconds: float = 0.5
    max_seconds: float = 30.0
    retry_after_cap_seconds: float = RETRY_AFTER_CAP_SECONDS
    jitter: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def gives_up_after(self, failures: int) -> bool:
        """True when `failures` failed attempts in a row leave no attempt to make."""
        return failures > self.retries

    def delay_seconds(self, failures: int, retry_after_seconds: float | None = None) -> float:
        """How long to wait before the next attempt, after `failures` (>= 1) failures."""
        if retry_after_seconds is not None:
            return max(0.0, min(retry_after_seconds, self.retry_after_cap_seconds))
        exponent = max(failures, 1) - 1
        delay = min(self.max_seconds, self.base_seconds * 2**exponent)
        return float(delay * (0.75 + 0.25 * self.jitter()))


def sleep_unless_stopped(seconds: float, stop: threading.Event | None) -> bool:
    """Sleep; True when a stop request cut the sleep short (the caller then stops)."""
    if stop is None:
        time.sleep(seconds)
        return False
    return stop.wait(seconds)


def short_reason(error: BaseException | None) -> str:
    """What made a retry necessary, in a few words (for a progress bar)."""
    if isinstance(error, HTTPStatusError):
        return f"HTTP {error.status}"
    text = str(error or "error")
    return text.rsplit(": ", 1)[-1] if ": " in text else text


class Attempt:
    """One try. Tell the loop how it failed with `failed`; ask `may_retry` beforehand when a
    caller would rather keep a last answer than raise (a data task's last 503)."""

    def __init__(self, loop: RetryLoop, number: int):
        self._loop = loop
        self.number = number
        self.error: BaseException | None = None
        self.retry_after: float | None = None
        self.progressed = False

    def failed(
        self, error: BaseException, *, retry_after: float | None = None, progressed: bool = False
    ) -> None:
        """This attempt failed with `error`; `progressed`: it brought new ground (the count of
        failures starts again); `retry_after`: the server's own wait, in seconds."""
        self.error = error
        self.retry_after = retry_after
        self.progressed = progressed

    def may_retry(self, error: BaseException) -> bool:
        """Would a failure with `error` now leave another attempt?"""
        return not self._loop.gives_up(error, self._loop.failures + 1)


class RetryLoop:
    """The loop around attempts: see the module's docstring."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        what: str | Callable[[], str],
        stop: threading.Event | None = None,
        on_retry: Callable[[float, str], object] | None = None,
        has_reached_host: Callable[[], bool] = lambda: True,
        sleep: Callable[[float], object] | None = None,
        waits_for_connectivity: bool = False,
        probe_max_seconds: float = 30.0,
        on_waiting: Callable[[bool], object] | None = None,
        deadline: float | None = None,
        on_offline: Callable[[BaseException], object] | None = None,
    ):
        """`what` names what is retried in the log (or says it when called: a download adds
        where it stands); `stop` cuts a wait short; `sleep` replaces the waiting (tests).

        `waits_for_connectivity`: a failure to connect at all (`is_offline`) is not counted:
        the loop waits for the network, probing again with back-off at most
        `probe_max_seconds` apart, until `deadline` (time.monotonic()); `on_waiting(True)`
        when it starts waiting, `on_waiting(False)` when an attempt got further;
        `on_offline(error)` hears each failed probe first (why the host cannot be reached)."""
        self.policy = policy
        self.what = what
        self.stop = stop
        self.on_retry = on_retry
        self.has_reached_host = has_reached_host
        self.sleep = sleep
        self.waits_for_connectivity = waits_for_connectivity
        self.probe_max_seconds = probe_max_seconds
        self.on_waiting = on_waiting
        self.deadline = deadline
        self.on_offline = on_offline
        self.failures = 0  # in a row, without progress
        self.waiting = False  # for connectivity
        self._probes = 0

    def gives_up(self, error: BaseException, failures: int) -> bool:
        if self.policy.gives_up_after(failures):
            return True
        unreached = bool(getattr(error, "is_unreachable", False)) and not self.has_reached_host()
        return unreached and failures >= UNREACHED_HOST_ATTEMPTS

    def __iter__(self) -> Iterator[Attempt]:
        number = 0
        while True:
            number += 1
            attempt = Attempt(self, number)
            yield attempt
            offline = self.waits_for_connectivity and getattr(attempt.error, "is_offline", False)
            if self.waiting and not offline:
                self.connected()
            if attempt.error is None:
                continue  # no failure said: go again at once (a clean restart)
            if offline:
                self._wait_for_network(attempt.error)
                continue
            self.failures = 0 if attempt.progressed else self.failures + 1
            if self.gives_up(attempt.error, self.failures):
                raise attempt.error
            wait = self.policy.delay_seconds(max(self.failures, 1), attempt.retry_after)
            what = self.what() if callable(self.what) else self.what
            log.info("retry %d of %s in %.1fs after %s", self.failures, what, wait, attempt.error)
            if self.on_retry is not None:
                self.on_retry(wait, short_reason(attempt.error))
            self._sleep(wait)

    def _sleep(self, wait: float) -> None:
        if self.sleep is not None:
            self.sleep(wait)
        else:
            sleep_unless_stopped(wait, self.stop)  # (a stop: the caller's next check ends it)

    def connected(self) -> None:
        """The host answered: no longer waiting for connectivity (the caller may say it
        first, when an attempt succeeds and leaves the loop)."""
        if self.waiting:
            self.waiting = False
            self._probes = 0
            if self.on_waiting is not None:
                self.on_waiting(False)

    def _wait_for_network(self, error: BaseException) -> None:
        if self.on_offline is not None:
            self.on_offline(error)
        if not self.waiting:
            self.waiting = True
            if self.on_waiting is not None:
                self.on_waiting(True)
        self._probes += 1
        wait = min(self.probe_max_seconds, self.policy.base_seconds * 2 ** (self._probes - 1))
        wait *= 0.75 + 0.25 * self.policy.jitter()
        what = self.what() if callable(self.what) else self.what
        if self.deadline is not None:  # the last probe is just before the deadline itself
            left = self.deadline - time.monotonic() - 0.1
            if left <= 0:
                raise TransferError(
                    f"no connection for {what} before the resource timeout: {error}",
                    "the network or the host stayed away; `halftunes resume ID` tries again",
                ) from error
            wait = min(wait, left)
        log.info("waiting for the network for %s (next probe in %.1fs): %s", what, wait, error)
        if self.on_retry is not None:
            self.on_retry(wait, "waiting for the network")
        self._sleep(wait)
