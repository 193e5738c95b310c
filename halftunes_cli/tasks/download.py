"""`DownloadTask` and `ResumeData`: download to a partial, checkpoint, resume with Range and
If-Range by the decisions of `ranges`, and rename when the size checks out."""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from .. import ranges, ratelimit
from ..errors import (
    HalftunesError,
    HTTPStatusError,
    TransferError,
    UsageError,
    authentication_required,
    disk_error,
)
from ..naming import url_filename
from ..ranges import Action
from ..retry import RETRYABLE_STATUSES, parse_retry_after
from ..transport import body_reader
from .base import Task, TaskHost, TaskState
from .checkpointer import shared_checkpointer
from .partial import (
    OverlapMismatch,
    PartialFile,
    PartialShrank,
    receive_buffer,
    start_writeback,
)
from .segments import (
    AUTO_MIN_BYTES,
    SegmentedDownload,
    SegmentPlan,
    _Changed,
    connections_for,
)

RESTARTS_SPLIT = 2  # restarts of a segmented transfer after which it takes one connection

RESUME_DATA_VERSION = 1
log = logging.getLogger(__name__)


@dataclass
class ResumeData:
    """What it takes to continue a download elsewhere (NSURLSessionDownloadTaskResumeData)."""

    url: str
    destination: str
    part_path: str
    offset: int
    bytes_total: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    version: int = RESUME_DATA_VERSION
    # a file fetched over several connections: its segments' plan as the last checkpoint
    # recorded it (JSON; `segments.SegmentPlan`), None for one connection
    segments: str | None = None

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ResumeData:
        try:
            raw = json.loads(data)
            if raw.get("version") != RESUME_DATA_VERSION:
                raise ValueError("unsupported resume data version")
            return cls(**raw)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"invalid resume data: {exc}") from exc


class Journal(Protocol):
    """Where a download task records its checkpoints (the state file, or nothing).

    `checkpoint` returns a pending stop request ('pause' / 'cancel') left by another process."""

    def checkpoint(self, task: DownloadTask) -> str | None: ...

    def waiting(self, waiting: bool, reason: str | None = None) -> None:
        """The transfer waits for connectivity (record status `waiting`; `reason`: why the
        host cannot be reached), or no longer."""


DECODABLE = ("gzip", "x-gzip", "deflate")


class _Step(enum.Enum):
    """How one attempt ended, for the loop around it."""

    DONE = "done"  # completed (or handed to the group commit)
    AGAIN = "again"  # go again at once (restarted from 0, or with credentials)
    RETRY = "retry"  # a failure: the retry loop decides (back off, or give up)


@dataclass(frozen=True)
class _Result:
    step: _Step
    error: TransferError | None = None
    retry_after: float | None = None
    progressed: bool = False  # bytes flowed in this attempt


class _BodyError(Exception):
    pass


