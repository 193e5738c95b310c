"""Data, upload and download tasks, their lifecycle, and `ResumeData` (the resume engine)."""

from __future__ import annotations

import contextlib
import enum
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import requests
import urllib3

from . import ranges
from .errors import (
    Cancelled,
    DiskError,
    HalftunesError,
    HTTPStatusError,
    TransferError,
    UsageError,
)
from .ranges import Action
from .session import authentication_required, translate_request_error

if TYPE_CHECKING:
    from .session import Session

CHUNK_BYTES = 1 << 20
CHECKPOINT_SECONDS = 1.0
RESUME_DATA_VERSION = 1


class TaskState(enum.Enum):
    """A task's lifecycle. Allowed moves are listed in `_TRANSITIONS`, nowhere else."""

    SUSPENDED = "suspended"  # created, not started (NSURLSessionTaskStateSuspended)
    RUNNING = "running"
    PAUSED = "paused"  # stopped with resume data kept
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


_TRANSITIONS = {
    TaskState.SUSPENDED: {TaskState.RUNNING, TaskState.CANCELLED},
    TaskState.RUNNING: {TaskState.PAUSED, TaskState.COMPLETED, TaskState.FAILED,
                        TaskState.CANCELLED},
    TaskState.PAUSED: set(),
    TaskState.COMPLETED: set(),
    TaskState.FAILED: set(),
    TaskState.CANCELLED: set(),
}  # fmt: skip


class IllegalTransition(HalftunesError):
    pass


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
            raise UsageError(f"invalid resume data: {exc}") from None


class Journal(Protocol):
    """Where a download task records its checkpoints (the state file, or nothing)."""

    def checkpoint(self, task: DownloadTask) -> str | None: ...


