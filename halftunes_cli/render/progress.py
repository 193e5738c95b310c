"""Progress as the user sees it: subscribers of transfer events (`events.TransferEvent`) that
draw nothing, plain lines for logs, or JSON Lines for scripts (bars live in `bars`), and the
summary line of a command. (A job's progress: `jobs`.)"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from ..events import EventKind, TransferEvent
from .base import Clock, Progress
from .console import Console, SideChannel
from .formats import duration, human_bytes, percent, printable

PROGRESS_MODES = ("auto", "bar", "line", "json", "none")


def make_progress(mode: str, console: Console, is_tty: bool) -> Progress:
    """auto = bars on a terminal, nothing otherwise; line = plain lines for logs; json = JSON
    Lines events on stderr for scripts; none = nothing."""
    if mode == "auto":
        mode = "bar" if is_tty and not console.quiet else "none"
    if mode == "bar":
        from .bars import BarProgress  # (start-up speed: tqdm loads only for bars)

        return BarProgress(console)
    if mode == "line":
        return LineProgress()
    if mode == "json":
        return JsonProgress()
    return Progress()


class LineProgress(Progress):
    """One plain line per transfer every few seconds, and one at its end (for logs)."""

    EVERY_SECONDS = 3.0

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[str, tuple[float, int, float]] = {}  # id -> (start, bytes0, last)
        self._lock = threading.Lock()
        self._stream = SideChannel()

    def _say(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def handle(self, event: TransferEvent) -> None:
        label = f"{event.id} {printable(event.label)}"  # the id first: a log is searched by it
        if event.kind is EventKind.RETRY:
            self._say(f"{label}: retrying in {event.retry_in_seconds:.0f} s ({event.reason})")
        elif event.kind is EventKind.ENDED:
            size = event.bytes_total or event.bytes_done
            tail = f": {event.error}" if event.error else ""
            self._say(
                f"{label}: {event.state}" + (f" ({human_bytes(size)})" if size else "") + tail
            )
        else:
            self._moved(event, label)

    def _moved(self, event: TransferEvent, label: str) -> None:
        now = self._clock()
        with self._lock:
            start, first, last = self._seen.setdefault(
                event.id, (now, event.bytes_done - event.delta, now)
            )
            if now - last < self.EVERY_SECONDS:
                return
            self._seen[event.id] = (start, first, now)
        rate = (event.bytes_done - first) / max(now - start, 1e-6)
        total = event.bytes_total
        done = human_bytes(event.bytes_done)
        of = f"{percent(event.bytes_done, total)} of {human_bytes(total)}" if total else done
        self._say(f"{label}: {of}, {human_bytes(rate)}/s")


class JsonProgress(Progress):
    """JSON Lines on stderr: {"id", "event", "bytes_received", "bytes_total", ...}; progress
    events at most twice a second per transfer (and always at the last byte)."""

    EVERY_SECONDS = 0.5

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stream = SideChannel()

    def _emit(self, **fields: Any) -> None:
        line = json.dumps(fields, ensure_ascii=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def handle(self, event: TransferEvent) -> None:
        common = {"id": event.id}
        sizes = {"bytes_received": event.bytes_done, "bytes_total": event.bytes_total}
        if event.kind is EventKind.RETRY:
            retry = {"retry_in_seconds": round(event.retry_in_seconds or 0, 3)}
            self._emit(**common, event="retry", **sizes, **retry, reason=event.reason)
        elif event.kind is EventKind.ENDED:
            failure = {"error": event.error} if event.error else {}
            where = {"path": event.path} if event.path else {}
            self._emit(**common, event=event.state, **sizes, **failure, **where)
        elif self._due(event):
            self._emit(**common, event="progress", **sizes)

    def _due(self, event: TransferEvent) -> bool:
        now = self._clock()
        last_byte = event.bytes_total is not None and event.bytes_done >= event.bytes_total
        with self._lock:
            if now - self._last.get(event.id, -1e9) < self.EVERY_SECONDS and not last_byte:
                return False
            self._last[event.id] = now
        return True


def summary(given: int, statuses: list[str], elapsed_seconds: float) -> str:
    """`35 ids: 33 completed, 1 skipped, 1 failed in 0:42`: every id given is counted once
    (an id that never reached a transfer, bad input, counts as failed)."""
    counts = {s: statuses.count(s) for s in ("completed", "skipped", "paused", "cancelled")}
    counts["failed"] = given - sum(counts.values())
    parts = [f"{n} {name}" for name, n in counts.items() if n or name == "completed"]
    return f"{given} ids: {', '.join(parts)} in {duration(elapsed_seconds)}"
