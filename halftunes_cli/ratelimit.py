"""`--limit-rate`: one pace for every transfer of a process that shares a rate (a command's
transfers; the background worker's, per rate its commands asked for).

A virtual clock, as a leaky bucket: each read books its bytes at the rate, after the bytes
booked before it; a transfer that is ahead of the clock waits (a stop request cuts the wait
short). Up to a quarter second of unused time is credited, so a pause in the flow does not
end in a burst."""

from __future__ import annotations

import threading
import time

CREDIT_SECONDS = 0.25


class RateLimit:
    def __init__(self, bytes_per_second: int):
        self.rate = bytes_per_second
        self._lock = threading.Lock()
        self._booked_until = time.monotonic()

    @property
    def chunk_bytes(self) -> int:
        """How much to read at a time: about a twentieth of a second's worth."""
        return max(4096, self.rate // 20)

    def take(self, nbytes: int, stop: threading.Event | None = None) -> None:
        """Book `nbytes`; return when the rate allows them (at once if it already does)."""
        with self._lock:
            now = time.monotonic()
            start = max(self._booked_until, now - CREDIT_SECONDS)
            self._booked_until = start + nbytes / self.rate
            wait = self._booked_until - now
        if wait > 0:
            if stop is not None:
                stop.wait(wait)
            else:
                time.sleep(wait)


_shared: dict[int, RateLimit] = {}
_shared_lock = threading.Lock()


def shared(bytes_per_second: int) -> RateLimit:
    """The process's limiter for this rate (one per rate: transfers asking the same share it)."""
    with _shared_lock:
        if bytes_per_second not in _shared:
            _shared[bytes_per_second] = RateLimit(bytes_per_second)
        return _shared[bytes_per_second]
