"""The one retry policy: which answers are transient, jittered exponential back-off, Retry-After.

Data, upload and download tasks all ask this policy how long to wait and sleep through it;
a stop request (pause, cancel) interrupts the sleep at once.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .headers import parse_retry_after

__all__ = ["RETRYABLE_STATUSES", "RetryPolicy", "parse_retry_after", "sleep_unless_stopped"]

# 408 and 429 are the client-side statuses worth another try; the rest are server trouble.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

# A server may ask for a long pause; we honour it up to this many seconds per wait.
RETRY_AFTER_CAP_SECONDS = 120.0


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
        return delay * (0.75 + 0.25 * self.jitter())


def sleep_unless_stopped(seconds: float, stop: threading.Event | None) -> bool:
    """Sleep; True when a stop request cut the sleep short (the caller then stops)."""
    if stop is None:
        time.sleep(seconds)
        return False
    return stop.wait(seconds)
