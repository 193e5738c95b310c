"""A job's progress, fed by one event per item as its shard finishes it (wherever the shard
runs): one overall bar on a terminal (items, shards, files/s, MB/s, failures, ETA, redrawn
at least once a second), a plain line every 10 s for logs, or one JSON line per item."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from .base import Clock
from .console import Console, SideChannel
from .formats import duration, human_bytes


class JobProgress:
    """`start(items)` once the work is known; `item(event)` per item ended (any thread);
    `shard(...)` per shard ended; `close()` at the end. `mode`: bar, line, json or none
    (auto: bar on a terminal, line otherwise)."""

    LINE_SECONDS = 10.0
    REDRAW_SECONDS = 1.0

    def __init__(self, console: Console, mode: str, is_tty: bool, clock: Clock = time.monotonic):
        if mode == "auto":
            mode = "bar" if is_tty else "line"
        self.mode = "none" if console.quiet and mode != "json" else mode
        self.console = console
        self._clock = clock
        self._lock = threading.Lock()
        self._stream = SideChannel()
        self._began = self._last_line = clock()
        self._bar: Any = None
        self._ticker: threading.Thread | None = None
        self._closed = threading.Event()
        self.total = self.done = self.failed = self.nbytes = 0
        self.shards_done = self.shards = 0
        self._seen: set[str] = set()  # (a shard run twice tells its items twice)

    # -- events --------------------------------------------------------------------------------
    def start(self, items: int, shards: int) -> None:
        with self._lock:
            self.total, self.shards = items, shards
            self._began = self._last_line = self._clock()
            if self.mode == "line" and items:
                self._ticker = threading.Thread(target=self._tick, daemon=True, name="job-line")
                self._ticker.start()
            if self.mode == "bar" and items:  # (nothing to do: no bar, the summary says it)
                from .bars import Bar  # (start-up speed)

                self._bar = Bar(
                    total=items,
                    file=SideChannel(),
                    leave=True,
                    unit="item",
                    mininterval=0.2,
                    bar_format="{n}/{total} items {bar:20} {desc}",
                )
                self._bar.set_description_str(self._figures(), refresh=True)
                self._ticker = threading.Thread(target=self._tick, daemon=True, name="job-bar")
                self._ticker.start()

    def item(self, event: dict[str, Any]) -> None:
        """One item ended: {"id", "status": completed|failed, "bytes", "path" | "error"}."""
        with self._lock:
            if event.get("id") in self._seen:
                return
            self._seen.add(str(event.get("id")))
            self.done += 1
            self.failed += event.get("status") == "failed"
            self.nbytes += event.get("bytes") or 0
            if self.mode == "json":
                fields = {"event": event.get("status"), **event}
                self._stream.write(json.dumps(fields, ensure_ascii=False) + "\n")
                self._stream.flush()
            elif self.mode == "bar" and self._bar is not None:
                self._bar.set_description_str(self._figures(), refresh=False)
                self._bar.update(1)
            elif self.mode == "line" and self._clock() - self._last_line >= self.LINE_SECONDS:
                self._line()  # (at an item's end, or by the ticker while a slow one runs)

    def shard(self, k: int, counts: dict[str, int], shards: int) -> None:
        with self._lock:
            self.shards = shards
            self.shards_done += 1  # (a shard done in an earlier run counts: it is done)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            if self._bar is not None:
                self._bar.set_description_str(self._figures(), refresh=True)
                self._bar.close()
                self._bar = None
            elif self.mode == "line" and self.total:
                self._line()
                self.mode = "none"  # (said once)

    # -- drawing -------------------------------------------------------------------------------
    def _figures(self) -> str:
        elapsed = max(self._clock() - self._began, 1e-6)
        rate = self.done / elapsed
        left = self.total - self.done
        eta = duration(left / rate) if rate and left else ("0:00" if not left else "-:--")
        shards = f"{self.shards_done}/{self.shards} shards · " if self.shards else ""
        return (
            f"{shards}{rate:.0f} files/s · {human_bytes(self.nbytes / elapsed)}/s · "
            f"{self.failed} failed · ETA {eta}"
        )

    def _line(self) -> None:
        self._last_line = self._clock()
        self._stream.write(f"{self.done} of {self.total} items · {self._figures()}\n")
        self._stream.flush()

    def _tick(self) -> None:
        """Redraw at least once a second: the rate and ETA move while a slow item runs."""
        while not self._closed.wait(self.REDRAW_SECONDS):
            with self._lock:
                if self.mode == "line":
                    if self._clock() - self._last_line >= self.LINE_SECONDS:
                        self._line()
                    continue
                if self._bar is None:
                    return
                self._bar.set_description_str(self._figures(), refresh=True)