class DownloadTask(Task):
    """completion(location, response, error); delegate on_data_written, on_finished_downloading,
    on_complete (and on_note for restarts)."""

    def __init__(
        self,
        session: TaskHost,
        url: str,
        destination: str | Path | None = None,
        completion: Callable | None = None,
        resume_data: ResumeData | None = None,
        journal: Journal | None = None,
        record_id: str | None = None,
    ):
        super().__init__(session, url, completion)
        session.configuration.check_url(url)
        if destination is None:
            destination = Path(session.configuration.download_dir) / url_filename(url)
        self.destination = Path(destination)
        self.record_id = record_id
        self.journal = journal
        self.bytes_total: int | None = None
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.bytes_fetched = 0  # bytes that crossed the network in this task
        self._fetched_before = 0  # ... before the answer being read
        self.notes: list[str] = []  # things the user should hear (restarts)
        self.location: Path | None = None
        self.title: str | None = None
        self.content_encoding: str | None = None  # set when a server compresses regardless
        self._auth: Any = None  # credentials from on_challenge, once given
        self._body_ended = False  # the whole body was read
        # Set once the whole body is in the partial and no stop came first: from then on the
        # download completes, and a pause or cancel that arrives changes nothing.
        self._committed = False
        self._journal_error: HalftunesError | None = None  # the state file refused a checkpoint
        # Set by a runner that makes finished files durable in groups: the task then ends
        # with its body written but not fsynced nor renamed (see `finish_handed_off`).
        self.group_commit = False
        # A preview of zero bytes is no preview: set for track downloads (a URL may be empty).
        self.requires_content = False
        # `--checksum`: (algorithm, hex digest) the finished file must have, or it is not kept
        self.checksum: tuple[str, str] | None = None
        rate = session.configuration.limit_rate
        self._limit = ratelimit.shared(rate) if rate else None  # `--limit-rate`
        self._handed_total: int | None = None
        cfg = session.configuration
        # `-x`: connections for one file (0: auto), when the server allows (`_may_split`)
        self.connections = cfg.connections_per_file
        self._plan: SegmentPlan | None = None  # the segments, while several connections run
        self._recorded_plan: str | None = None  # the plan as the last checkpoint recorded it
        self._recorded_bytes = 0  # ... and the bytes it vouches for
        self._unreadable_plan = False  # a recorded plan that does not fit: trust nothing
        self._engine: SegmentedDownload | None = None
        self._restarts = 0  # of a segmented transfer: after RESTARTS_SPLIT, one connection
        self._journal_lock = threading.Lock()
        self._progress_lock = threading.Lock()
        part_path = Path(str(self.destination) + ".part")
        synced = 0
        if resume_data is not None:
            part_path = Path(resume_data.part_path)
            synced = resume_data.offset
            self.bytes_total = resume_data.bytes_total
            self.etag = resume_data.etag
            self.last_modified = resume_data.last_modified
            if resume_data.segments:
                self._plan = SegmentPlan.from_record(resume_data.segments, self.bytes_total)
                if (
                    self._plan is None
                    or ranges.validator_for(self.etag, self.last_modified) is None
                ):
                    self._plan, self._unreadable_plan = None, True
                else:
                    self._recorded_plan = resume_data.segments
                    self._recorded_bytes = self._plan.done_bytes
                    # (a resume keeps the connections it started with, also after a restart)
                    if self.connections != 0:
                        self.connections = max(self.connections, self._plan.connections)
        self.checkpointer = shared_checkpointer()
        self.partial = PartialFile(
            part_path,
            synced,
            mode=cfg.file_mode,
            durable=cfg.is_durable,
            checkpointer=self.checkpointer,
            writeback=start_writeback,
        )

    # -- public ----------------------------------------------------------------------------
    @property
    def part_path(self) -> Path:
        return self.partial.path

    @property
    def bytes_received(self) -> int:
        """Bytes in the partial (some may still await their checkpoint)."""
        plan = self._plan
        return plan.done_bytes if plan is not None else self.partial.length

    @property
    def host(self) -> str:
        return (urlsplit(self.url).hostname or "").lower()

    @property
    def segment_record(self) -> str | None:
        """The segments' plan as the last checkpoint made it durable (None: one connection)."""
        return self._recorded_plan

    @property
    def label(self) -> str:
        """The track's title, or the file's name (a URL download is known by it)."""
        if self.title and "://" not in self.title:
            return self.title
        return self.destination.name

    @property
    def saved_to(self) -> str | None:
        return str(self.location) if self.location is not None else None

    @property
    def progress(self) -> tuple[int, int | None]:
        return self.bytes_received, self.bytes_total

    @property
    def bytes_synced(self) -> int:
        """Bytes of the partial known to be on disk: what a checkpoint records."""
        if self._recorded_plan is not None:
            return self._recorded_bytes
        return self.partial.synced

    @property
    def count_of_bytes_received(self) -> int:
        return self.bytes_received

    @property
    def count_of_bytes_expected_to_receive(self) -> int | None:
        return self.bytes_total

    def cancel_producing_resume_data(self, timeout: float | None = 30) -> ResumeData | None:
        """Pause: stop after a checkpoint and hand back what `download_task_with_resume_data`
        needs. None when the task had already finished."""
        if self.state is TaskState.SUSPENDED:
            self.cancel()
            return None
        self.request_stop("pause")
        self.wait(timeout)
        if self.state is not TaskState.PAUSED:
            return None
        return self.resume_data()

    def resume_data(self) -> ResumeData:
        return ResumeData(
            url=self.url,
            destination=str(self.destination),
            part_path=str(self.part_path),
            offset=self.partial.synced,
            bytes_total=self.bytes_total,
            etag=self.etag,
            last_modified=self.last_modified,
            segments=self._recorded_plan,
        )

    # -- the engine ------------------------------------------------------------------------
    def _execute(self) -> None:
        try:
            self.destination.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, self.destination.parent) from exc
        with self.session.http.slots.hold(self.host):  # (max_connections_per_host)
            self._transfer()

    def _transfer(self) -> None:
        if self._unreadable_plan:
            self._note("the record of the segments does not fit the file: restarting from 0")
            self._forget_plan()
            self.bytes_total = self.etag = self.last_modified = None
            offset = self.partial.truncate(0)
        elif self._plan is not None:
            offset = 0  # (each segment knows its own)
        else:
            offset = self.partial.starting_offset(self.bytes_total)
        deadline = time.monotonic() + self.session.configuration.resource_timeout
        high_water = offset
        for attempt in self._retries(lambda: f"{self.url} from byte {self.bytes_received}"):
            self._check_stop()
            self._check_deadline(deadline)
            result = self._attempt(self._restart_if_unverifiable(offset))
            offset = self.bytes_received
            if result.step is _Step.DONE:
                return
            if result.step is _Step.RETRY:
                # Only new ground counts as progress: a server that keeps breaking the same
                # way (and sends us back to byte 0) must still run out of retries.
                progressed = result.progressed and offset > high_water
                high_water = max(high_water, offset)
                assert result.error is not None
                attempt.failed(result.error, retry_after=result.retry_after, progressed=progressed)

    def _check_deadline(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            timeout = self.session.configuration.resource_timeout
            raise TransferError(
                f"resource timeout ({timeout:.0f}s) reached for {self.url}",
                "resume it later with `halftunes resume`",
            )

    def _restart_if_unverifiable(self, offset: int) -> int:
        """Bytes in hand with no validator to check them against are never appended to."""
        if offset > 0 and ranges.validator_for(self.etag, self.last_modified) is None:
            self._note("no ETag or Last-Modified to check the partial against: restarting")
            return self.partial.truncate(0)
        return offset

    def _attempt(self, offset: int) -> _Result:
        """One request with `offset` bytes in hand, and what came of it."""
        if self._plan is not None:  # resuming a file fetched over several connections
            return self._run_segments(None)
        headers = ranges.request_headers(offset, self.etag, self.last_modified)
        try:
            response = self._send_once("GET", headers, auth=self._auth)
        except TransferError as error:
            self._check_stop()
            if not error.is_retryable:
                raise
            return _Result(_Step.RETRY, error)
        self.response = response
        self._live_response = response
        self.has_reached_host = True
        self._fetched_before = self.bytes_fetched
        try:
            with response:
                return self._answer(response, offset, "Range" in headers)
        finally:
            self._end_of_body(self.bytes_fetched - self._fetched_before)  # (no body read)

    def _answer(self, response: Any, offset: int, ranged: bool) -> _Result:
        """Act on the status and headers of an answer (the decisions of `ranges`)."""
        if response.status_code == 401:
            answer = self._tell("on_challenge", response)
            if answer is not None and self._auth is None:
                self._auth = answer
                return _Result(_Step.AGAIN)  # at once, with the credentials
            raise authentication_required(self.url)
        start = ranges.resume_start(offset) if ranged else 0
        decision = ranges.decide(
            response.status_code, response.headers, start, self.bytes_total, offset, ranged
        )
        action = decision.action
        if action is Action.FAIL:
            raise self._status_error(response, offset)
        if action is Action.RETRY:
            return _Result(_Step.RETRY, *self._retry_error(response, decision))
        if action is Action.COMPLETE:
            if not self._commit():
                self._check_stop()
            self._finish(decision.total)
            return _Result(_Step.DONE)
        if action is Action.REFETCH:
            self._note(decision.reason)
            self.partial.truncate(0)
            self.bytes_total = None
            return _Result(_Step.RETRY, TransferError(f"{self.url}: {decision.reason}"))
        if action is Action.RESTART:
            self._note(decision.reason)
            offset = self.partial.truncate(0)
            start = 0
        if action is Action.RESTART or offset == 0:
            self.etag, self.last_modified = ranges.trusted_validators(response.headers)
        self._check_encoding(response.headers)
        validators = (self.etag, self.last_modified, self.bytes_total)
        self.bytes_total = decision.total
        if self.journal is not None and validators != (
            self.etag,
            self.last_modified,
            self.bytes_total,
        ):
            # Record the validators before the first checkpoint (a crash before it must
            # still be resumable with If-Range), on the checkpointer's queue, which runs
            # it ahead of that checkpoint: the receiving thread does not wait for it. Were
            # it lost to a crash, the resume would find no validator and start from 0.
            self.checkpointer.submit(self._journal_validators)
        if offset == 0 and self._may_split(response):
            return self._run_segments(response)
        return self._receive(response, offset, start)

    def _retry_error(
        self, response: Any, decision: ranges.Decision
    ) -> tuple[TransferError, float | None]:
        """What a retryable answer is to the retry loop: its error and its Retry-After."""
        if response.status_code in RETRYABLE_STATUSES:
            error: TransferError = HTTPStatusError(response.status_code, self.url)
        else:  # a malformed answer: the server's fault, tried again as a 5xx is
            error = TransferError(f"{decision.reason} for {self.url}")
        return error, parse_retry_after(response.headers.get("Retry-After"))

    def _status_error(self, response: Any, offset: int) -> HTTPStatusError:
        status = response.status_code
        if status in (404, 410):
            hint = "the server does not have it (any more): check the id or URL"
        elif offset > 0:
            hint = f"the partial ({offset} bytes) is kept; `halftunes resume` tries again"
        else:
            hint = "`halftunes resume` tries again"
        return HTTPStatusError(status, self.url, hint, response.headers.get("Retry-After"))

    def _receive(self, response: Any, offset: int, start: int) -> _Result:
        """The body into the partial, and what the end of it means."""
        try:
            self._stream(response, offset, start)
        except OverlapMismatch:
            self._check_stop()
            self._note(
                "the server's copy changed (the bytes before the resume point "
                "differ): restarting from 0"
            )
            self.partial.truncate(0)
            self.bytes_total = self.etag = self.last_modified = None
            return _Result(_Step.AGAIN)
        except (_BodyError, PartialShrank) as exc:
            self._check_stop()
            error = TransferError(str(exc))
            return _Result(_Step.RETRY, error, progressed=self.bytes_received > offset)
        except TransferError as broken:  # the connection broke mid-body
            self._check_stop()
            return _Result(_Step.RETRY, broken, progressed=self.bytes_received > offset)
        if not self._committed:
            self._check_stop()
        total = self.bytes_total
        if total is not None and self.bytes_received < total:
            short = TransferError(
                f"{self.url}: connection closed after {self.bytes_received} of {total} bytes"
            )
            return _Result(_Step.RETRY, short, progressed=self.bytes_received > offset)
        if self.requires_content and self.bytes_received == 0:
            raise TransferError(
                f"the server sent an empty file for {self.url}",
                "a preview has sound in it: try again later",
            )
        self._finish(total)
        return _Result(_Step.DONE)

    def _check_encoding(self, headers: Any) -> None:
        """We ask for identity; a server that compresses anyway gets its body decoded at the
        end (gzip, deflate), or refused (anything else): never a compressed file under the
        resource's name."""
        encoding = (headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding == "identity":
            self.content_encoding = None
            return
        if encoding not in DECODABLE:
            raise TransferError(
                f"{self.url}: the server sent the file encoded as "
                f"{encoding!r} although halftunes asked for no encoding",
                "halftunes decodes gzip and deflate only",
            )
        if self.content_encoding != encoding:
            self._note(
                f"the server compressed the file ({encoding}) although halftunes asked "
                "for no encoding: it is decoded when complete"
            )
        self.content_encoding = encoding

    def _note(self, message: str) -> None:
        if message and message not in self.notes:
            self.notes.append(message)
            log.info("%s: %s", self.url, message)
            self._tell("on_note", message)

    def _connectivity_changed(self, waiting: bool) -> None:
        if self.journal is None:
            return
        try:
            self.journal.waiting(waiting, self._offline_reason if waiting else None)
        except HalftunesError as exc:  # (the checkpoint's own refusal will stop it)
            log.error("%s: cannot record that it waits for the network: %s", self.url, exc)

    def _journal_validators(self) -> None:
        # Queued when the response arrived; a body that ended first has its settlement
        # write them (one state-file write fewer per small file).
        if not self._body_ended:
            self._journal()

    def _journal(self) -> None:
        """Write the checkpoint into the record, and act on a stop request found there. A
        state file that refuses it (moved, deleted, broken) stops the transfer: its bytes
        would no longer be recorded anywhere. (One at a time: what a call writes is the
        task's state when it runs, never an older one after a newer.)"""
        if self.journal is None:
            return
        try:
            with self._journal_lock:
                request = self.journal.checkpoint(self)
        except HalftunesError as exc:
            log.error("%s: cannot record the checkpoint: %s", self.url, exc)
            self._journal_error = self._journal_error or exc
            self.request_stop("pause")
            return
        if request in ("pause", "cancel"):
            self.request_stop(request)

    def _commit(self) -> bool:
        """The body is whole: from now on it completes, unless a stop came first (False)."""
        with self._state_lock:
            if self._stop.is_set():
                return False
            self._committed = True
            return True

    def request_stop(self, reason: str) -> None:
        with self._state_lock:
            if self._committed:
                return  # the body is whole: it completes (a stop must not lose a finished file)
        super().request_stop(reason)
        engine = self._engine
        if engine is not None:
            engine.stop()

    # -- several connections -----------------------------------------------------------------
    def _may_split(self, response: Any) -> bool:
        """Whether this first answer lets the file go over several connections: ranges served,
        a validator every segment's If-Range can carry, a known length, no encoding. If so,
        the plan is made (`_plan`)."""
        total = self.bytes_total
        if self.connections == 1 or total is None:
            return False
        n = connections_for(self.connections, total)
        reason = None
        if n < 2:
            reason = (
                f"the file is small ({total} bytes)"
                if self.connections > 1
                else f"auto splits files of {AUTO_MIN_BYTES >> 20} MiB or more"
            )
        elif self._restarts >= RESTARTS_SPLIT:
            reason = f"{self._restarts} restarts over several connections"
        elif urlsplit(self.url).scheme not in ("http", "https"):
            reason = "not an HTTP URL"
        elif "bytes" not in (response.headers.get("Accept-Ranges") or "").lower():
            reason = "the server does not say it serves ranges (Accept-Ranges)"
        elif ranges.validator_for(self.etag, self.last_modified) is None:
            reason = "the server gives no strong validator (ETag or Last-Modified)"
        elif self.content_encoding is not None:
            reason = "the server compresses the body"
        if reason is not None:
            log.info("%s: one connection: %s", self.url, reason)
            return False
        self._plan = SegmentPlan.split(total, n)
        log.info("%s: planned %d connections", self.url, n)
        return True

    def _run_segments(self, first: Any) -> _Result:
        """Fetch the file over several connections (`first`: the answer to the first request,
        whose body is the first segment's; None when resuming a recorded plan)."""
        plan = self._plan
        assert plan is not None and self.bytes_total is not None
        fresh = first is not None
        if fresh:
            # The record says the partial is segmented before the partial grows to its full
            # length: a length that vouches for nothing must never be trusted after a crash.
            self._recorded_plan, self._recorded_bytes = plan.snapshot()
            self._journal()
            self._check_stop()
        try:
            self.partial.open_segments(self.bytes_total, fresh)
        except PartialShrank as exc:
            if first is not None:
                first.close()
            return self._restart_segments(str(exc))
        engine = self._engine = SegmentedDownload(self, plan, plan.connections)
        if self._stop.is_set():
            engine.stop()
        complete = False
        try:
            complete = engine.run(first)
        except _Changed as exc:
            self._settle_segments(engine)
            return self._restart_segments(str(exc))
        except BaseException:
            self._settle_segments(engine)
            raise
        if plan.steals:
            log.info("%s: %d ranges taken over by idle connections", self.url, plan.steals)
        if complete and not self._commit():
            complete = False  # a stop came before the last byte: it wins (resume completes it)
        if not complete:
            self._settle_segments(engine)
            self._check_stop()
            raise TransferError(f"{self.url}: the segments ended before the file was whole")
        self._settle_segments(engine, complete=True)
        self._finish(self.bytes_total)
        return _Result(_Step.DONE)

    def _settle_segments(self, engine: SegmentedDownload, complete: bool = False) -> None:
        """After the connections ended: count their bytes, and checkpoint (fsync, then the
        record), or, once the file is whole, fsync it for the rename (unless the group commit
        does) and let no stop undo it."""
        self._engine = None
        self.bytes_fetched += engine.bytes_fetched
        self._fetched_before = self.bytes_fetched - engine.first_bytes
        try:
            if complete:  # from here on it is one whole partial, as one connection leaves it
                assert self.bytes_total is not None
                self.partial.length = self.bytes_total
                if not self.group_commit:  # (else the group commit fsyncs it)
                    self.partial.sync()
                    self.partial.synced = self.bytes_total
                self._forget_plan()
            else:
                self._checkpoint_segments()
        finally:
            self.partial.close()

    def _checkpoint_segments(self) -> None:
        """fsync the partial, then record the plan as it was before the fsync (each segment's
        bytes then written are all on disk)."""
        plan = self._plan
        if plan is None:
            return
        text, done = plan.snapshot()
        self.partial.sync()
        self._recorded_plan, self._recorded_bytes = text, done
        self._journal()

    def _segment_progress(self, n: int) -> None:
        """Bytes written by one of the connections (any thread)."""
        with self._progress_lock:
            received = self.bytes_received
            if received == self.bytes_total:
                self._commit()  # every byte is here: a stop from now on changes nothing
            self._tell("on_data_written", n, received, self.bytes_total)

    def _restart_segments(self, reason: str) -> _Result:
        """The server's copy is not the partial's (or its ranges cannot be used): start again
        from 0, never a splice. Counted: after RESTARTS_SPLIT of them the task goes on over
        one connection (a server that answers ranges badly must not loop forever)."""
        self._check_stop()
        self._note(reason)
        self._forget_plan()
        self.partial.truncate(0)
        self.bytes_total = self.etag = self.last_modified = None
        self._restarts += 1
        return _Result(_Step.AGAIN)

    def _forget_plan(self) -> None:
        self._plan = None
        self._unreadable_plan = False
        self._recorded_plan, self._recorded_bytes = None, 0

    def _stream(self, response: Any, offset: int, start: int) -> None:
        """Write the body at `offset`; its first `offset - start` bytes are the overlap, which
        must equal the partial's before a single byte is appended."""
        readinto = body_reader(response.raw, self.url)
        view = receive_buffer()  # (this thread's, for the whole body)
        limit = self._limit
        reads = view[: limit.chunk_bytes] if limit is not None else view  # (paced: smaller)
        partial = self.partial
        partial.open_at(offset)
        complete = False  # the whole body is in
        total = self.bytes_total
        try:
            if start < offset:
                partial.compare(readinto, view, start, offset, self._stop, self.url, self._read)
                self._check_stop()
            while self._committed or not self._stop.is_set():
                n = readinto(reads)
                if not n:
                    complete = self._body_ended = total is None or partial.length >= total
                    if complete and not self._committed and not self._commit():
                        complete = False  # a stop came first: it wins
                    break
                partial.write(reads[:n])
                self.bytes_fetched += n
                if limit is not None:
                    limit.take(n, self._stop)
                if total is not None and partial.length > total:
                    raise _BodyError(f"{self.url}: more bytes than announced")
                if total is not None and partial.length == total:
                    self._commit()  # every byte is here: a stop from now on changes nothing
                self._tell("on_data_written", n, partial.length, total)
                if partial.is_checkpoint_due:  # the disk is the checkpointer's to wait for
                    partial.checkpoint_async(self.checkpointer, lambda _: self._journal())
                if partial.is_far_ahead:  # ... unless we run too far ahead of it
                    partial.checkpoint_async(self.checkpointer, lambda _: self._journal())
                    partial.wait_for_checkpoint()
        except BaseException:
            with self._state_lock:
                self._committed = False  # (more bytes than announced: it is no whole body)
            raise
        finally:
            self._end_of_body(self.bytes_fetched - self._fetched_before)  # (before the end)
            # At a clean end the task's settlement records the length; only a stop or an
            # error needs the journal written here. A failed fsync fails the task.
            try:
                if not (complete and self.group_commit):  # else the group commit fsyncs it
                    partial.checkpoint()
            finally:
                if not complete:
                    self._journal()
                partial.close()

    def _read(self, n: int) -> None:
        self.bytes_fetched += n

    def _finish(self, total: int | None) -> None:
        if self.group_commit:
            # The body is whole and written; the fsync, the rename and the task's end are
            # the runner's, done for several files at once (`finish_handed_off`).
            self._handed_off = True
            self._handed_total = total
            return
        self._finish_now(total)

    @property
    def is_handed_off(self) -> bool:
        """The body is complete and awaits `finish_handed_off` (group commit)."""
        return self._handed_off

    def finish_handed_off(self, sync_error: OSError | None = None) -> None:
        """End a handed-off task once the group commit has fsynced its partial (or failed to:
        `sync_error`): rename it, complete. Every error ends the task as it would have on its
        own thread."""
        assert self._handed_off

        def step() -> None:
            if sync_error is not None:
                raise disk_error(sync_error, self.part_path) from sync_error
            self._finish_now(self._handed_total)

        self._handed_off = False
        self._guarded(step)

    def _verify(self, path: Path) -> None:
        """The file's digest is the one asked for, or nothing of it is kept (no final file,
        no partial) and the download fails for good, saying both digests."""
        assert self.checksum is not None
        algorithm, expected = self.checksum
        digest = hashlib.new(algorithm)
        try:
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
        except OSError as exc:
            raise disk_error(exc, path) from exc
        if digest.hexdigest() == expected:
            return
        self.partial.discard()
        if path == self.destination:
            path.unlink(missing_ok=True)
        error = TransferError(
            f"{self.destination.name}: checksum mismatch: expected {algorithm} {expected}, "
            f"got {digest.hexdigest()}; the file was not kept",
            "check the checksum you gave, or whether the server's file changed",
        )
        error.is_permanent = True
        raise error

    def abandon_handed_off(self, error: HalftunesError) -> None:
        """End a handed-off task without renaming it (its group cannot be committed: the
        state file is gone): failed with `error`, the partial kept."""
        assert self._handed_off

        def step() -> None:
            raise error

        self._handed_off = False
        self._guarded(step)

    def _finish_now(self, total: int | None) -> None:
        """Rename the whole body to its final name (size-checked, and checked against
        `checksum` when one is given): a committed download completes, whatever stop
        arrives meanwhile."""
        if self.checksum is not None and self.content_encoding is None:
            self._verify(self.part_path)
        size = self.partial.finish(self.destination, total, self.content_encoding)
        if self.checksum is not None and self.content_encoding is not None:
            self._verify(self.destination)  # (decoded only now: checked where it lies)
        self.bytes_total = size if total is None else total
        self.location = self.destination
        self._move(TaskState.COMPLETED)
        self._tell("on_finished_downloading", self.destination)
        self._complete()

    def _on_stopped(self) -> None:
        if self._journal_error is not None:  # stopped because its record cannot be written
            self._fail(self._journal_error)
            return
        if self._stop_reason == "cancel" and self.journal is None:
            self.partial.discard()  # a recorded download's partial is the records' to delete
        super()._on_stopped()

    def _release(self) -> None:
        self.partial.release()

    def _call_completion(self) -> None:
        assert self.completion is not None
        self.completion(self.location, self.response, self.error)
