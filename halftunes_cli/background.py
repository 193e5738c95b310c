"""The background session's client side: start the worker, hand it records, and
`BackgroundDownloadTask`, a Task whose truth is its record (reattachable by identifier)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import os
import select
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from .config import transfer_settings
from .errors import HalftunesError, StateError, TransferError, UnknownIdError, UsageError
from .liveness import WORKER_LOCK
from .records import (
    ACTIVE,
    ENDING_STATUS,
    DownloadRecord,
    Records,
    RecordStatus,
    Schedule,
    StopRequest,
)
from .targets import Target, check_download_dir, url_record_id, url_target
from .tasks import ResumeData, Task, TaskState
from .tasks.base import TaskHost

WORKER_PID = "worker.pid"
WORKER_WAKE = "worker.wake"  # a FIFO: a byte written to it wakes an idle worker at once
WORKER_LOG = "worker.log"
LOG_MAX_BYTES = 1 << 20
POLL_SECONDS = 0.1
log = logging.getLogger(__name__)


def rotate_log(path: Path, max_bytes: int = LOG_MAX_BYTES) -> None:
    try:
        if path.stat().st_size > max_bytes:
            os.replace(path, path.with_name(path.name + ".1"))
    except OSError:
        pass


def ensure_worker(state_dir: Path) -> bool:
    """Start the worker unless one runs; True when this call started it.

    The worker lock is taken here and its descriptor handed to the child, so the lock is
    held without a gap from this moment on: ten racing callers start exactly one worker.
    A worker that cannot be started (its lock or log is not a plain file, no descriptors
    left) is a StateError that says which.
    """
    state_dir = Path(state_dir)
    try:
        return _start_worker(state_dir)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.EISDIR, errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
            reason = f"{exc.filename} is not a plain file"
        raise StateError(
            f"cannot start the background worker: {reason}",
            f"nothing is lost: the downloads stay queued; fix {state_dir}, then `halftunes wait`",
        ) from exc


def wake_worker(state_dir: Path) -> None:
    """Tell a running worker to look at its queue now (it may be asleep until a start date).
    Best effort: without a worker reading the FIFO, nothing happens."""
    try:
        fd = os.open(state_dir / WORKER_WAKE, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return  # no FIFO, or nobody reads it (ENXIO)
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):  # (never write into someone's plain file)
            os.write(fd, b"\0")
    except OSError:
        pass  # full (already woken many times) or gone
    finally:
        os.close(fd)


class WakeChannel:
    """The worker's end of the wake FIFO: `wait(timeout)` returns when woken or at the
    timeout. Without a FIFO (a file system that has none) it is a plain sleep."""

    def __init__(self, state_dir: Path):
        self.fd: int | None = None
        path = state_dir / WORKER_WAKE
        try:
            with contextlib.suppress(FileExistsError):
                os.mkfifo(path, 0o600)
            # read and write: the FIFO never reads as closed, whoever comes and goes
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            return
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            self.fd = fd
        else:
            os.close(fd)

    def wait(self, timeout: float) -> None:
        if self.fd is None:  # nobody can wake it: look again often (new work waits no longer)
            time.sleep(min(timeout, POLL_SECONDS))
            return
        readable, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if readable:
            with contextlib.suppress(OSError):
                while os.read(self.fd, 4096):
                    pass

    def wake(self) -> None:
        """From within the worker (a signal handler): end the current wait."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.fd, b"\0")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _start_worker(state_dir: Path) -> bool:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    nofollow = os.O_NOFOLLOW  # (a symlink here is nothing we made: never write through it)
    fd = os.open(state_dir / WORKER_LOCK, os.O_RDWR | os.O_CREAT | nofollow, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        wake_worker(state_dir)  # it runs: new work (or a new date) for it to look at
        return False
    try:
        log_path = state_dir / WORKER_LOG
        rotate_log(log_path)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | nofollow, 0o600)
        try:
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "halftunes_cli.worker",
                    "--state-dir",
                    str(state_dir),
                    "--lock-fd",
                    str(fd),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                pass_fds=(fd,),
                start_new_session=True,
                cwd="/",
                close_fds=True,
            )
        finally:
            os.close(log_fd)
    finally:
        os.close(fd)  # the child keeps the lock through its own copy
    log.debug("started the background worker for %s", state_dir)
    return True


