"""One file over several connections (`-x N`): the plan of its byte ranges (segments), and
the engine that fetches them at once into the one partial, in place.

Every segment is a range [start, end) of the file with `done` bytes written from its start.
The plan is a partition of the whole file at every moment; a checkpoint fsyncs the partial
and then records a snapshot of the plan (each segment's durable length), so a resume asks
each segment for the rest of its own range only. A segment's resume re-reads its own
overlap (up to 64 KiB before its resume point) and sends If-Range, exactly as a whole
transfer does: a changed file answers 200 or differs in the overlap, and the transfer
starts again from 0, never splicing two versions. A connection whose segment is finished
takes half of the largest remaining one (work stealing), so all connections stay busy
until the end.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import ranges
from ..errors import TransferError
from ..ranges import Action
from ..transport import RequestHandle, abort, body_reader
from .partial import WRITEBACK_BYTES, OverlapMismatch, receive_buffer

if TYPE_CHECKING:
    from .download import DownloadTask

log = logging.getLogger(__name__)

MIN_SEGMENT_BYTES = 1 << 20  # no segment is made smaller (aria2's -k 1M)
AUTO_CONNECTIONS = 8  # `-x auto`: this many ...
AUTO_MIN_BYTES = 64 << 20  # ... for files at least this big (else one)
CHECKPOINT_SECONDS = 1.0
# A first connection that brings PROBE_BYTES at this rate or faster keeps the file to itself.
FAST_BYTES_PER_SECOND = 160 << 20
PROBE_BYTES = 8 << 20
EARLY_SECONDS = 0.01  # a first connection at under half that rate by then is split at once


def connections_for(setting: int, total: int) -> int:
    """How many connections a file of `total` bytes gets: `setting` (0: auto), never so many
    that a segment would be smaller than MIN_SEGMENT_BYTES."""
    wanted = setting if setting > 0 else (AUTO_CONNECTIONS if total >= AUTO_MIN_BYTES else 1)
    return max(1, min(wanted, total // MIN_SEGMENT_BYTES))


@dataclass
class Segment:
    start: int
    end: int  # exclusive; moves down when another connection takes half of the rest
    done: int = 0  # bytes written from `start`
    writing: int = 0  # bytes being written right now (claimed, not yet counted in `done`)
    active: bool = False  # a connection works on it
    ending: bool = False  # its connection has claimed its last bytes (and will stop)

    @property
    def position(self) -> int:
        return self.start + self.done

    @property
    def remaining(self) -> int:
        return self.end - self.position


class SegmentPlan:
    """The segments of one file, shared by its connections (every change under one lock)."""

    def __init__(self, total: int, segments: list[Segment], connections: int):
        self.total = total
        self.segments = segments
        self.connections = connections
        self.steals = 0  # how many times a connection took half of another's range
        self._lock = threading.Lock()

    @classmethod
    def split(cls, total: int, connections: int) -> SegmentPlan:
        size = total // connections
        bounds = [i * size for i in range(connections)] + [total]
        return cls(
            total,
            [Segment(bounds[i], bounds[i + 1]) for i in range(connections)],
            connections,
        )

    @classmethod
    def from_record(cls, text: str | None, total: int | None) -> SegmentPlan | None:
        """The plan a checkpoint recorded, or None when there is none or it does not describe
        a file of `total` bytes (then nothing of the partial is trusted)."""
        if not text or total is None:
            return None
        try:
            data = json.loads(text)
            connections = int(data["connections"])
            segments = [Segment(int(s), int(e), int(d)) for s, e, d in data["segments"]]
        except (ValueError, TypeError, KeyError):
            return None
        at = 0
        for segment in sorted(segments, key=lambda s: s.start):
            if segment.start != at or segment.end <= segment.start:
                return None
            if not 0 <= segment.done <= segment.end - segment.start:
                return None
            at = segment.end
        if at != total or not 1 <= connections <= 64:
            return None
        return cls(total, sorted(segments, key=lambda s: s.start), connections)

    def snapshot(self) -> tuple[str, int]:
        """The plan as a record keeps it (each segment's bytes written so far), and the sum
        of those bytes."""
        with self._lock:
            rows = [[s.start, s.end, s.done] for s in self.segments]
        text = json.dumps({"connections": self.connections, "segments": rows})
        return text, sum(row[2] for row in rows)

    @property
    def done_bytes(self) -> int:
        with self._lock:
            return sum(s.done for s in self.segments)

    @property
    def is_complete(self) -> bool:
        with self._lock:
            return all(s.remaining == 0 for s in self.segments)

    def written_before(self, position: int, most: int) -> int:
        """How many bytes right before `position` are written (up to `most`), across the
        segments they belong to: what a request from `position` can ask again and compare."""
        with self._lock:
            runs = sorted((s.start, s.start + s.done) for s in self.segments if s.done)
        found, at = 0, position
        for start, end in reversed(runs):
            if start >= at:
                continue
            if end != at:
                break
            found, at = found + end - start, start
            if found >= most:
                break
        return min(found, most)

    def longest_written(self) -> tuple[int, int] | None:
        """The end of the longest run of written bytes and its length (None: nothing)."""
        with self._lock:
            runs = sorted((s.start, s.start + s.done) for s in self.segments if s.done)
        merged: list[list[int]] = []
        for start, end in runs:
            if merged and merged[-1][1] == start:
                merged[-1][1] = end
            else:
                merged.append([start, end])
        if not merged:
            return None
        start, end = max(merged, key=lambda run: run[1] - run[0])
        return end, end - start

    def keep_only(self, lead: Segment) -> bool:
        """Make `lead` the whole file (one connection), if no other segment has started and
        its connection is still reading (it has not claimed its last bytes)."""
        with self._lock:
            others = [s for s in self.segments if s is not lead]
            if any(s.active or s.done for s in others) or not lead.active or lead.ending:
                return False
            lead.end = self.total
            self.segments = [lead]
            self.connections = 1
            return True

    def take(self) -> Segment | None:
        """Work for a free connection: a segment nobody works on, else half of the largest
        range still to come (None: nothing worth another connection is left)."""
        with self._lock:
            for segment in self.segments:
                if not segment.active and segment.remaining > 0:
                    segment.active = True
                    return segment
            busy = [s for s in self.segments if s.active]
            if not busy:
                return None
            victim = max(busy, key=lambda s: s.remaining - s.writing)
            rest = victim.remaining - victim.writing
            if rest < 2 * MIN_SEGMENT_BYTES:
                return None
            middle = victim.position + victim.writing + rest // 2
            stolen = Segment(middle, victim.end, active=True)
            victim.end = middle
            self.segments.insert(self.segments.index(victim) + 1, stolen)
            self.steals += 1
            return stolen

    def claim(self, segment: Segment, n: int) -> tuple[int, int]:
        """Of `n` bytes just read for `segment`, where they go and how many still belong to it
        (its end may have moved down since the request was sent)."""
        with self._lock:
            allowed = max(0, min(n, segment.remaining))
            segment.writing = allowed
            segment.ending = allowed == segment.remaining
            return segment.position, allowed

    def wrote(self, segment: Segment, n: int) -> None:
        with self._lock:
            segment.done += n
            segment.writing = 0

    def release(self, segment: Segment) -> None:
        with self._lock:
            segment.active = False


def _ignore(n: int) -> None:
    """(A check's bytes are not counted as the file's.)"""


class _Changed(Exception):
    """The server's copy is not the one the partial holds: start the file again from 0."""


class SegmentedDownload:
    """Fetch the unfinished segments of `plan` over up to `connections` connections at once,
    into the task's partial; checkpoint every second on the calling thread (the receiving
    threads never wait for the disk). `run` returns True when every byte is written, False
    when the file changed on the server (the caller starts again from 0); raises the first
    error that ended a segment for good; returns on a stop (the caller checks it)."""

    def __init__(self, task: DownloadTask, plan: SegmentPlan, connections: int):
        self.task = task
        self.plan = plan
        self.connections = connections
        self.halt = threading.Event()  # every connection stops (a stop, an error, a change)
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._handles: set[RequestHandle] = set()
        self._live: set[Any] = set()
        self._running = 0
        self._changed: str | None = None
        self._idle = threading.Condition(self._lock)
        self.bytes_fetched = 0  # over every connection
        self.first_bytes = 0  # ... of which over the task's first answer
        # Set once an answer's bytes matched bytes the partial already held (an overlap):
        # a resume that ends without one checks a stretch of the partial on its own.
        self.verified = False

    # -- the coordinator (the task's own thread) ---------------------------------------------
    def run(self, first: Any = None) -> bool:
        task = self.task
        resumed = first is None and self.plan.done_bytes > 0  # (bytes of an earlier run)
        lead = self.plan.take()  # (the first answer's body is the first segment's)
        if first is not None:  # (a stop must wake its reads too)
            with self._lock:
                self._live.add(first)
                self._handles.add(task._request)
        threads = [self._start(lead, first, extra_slot=False)]
        try:
            if first is not None and self._one_is_enough(lead):
                log.info(
                    "%s: one connection: it alone brings %d MiB/s or more",
                    task.url,
                    FAST_BYTES_PER_SECOND >> 20,
                )
            else:
                slots, host = task.session.http.slots, task.host
                for count in range(1, self.connections):
                    if not slots.try_take(host):
                        log.info(
                            "%s: %d of %d connections (max_connections_per_host)",
                            task.url,
                            count,
                            self.connections,
                        )
                        break
                    threads.append(self._start(None, None, extra_slot=True))
            self._checkpoint_until_done()
        finally:
            self.stop()
            for thread in threads:
                thread.join()
        if self._changed is not None:
            raise _Changed(self._changed)
        if self._errors:
            raise self._errors[0]
        complete = self.plan.is_complete
        if complete and resumed and not self.verified and not task._stop.is_set():
            self.halt.clear()  # (the connections are done; a stop halts the check again)
            self._verify_written()
        return complete

    def _verify_written(self) -> None:
        """A resume whose requests compared nothing (every unfinished range started where no
        byte was written, or nothing was left to fetch): the server's copy is compared with
        the partial's longest written stretch (its last 64 KiB, one request), or the file
        starts again. No validator can see a file rewritten under the same ETag."""
        found = self.plan.longest_written()
        if found is None:
            return
        end, length = found
        start = end - min(ranges.OVERLAP_BYTES, length)
        task = self.task
        for attempt in task._retries(f"{task.url} bytes {start}-{end - 1} (a check)"):
            task._check_stop()  # (a stop during the check: paused, checked at the next resume)
            try:
                response, handle = self._send(start, end - 1)
            except TransferError as unanswered:
                if not unanswered.is_retryable:
                    raise
                attempt.failed(unanswered)
                continue
            try:
                decision = ranges.decide_segment(
                    response.status_code, response.headers, start, end - 1, self.plan.total
                )
                if decision.action is Action.RETRY:
                    error, retry_after = task._retry_error(response, decision)
                    attempt.failed(error, retry_after=retry_after)
                    continue
                if decision.action is Action.FAIL:
                    raise task._status_error(response, self.plan.done_bytes)
                if decision.action is not Action.APPEND:
                    raise _Changed(decision.reason)
                readinto = body_reader(response.raw, task.url)
                view = memoryview(bytearray(end - start))
                task.partial.compare(readinto, view, start, end, self.halt, task.url, _ignore)
            except TransferError as broken:
                attempt.failed(broken)
                continue
            except OverlapMismatch:
                raise _Changed(
                    "the server's copy changed (its bytes differ from those already "
                    "downloaded): restarting from 0"
                ) from None
            finally:
                self._close(response, handle, 0)
            task._check_stop()  # (a stop cut the check short: checked at the next resume)
            self.verified = True
            return

    def _start(self, segment: Segment | None, first: Any, extra_slot: bool) -> threading.Thread:
        with self._lock:
            self._running += 1
            number = self._running
        thread = threading.Thread(
            target=self._work,
            args=(segment, first, extra_slot),
            name=f"task-{self.task.task_identifier}-connection-{number}",
            daemon=True,
        )
        thread.start()
        return thread

    def _one_is_enough(self, lead: Segment | None) -> bool:
        """Watch the first connection for a moment: when it alone brings the file at
        FAST_BYTES_PER_SECOND or more (loopback, a fast LAN), more connections would only
        cost CPU, and the whole file stays on it. A slow start decides within EARLY_SECONDS."""
        if lead is None or self.connections < 2:
            return False
        probe = min(PROBE_BYTES, (lead.end - lead.start) // 2)
        began = time.monotonic()
        while not self.halt.wait(0.002):
            elapsed = time.monotonic() - began
            if lead.done >= probe:
                return self.plan.keep_only(lead)
            if elapsed >= probe / FAST_BYTES_PER_SECOND:
                return False
            if elapsed >= EARLY_SECONDS and lead.done < elapsed * FAST_BYTES_PER_SECOND / 2:
                return False  # clearly slower: no need to wait out the probe
        return False

    def _checkpoint_until_done(self) -> None:
        while True:
            with self._idle:
                if self._running:
                    self._idle.wait(CHECKPOINT_SECONDS)
                running = self._running
            if not running:
                return
            self.task._checkpoint_segments()

    def stop(self) -> None:
        """Stop every connection within one chunk (a blocked read is woken)."""
        self.halt.set()
        with self._lock:
            handles, live = list(self._handles), list(self._live)
        for handle in handles:
            handle.abort()
        for response in live:
            abort(response)

    # -- one connection (its own thread) -------------------------------------------------------
    def _work(self, segment: Segment | None, first: Any, extra_slot: bool) -> None:
        task = self.task
        try:
            if segment is None:
                segment = self.plan.take()
            while segment is not None and not self.halt.is_set():
                try:
                    self._fetch(segment, first)
                    first = None
                finally:
                    self.plan.release(segment)
                segment = self.plan.take() if not self.halt.is_set() else None
        except _Changed as exc:
            with self._lock:
                self._changed = self._changed or str(exc)
            self.stop()
        except BaseException as exc:  # noqa: BLE001 - a thread hands every error to the coordinator
            if not task._stop.is_set():
                with self._lock:
                    self._errors.append(exc)
            self.stop()
        finally:
            if first is not None:
                first.close()
            if extra_slot:
                task.session.http.slots.give_back(task.host)
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    def _fetch(self, segment: Segment, first: Any) -> None:
        """Bring `segment` to its end, retrying as a whole transfer does (per segment)."""
        task = self.task
        loop = task._retries(
            lambda: f"{task.url} bytes {segment.position}-{segment.end - 1}", stop=self.halt
        )
        for attempt in loop:
            if self.halt.is_set() or segment.remaining <= 0:
                return
            before = segment.done
            if first is not None:  # (its body starts at byte 0: the first segment's start)
                response, handle, start = first, task._request, 0
                first = None
            else:
                start = segment.position - self.plan.written_before(
                    segment.position, ranges.OVERLAP_BYTES
                )
                asked_end = segment.end - 1  # (the end may move down while the answer comes)
                try:
                    response, handle = self._send(start, asked_end)
                except TransferError as unanswered:
                    if self.halt.is_set():
                        return
                    if not unanswered.is_retryable:
                        raise
                    attempt.failed(unanswered)
                    continue
                decision = ranges.decide_segment(
                    response.status_code, response.headers, start, asked_end, self.plan.total
                )
                if decision.action is not Action.APPEND:
                    self._close(response, handle, 0)
                    if decision.action is Action.FAIL:
                        raise task._status_error(response, segment.done)
                    if decision.action is Action.RETRY:
                        error, retry_after = task._retry_error(response, decision)
                        attempt.failed(error, retry_after=retry_after)
                        continue
                    raise _Changed(decision.reason)
            fetched = 0
            try:
                fetched = self._stream(segment, response, start)
            except TransferError as broken:
                if self.halt.is_set():
                    return
                attempt.failed(broken, progressed=segment.done > before)
                continue
            finally:
                self._close(response, handle, fetched)
            if segment.remaining > 0 and not self.halt.is_set():
                short = TransferError(
                    f"{task.url}: connection closed at byte {segment.position} of a range "
                    f"ending at {segment.end}"
                )
                attempt.failed(short, progressed=segment.done > before)

    def _send(self, start: int, end: int) -> tuple[Any, RequestHandle]:
        task = self.task
        headers = ranges.segment_headers(start, end, task.etag, task.last_modified)
        handle = RequestHandle()
        with self._lock:
            self._handles.add(handle)
        task._exchanges.append(handle)
        if self.halt.is_set():
            handle.abort()
        response = task.session.http.send("GET", task.url, headers, handle=handle, auth=task._auth)
        with self._lock:
            self._live.add(response)
        return response, handle

    def _close(self, response: Any, handle: RequestHandle, body_bytes: int) -> None:
        with self._lock:
            self._live.discard(response)
            self._handles.discard(handle)
        if handle is self.task._request:  # the task's first answer: the task ends its body
            with self._lock:
                self.first_bytes = body_bytes
        else:
            handle.end_of_body(body_bytes, self.task.url)
        response.close()

    def _stream(self, segment: Segment, response: Any, start: int) -> int:
        """The answer's body into the segment's range: the overlap first compared with the
        partial's bytes, then written in place until the body or the segment ends."""
        task = self.task
        readinto = body_reader(response.raw, task.url)
        view = receive_buffer()  # (this thread's, for the whole body)
        limit = task._limit
        reads = view[: limit.chunk_bytes] if limit is not None else view
        fetched = 0

        def count(n: int) -> None:
            nonlocal fetched
            fetched += n

        if start < segment.position:
            try:
                task.partial.compare(
                    readinto, view, start, segment.position, self.halt, task.url, count
                )
            except OverlapMismatch:
                raise _Changed(
                    "the server's copy changed (the bytes before a segment's resume "
                    "point differ): restarting from 0"
                ) from None
            if self.halt.is_set():
                return fetched
            self.verified = True
        written_back = segment.position  # writeback started for this range up to here
        while not self.halt.is_set():
            n = readinto(reads)
            if not n:
                break
            fetched += n
            position, allowed = self.plan.claim(segment, n)
            if allowed:
                try:
                    task.partial.write_at(position, reads[:allowed])
                except BaseException:
                    self.plan.wrote(segment, 0)
                    raise
                self.plan.wrote(segment, allowed)
                task._segment_progress(allowed)
                if position + allowed - written_back >= WRITEBACK_BYTES:
                    task.partial.write_back(written_back, position + allowed - written_back)
                    written_back = position + allowed
            if limit is not None:
                limit.take(n, self.halt)
            if allowed < n or segment.remaining <= 0:
                break  # the segment is whole (its end may have moved: another connection took it)
        with self._lock:
            self.bytes_fetched += fetched
        return fetched