class Task:
    """Common lifecycle: created suspended, `resume()` runs it on its own thread."""

    def __init__(self, session: Session, url: str, completion: Callable | None = None):
        self.session = session
        self.task_identifier = session._new_task_id()
        self.url = url
        self.completion = completion
        self.state = TaskState.SUSPENDED
        self.error: HalftunesError | None = None
        self.response: requests.Response | None = None
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._state_lock = threading.Lock()
        self._live_response: requests.Response | None = None

    def _move(self, new: TaskState) -> None:
        with self._state_lock:
            if new not in _TRANSITIONS[self.state]:
                raise IllegalTransition(f"task {self.task_identifier}: {self.state.value} -> "
                                        f"{new.value} is not allowed")  # fmt: skip
            self.state = new

    def resume(self) -> Task:
        """Start the task (NSURLSessionTask.resume). A finished task cannot be resumed."""
        self._move(TaskState.RUNNING)
        self._thread = threading.Thread(target=self._main, name=f"task-{self.task_identifier}",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def run(self) -> Task:
        """Run on the calling thread and return when finished (for scripts and the CLI)."""
        self._move(TaskState.RUNNING)
        self._main()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        if self.state is TaskState.SUSPENDED:
            return False
        return self._done.wait(timeout)

    def cancel(self) -> None:
        if self.state is TaskState.SUSPENDED:
            self._move(TaskState.CANCELLED)
            self._done.set()
            return
        self.request_stop("cancel")

    def request_stop(self, reason: str) -> None:
        """Ask a running task to stop ('pause' or 'cancel'); it stops within one chunk."""
        if self._stop_reason is None or reason == "cancel":
            self._stop_reason = reason
        self._stop.set()
        self._abort_connection()

    def _abort_connection(self) -> None:
        # Wakes a read blocked on a stalled socket, so a pause never waits for a timeout.
        response = self._live_response
        if response is None:
            return
        import socket

        raw = getattr(response, "raw", None)
        for getter in (
            lambda: raw._connection.sock,  # urllib3 2
            lambda: raw._fp.fp.raw._sock,  # http.client below it
        ):
            with contextlib.suppress(Exception):
                sock = getter()
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
                    return

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise Cancelled(self._stop_reason or "cancel")

    def _main(self) -> None:
        try:
            self._execute()
        except Cancelled:
            self._on_stopped()
        except HalftunesError as exc:
            self._fail(exc)
        except OSError as exc:
            self._fail(_disk_error(exc, getattr(self, "part_path", None)))
        except Exception as exc:  # a bug must still end the task, never hang a waiter
            self._fail(translate_request_error(exc, self.url))
        finally:
            self._live_response = None
            self._done.set()

    def _execute(self) -> None:
        raise NotImplementedError

    def _on_stopped(self) -> None:
        self._move(TaskState.CANCELLED if self._stop_reason == "cancel" else TaskState.PAUSED)
        self.error = Cancelled("cancelled" if self._stop_reason == "cancel" else "paused")
        self._complete()

    def _fail(self, exc: HalftunesError) -> None:
        self.error = exc
        self._move(TaskState.FAILED)
        self._complete()

    def _complete(self) -> None:
        self.session.call_delegate("on_complete", self, self.error)
        if self.completion is not None:
            self._call_completion()

    def _call_completion(self) -> None:
        # data and upload tasks: completion(data, response, error)
        self.completion(getattr(self, "data", None), self.response, self.error)


class DataTask(Task):
    """GET a resource into memory; completion(data, response, error)."""

    def __init__(self, session: Session, url: str, completion: Callable | None = None,
                 retry_statuses: frozenset[int] = ranges.RETRYABLE_STATUSES,
                 max_bytes: int = 64 << 20):  # fmt: skip
        super().__init__(session, url, completion)
        self.data: bytes | None = None
        self.retry_statuses = retry_statuses
        self.max_bytes = max_bytes

    def _execute(self) -> None:
        response = self.session.send_with_retries(
            "GET", self.url, stop=self._stop, retry_statuses=self.retry_statuses,
            on_challenge=lambda r: self.session.call_delegate("on_challenge", self, r),
        )  # fmt: skip
        self.response = response
        self._live_response = response
        body = bytearray()
        with response:
            for chunk in response.iter_content(64 * 1024):
                self._check_stop()
                body += chunk
                if len(body) > self.max_bytes:
                    raise TransferError(f"response from {self.url} is larger than "
                                        f"{self.max_bytes} bytes; refusing to buffer it")  # fmt: skip
        self.data = bytes(body)
        self.session.call_delegate("on_data_received", self, self.data)
        self._move(TaskState.COMPLETED)
        self._complete()


class _CountingFile:
    """Streams a file for an upload and reports on_data_sent as it goes (constant memory)."""

    def __init__(self, task: UploadTask, path: Path):
        self.task = task
        self.path = path
        self.total = path.stat().st_size
        self.sent = 0

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            while True:
                self.task._check_stop()
                chunk = f.read(256 * 1024)
                if not chunk:
                    return
                self.sent += len(chunk)
                self.task.bytes_sent = self.sent
                self.task.session.call_delegate(
                    "on_data_sent", self.task, len(chunk), self.sent, self.total
                )
                yield chunk


class UploadTask(Task):
    """PUT or POST a file, streamed; completion(data, response, error)."""

    def __init__(self, session: Session, url: str, file_path: Path, method: str = "PUT",
                 headers: dict[str, str] | None = None, completion: Callable | None = None):  # fmt: skip
        super().__init__(session, url, completion)
        method = method.upper()
        if method not in ("PUT", "POST"):
            raise UsageError(f"upload method must be PUT or POST, not {method}")
        if not file_path.is_file():
            raise UsageError(f"no such file: {file_path}")
        self.file_path = file_path
        self.method = method
        self.headers = dict(headers or {})
        self.bytes_sent = 0
        self.bytes_expected = file_path.stat().st_size
        self.data: bytes | None = None

    def _execute(self) -> None:
        headers = {"Content-Length": str(self.bytes_expected), **self.headers}
        headers.setdefault("Content-Type", "application/octet-stream")

        def body() -> Any:
            self.bytes_sent = 0
            return _CountingFile(self, self.file_path)

        response = self.session.send_with_retries(
            self.method, self.url, headers, data_factory=body, stop=self._stop,
            on_challenge=lambda r: self.session.call_delegate("on_challenge", self, r),
        )  # fmt: skip
        self.response = response
        with response:
            self.data = response.content[: 1 << 20]
        if response.status_code >= 400:
            raise HTTPStatusError(response.status_code, self.url)
        self._move(TaskState.COMPLETED)
        self._complete()


def _disk_error(exc: OSError, part_path: Any) -> DiskError:
    import errno

    where = f" writing {part_path}" if part_path else ""
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return DiskError(f"disk full{where}", "free some space, then `halftunes resume ID`")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return DiskError(f"permission denied{where}", "choose a writable folder with -o DIR")
    return DiskError(f"disk error{where}: {exc.strerror or exc}")


class DownloadTask(Task):
    """Download to `<destination>.part`, checkpoint, resume with Range/If-Range, rename.

    completion(location, response, error); delegate on_data_written,
    on_finished_downloading, on_complete. `journal` persists checkpoints.
    """

    def __init__(
        self,
        session: Session,
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
            from .naming import url_filename

            destination = Path(session.configuration.download_dir) / url_filename(url)
        self.destination = Path(destination)
        self.part_path = Path(str(self.destination) + ".part")
        self.record_id = record_id
        self.journal = journal
        self.bytes_received = 0  # bytes in the partial
        self.bytes_total: int | None = None
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.bytes_fetched = 0  # bytes that crossed the network in this task
        self.notes: list[str] = []  # things the user should hear (restarts)
        self.location: Path | None = None
        self._synced = 0
        self._auth: Any = None  # credentials from on_challenge, once given
        self._last_error: HalftunesError | None = None
        self._retry_after: float | None = None
        if resume_data is not None:
            self.part_path = Path(resume_data.part_path)
            self.bytes_received = resume_data.offset
            self._synced = resume_data.offset
            self.bytes_total = resume_data.bytes_total
            self.etag = resume_data.etag
            self.last_modified = resume_data.last_modified

    # -- public ----------------------------------------------------------------------------
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
            url=self.url, destination=str(self.destination), part_path=str(self.part_path),
            offset=self._synced, bytes_total=self.bytes_total, etag=self.etag,
            last_modified=self.last_modified,
        )  # fmt: skip

    # -- the engine ------------------------------------------------------------------------
    def _execute(self) -> None:
        cfg = self.session.configuration
        try:
            self.destination.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _disk_error(exc, self.destination.parent) from None
        offset = self._starting_offset()
        deadline = time.monotonic() + cfg.resource_timeout
        failures = 0
        high_water = offset
        while True:
            self._check_stop()
            if time.monotonic() > deadline:
                raise TransferError(f"resource timeout ({cfg.resource_timeout:.0f}s) reached "
                                    f"for {self.url}", "resume it later with `halftunes resume`")  # fmt: skip
            headers = ranges.request_headers(offset, self.etag, self.last_modified)
            if offset > 0 and "Range" not in headers:
                self._note("no ETag or Last-Modified to check the partial against: restarting")
                offset = self._truncate(0)
            progressed, outcome = self._attempt(offset, headers)
            offset = self.bytes_received
            if outcome == "done":
                return
            # Only new ground counts as progress: a server that keeps breaking the same way
            # (and sends us back to byte 0) must still run out of retries.
            if progressed and self.bytes_received > high_water:
                high_water = self.bytes_received
                failures = 0
            else:
                failures += 1
            if failures > cfg.retries:
                raise self._last_error or TransferError(f"giving up on {self.url}")
            wait = self.session.backoff_seconds(max(failures, 1), self._retry_after)
            self.session.log(f"retrying {self.url} from byte {offset} in {wait:.1f}s")
            if self._stop.wait(wait):
                self._check_stop()

    def _attempt(self, offset: int, headers: dict[str, str]) -> tuple[bool, str]:
        """One request. Returns (bytes flowed?, 'done' | 'retry')."""
        self._retry_after = None
        try:
            response = self.session.open("GET", self.url, headers, auth=self._auth)
        except requests.exceptions.RequestException as exc:
            error = translate_request_error(exc, self.url)
            if isinstance(exc, requests.exceptions.SSLError) or isinstance(error, UsageError):
                raise error from None
            self._last_error = error
            return False, "retry"
        self.response = response
        self._live_response = response
        with response:
            if response.status_code == 401:
                answer = self.session.call_delegate("on_challenge", self, response)
                if answer is not None and self._auth is None:
                    self._auth = answer
                    return True, "retry"
                raise authentication_required(self.url)
            decision = ranges.decide(response.status_code, response.headers, offset,
                                     self.bytes_total)  # fmt: skip
            action = decision.action
            if action is Action.FAIL:
                raise HTTPStatusError(response.status_code, self.url,
                                      "the partial is kept; `halftunes resume` tries again")  # fmt: skip
            if action is Action.RETRY:
                self._retry_after = ranges.parse_retry_after(response.headers.get("Retry-After"))
                self._last_error = HTTPStatusError(response.status_code, self.url)
                return False, "retry"
            if action is Action.COMPLETE:
                self._finish(decision.total)
                return True, "done"
            if action is Action.REFETCH:
                self._note(decision.reason)
                self._truncate(0)
                self.bytes_total = None
                self._last_error = TransferError(f"{self.url}: {decision.reason}")
                return False, "retry"
            if action is Action.RESTART:
                self._note(decision.reason)
                offset = self._truncate(0)
            if action is Action.RESTART or offset == 0:
                self.etag = response.headers.get("ETag")
                self.last_modified = response.headers.get("Last-Modified")
            validators = (self.etag, self.last_modified, self.bytes_total)
            self.bytes_total = decision.total
            if self.journal is not None and validators != (
                self.etag,
                self.last_modified,
                self.bytes_total,
            ):
                # Record the validators before the first byte: a crash before the first
                # checkpoint must still be resumable with If-Range.
                request = self.journal.checkpoint(self)
                if request in ("pause", "cancel"):
                    self.request_stop(request)
                    self._check_stop()
            start = offset
            try:
                self._stream(response, offset)
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
                    OSError) as exc:  # fmt: skip
                self._check_stop()
                self._last_error = translate_request_error(exc, self.url)
                return self.bytes_received > start, "retry"
            except _BodyError as exc:
                self._check_stop()
                self._last_error = TransferError(str(exc))
                return self.bytes_received > start, "retry"
            self._check_stop()
            total = self.bytes_total
            if total is not None and self.bytes_received < total:
                self._last_error = TransferError(
                    f"{self.url}: connection closed after {self.bytes_received} of {total} bytes"
                )
                return self.bytes_received > start, "retry"
            self._finish(total)  # (more bytes than announced stopped _stream already)
            return True, "done"

    def _starting_offset(self) -> int:
        """Bytes of the partial we may append to (never beyond what is known on disk)."""
        try:
            size = self.part_path.stat().st_size
        except FileNotFoundError:
            self.bytes_received = self._synced = 0
            return 0
        except OSError as exc:
            raise _disk_error(exc, self.part_path) from None
        keep = size
        if self.bytes_total is not None and keep > self.bytes_total:
            keep = 0
        if keep != size:
            self._truncate(keep)
        self.bytes_received = self._synced = keep
        return keep

    def _truncate(self, length: int) -> int:
        try:
            with open(self.part_path, "ab") as f:
                f.truncate(length)
                os.fsync(f.fileno())
        except OSError as exc:
            raise _disk_error(exc, self.part_path) from None
        self.bytes_received = self._synced = length
        return length

    def _note(self, message: str) -> None:
        if message and message not in self.notes:
            self.notes.append(message)
            self.session.log(f"{self.url}: {message}")
            self.session.call_delegate("on_note", self, message)

    def _stream(self, response: requests.Response, offset: int) -> None:
        read = _chunk_reader(response.raw)
        try:
            f = open(self.part_path, "r+b" if self.part_path.exists() else "wb")
        except OSError as exc:
            raise _disk_error(exc, self.part_path) from None
        last_checkpoint = time.monotonic()
        at_eof = False
        try:
            if os.fstat(f.fileno()).st_size < offset:
                # The partial lost bytes under us (deleted or cut): never append after a hole.
                f.truncate(0)
                self.bytes_received = self._synced = 0
                raise _BodyError(f"{self.part_path} shrank while paused: restarting from 0")
            f.seek(offset)
            f.truncate(offset)
            while not self._stop.is_set():
                chunk = read(CHUNK_BYTES)
                if not chunk:
                    at_eof = True
                    break
                try:
                    f.write(chunk)
                except OSError as exc:
                    self._sync_after_error(f)
                    raise _disk_error(exc, self.part_path) from None
                self.bytes_received += len(chunk)
                self.bytes_fetched += len(chunk)
                if self.bytes_total is not None and self.bytes_received > self.bytes_total:
                    raise _BodyError(f"{self.url}: more bytes than announced")
                self.session.call_delegate("on_data_written", self, len(chunk),
                                           self.bytes_received, self.bytes_total)  # fmt: skip
                now = time.monotonic()
                if now - last_checkpoint >= CHECKPOINT_SECONDS:
                    self._checkpoint(f)
                    last_checkpoint = now
        finally:
            # At a clean end the task's settlement records the length; only a stop or an
            # error needs the journal written here.
            with contextlib.suppress(OSError):
                self._checkpoint(f, journal=not at_eof)
            f.close()

    def _sync_after_error(self, f: Any) -> None:
        # A failed write may leave a short tail: what is in the file is still good bytes.
        with contextlib.suppress(OSError):
            f.flush()
        with contextlib.suppress(OSError):
            self.bytes_received = os.fstat(f.fileno()).st_size

    def _checkpoint(self, f: Any, journal: bool = True) -> None:
        """fsync the partial, then record its length: the record never runs ahead of the disk."""
        f.flush()
        os.fsync(f.fileno())
        self._synced = self.bytes_received
        if journal and self.journal is not None:
            request = self.journal.checkpoint(self)
            if request in ("pause", "cancel"):
                self.request_stop(request)

    def _finish(self, total: int | None) -> None:
        size = self.part_path.stat().st_size if self.part_path.exists() else 0
        if total is not None and size != total:
            raise TransferError(f"{self.url}: size check failed ({size} of {total} bytes)")
        self.bytes_total = size if total is None else total
        self.bytes_received = self._synced = size
        self._check_stop()
        # The data was fsynced before the rename, so the final name can never show
        # unwritten bytes. The rename itself is not fsynced (on ext4 that forces a journal
        # commit per file): after a power cut it may be undone, and the download then
        # shows as not finished and is fetched again, never as a corrupt file.
        os.replace(self.part_path, self.destination)
        self.location = self.destination
        self._move(TaskState.COMPLETED)
        self.session.call_delegate("on_finished_downloading", self, self.destination)
        self._complete()

    def _on_stopped(self) -> None:
        if self._stop_reason == "cancel":
            with contextlib.suppress(OSError):
                self.part_path.unlink()
        super()._on_stopped()

    def _call_completion(self) -> None:
        self.completion(self.location, self.response, self.error)


class _BodyError(Exception):
    pass


def _chunk_reader(raw: Any) -> Callable[[int], bytes]:
    """Read what has arrived, up to n bytes, undecoded (byte ranges count encoded bytes)."""
    if isinstance(raw, urllib3.HTTPResponse):
        return lambda n: raw.read1(n, decode_content=False)
    return raw.read  # a custom protocol handler's file-like body