# A record's status as a task state: the records' one mapping of endings, read backwards
# (NSURLSession shows a background task that waits for the worker as running).
_TASK_STATE = {
    **{status: TaskState(ending.value) for ending, status in ENDING_STATUS.items() if status},
    RecordStatus.QUEUED: TaskState.RUNNING,
    RecordStatus.WAITING: TaskState.RUNNING,
    RecordStatus.RUNNING: TaskState.RUNNING,
}


class BackgroundHost(TaskHost, Protocol):
    """What a background task needs of its session: the records, too."""

    @property
    def records(self) -> Records: ...


class BackgroundDownloadTask(Task):
    """A download handed to the worker. Same protocol as `DownloadTask` (states, errors,
    completion, cancel_producing_resume_data), but the record in the state file is the truth:
    another process can reattach to it by the session's identifier."""

    def __init__(
        self,
        session: Any,
        url: str,
        destination: str | Path | None = None,
        completion: Callable | None = None,
        record_id: str | None = None,
    ):
        super().__init__(session, url, completion)
        self.host: BackgroundHost = session
        session.configuration.check_url(url)
        self.destination = Path(destination) if destination else None
        self.id = record_id or url_record_id(url)  # its record's (a background task has one)
        self.record_id = self.id
        self._started = record_id is not None  # a reattached task is already under way
        self._reported = False

    # -- the record is the truth -----------------------------------------------------------
    @property
    def records(self) -> Records:
        return self.host.records

    @property
    def record(self) -> dict[str, Any] | None:
        """The record as `halftunes list --json` shows it (None once cancelled)."""
        record = self._record()
        return record.public() if record is not None else None

    def _record(self) -> DownloadRecord | None:
        return self.records.get(self.id)

    @property
    def state(self) -> TaskState:
        if not self._started:
            return self._local_state
        record = self._record()
        return _TASK_STATE[record.status] if record is not None else TaskState.CANCELLED

    @state.setter
    def state(self, value: TaskState) -> None:
        self._local_state = value

    @property
    def error(self) -> HalftunesError | None:
        record = self._record() if self._started else None
        if record is not None and record.status is RecordStatus.FAILED:
            return TransferError(record.error or "failed")
        return None

    @error.setter
    def error(self, value: HalftunesError | None) -> None:
        pass  # derived from the record

    @property
    def bytes_received(self) -> int:
        record = self._record()
        return record.bytes_received if record is not None else 0

    @property
    def bytes_total(self) -> int | None:
        record = self._record()
        return record.bytes_total if record is not None else None

    @property
    def label(self) -> str:
        return self.destination.name if self.destination else super().label

    @property
    def progress(self) -> tuple[int, int | None]:
        record = self._record()
        return (record.bytes_received, record.bytes_total) if record is not None else (0, None)

    @property
    def location(self) -> Path | None:
        record = self._record()
        if record is not None and record.status is RecordStatus.COMPLETED:
            return Path(record.path)
        return None

    def metrics_summary(self) -> dict[str, Any] | None:
        """The worker measured the transfer: its figures are in the record (`metrics`
        itself, with every transaction, stays in the worker)."""
        record = self._record()
        return record.metrics_summary if record is not None else None

    # -- lifecycle --------------------------------------------------------------------------
    def resume(self) -> BackgroundDownloadTask:
        """Queue the download for the worker (and start the worker if none runs)."""
        schedule = self._schedule()  # (bad values: a UsageError, the task untouched)
        if not self._started:
            self._move(TaskState.RUNNING)
        cfg = self.session.configuration
        record = self.records.get(self.id)
        folder = self.destination.parent if self.destination else Path(cfg.download_dir)
        folder = check_download_dir(folder)
        item: Target | DownloadRecord | None = record
        if record is None:
            name = self.destination.name if self.destination else None
            item = url_target(self.url, record_id=self.id, filename=name)
        elif record.status not in (RecordStatus.PAUSED, RecordStatus.FAILED):
            item = None  # queued, running or done: nothing to hand over again
        if item is not None:
            self.records.claim(
                [item],
                owner=None,
                force=False,
                queue=True,
                download_dir=folder,
                session_kind="background",
                settings=transfer_settings(cfg),
                schedule=schedule,
            )
        self.records.tag_session(self.id, cfg.identifier)
        self._started = True
        ensure_worker(Path(cfg.state_dir))
        return self

    def _schedule(self) -> Schedule:
        """The task's earliest_begin_date (a datetime, or seconds since the epoch) and
        priority (0.0-1.0), checked: anything else is a UsageError."""
        when = self.earliest_begin_date
        try:
            if isinstance(when, datetime):
                when = (when if when.tzinfo else when.astimezone()).timestamp()
            elif when is not None and (isinstance(when, bool) or not isinstance(when, int | float)):
                raise TypeError
            if when is not None and not math.isfinite(when):
                raise ValueError
        except (TypeError, ValueError, OverflowError, OSError):
            raise UsageError(
                f"a task's earliest_begin_date is a datetime or seconds since the epoch, "
                f"not {self.earliest_begin_date!r}"
            ) from None
        priority: Any = self.priority  # (a caller may have set anything)
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int | float)
            or not 0.0 <= priority <= 1.0
        ):
            raise UsageError(f"a task's priority is a number from 0.0 to 1.0, not {priority!r}")
        return Schedule(float(when) if when is not None else None, float(priority))

    def run(self) -> BackgroundDownloadTask:
        self.resume()
        self.wait()
        if self.callback_error is not None:
            raise self.callback_error
        return self

    def wait(self, timeout: float | None = None) -> bool:
        if not self._started:
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.records.reconcile_dead_owners()
            record = self._record()
            if record is None or record.status not in ACTIVE:
                self._report()
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(POLL_SECONDS)

    def _report(self) -> None:
        if self._reported:
            return
        self._reported = True
        self._tell("on_complete", self.error)
        if self.state is TaskState.COMPLETED:
            self._tell("on_finished_downloading", self.location)
        if self.completion is not None:
            try:
                self.completion(self.location, None, self.error)
            except Exception as exc:  # noqa: BLE001 - the caller's handler: reported, not ours
                self._callback_failed("completion", exc)

    def request_stop(self, reason: str) -> None:
        if not self._started:
            return
        try:
            self.records.request_stop(self.id, StopRequest(reason))
        except UnknownIdError:
            return  # already gone (cancelled elsewhere): nothing left to stop
        self.records.wait_until_stopped(self.id)

    def cancel(self) -> None:
        if not self._started:
            super().cancel()
            self._local_state = TaskState.CANCELLED
            return
        self.request_stop("cancel")

    def suspend(self) -> None:
        self.request_stop("pause")

    def cancel_producing_resume_data(self, timeout: float | None = 30) -> ResumeData | None:
        if not self._started:
            self.cancel()
            return None
        self.request_stop("pause")
        record = self._record()
        if record is None or record.status is not RecordStatus.PAUSED:
            return None
        return ResumeData(
            record.url,
            record.path,
            record.part_path,
            record.bytes_received,
            record.bytes_total,
            record.etag,
            record.last_modified,
        )


def reattach(session: Any) -> list[BackgroundDownloadTask]:
    """The tasks a background session with this identifier handed to the worker before."""
    ident = session.configuration.identifier
    return [
        BackgroundDownloadTask(session, r.url, r.path, record_id=r.id)
        for r in session.records.of_session(ident)
    ]
