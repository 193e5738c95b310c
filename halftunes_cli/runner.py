"""Runs claimed records as download tasks, up to N at once, steerable from other processes.

A control thread polls the state file every 50 ms for pause/cancel requests that other
processes left on this process's records, and stops exactly those tasks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import HalftunesError
from .records import DownloadRecord, Records
from .session import Session
from .tasks import DownloadTask, ResumeData

CONTROL_POLL_SECONDS = 0.05


@dataclass
class Outcome:
    """How one id ended in one command."""

    id: str
    status: str  # completed | paused | failed | cancelled | skipped | refused | queued
    record: DownloadRecord | None = None
    error: HalftunesError | None = None
    notes: list[str] = field(default_factory=list)


class _RecordJournal:
    """A download task's checkpoints, written into its record."""

    def __init__(self, records: Records, owner: str, record_id: str):
        self.records = records
        self.owner = owner
        self.record_id = record_id

    def checkpoint(self, task: DownloadTask) -> str | None:
        request = self.records.checkpoint(self.record_id, self.owner, task.bytes_synced,
                                          task.bytes_total, task.etag, task.last_modified)  # fmt: skip
        return str(request) if request is not None else None


class Runner:
    """`session_for` picks the session a record runs in (the worker: one per distinct set of
    settings the queuing commands carried); by default every record runs in `session`."""

    def __init__(self, session: Session, owner: str,
                 session_for: Callable[[DownloadRecord], Session] | None = None):  # fmt: skip
        self.session = session
        self.session_for = session_for or (lambda record: session)
        self.records = session.records
        self.owner = owner
        self.tasks: dict[str, DownloadTask] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._control: threading.Thread | None = None
        self.pool = ThreadPoolExecutor(max_workers=session.configuration.max_connections_per_host,
                                       thread_name_prefix="transfer")  # fmt: skip

    def start_control(self) -> None:
        if self.records.is_persistent and self._control is None:
            self._control = threading.Thread(target=self._control_loop, daemon=True,
                                             name="control")  # fmt: skip
            self._control.start()

    def _control_loop(self) -> None:
        while not self._stopping.wait(CONTROL_POLL_SECONDS):
            try:
                requests_ = self.records.stop_requests(self.owner)
            except HalftunesError:
                continue
            for rid, request in requests_.items():
                with self._lock:
                    task = self.tasks.get(rid)
                if task is not None:
                    task.request_stop(str(request))

    def submit(self, record: DownloadRecord,
               on_done: Callable[[Outcome], None] | None = None) -> Future[Outcome]:  # fmt: skip
        resume_data = ResumeData(record.url, record.path, record.part_path,
                                 int(record.bytes_received or 0), record.bytes_total,
                                 record.etag, record.last_modified)  # fmt: skip
        task = DownloadTask(
            self.session_for(record), record.url, record.path, resume_data=resume_data,
            record_id=record.id, journal=_RecordJournal(self.records, self.owner, record.id),
        )  # fmt: skip
        task.title = record.display_name
        with self._lock:
            self.tasks[record.id] = task

        def run() -> Outcome:
            if self._stopping.is_set() and task._stop_reason is None:
                task.request_stop("pause")
            task.run()
            outcome = self.settle(task)
            with self._lock:
                self.tasks.pop(record.id, None)
            if on_done is not None:
                on_done(outcome)
            return outcome

        return self.pool.submit(run)

    def settle(self, task: DownloadTask) -> Outcome:
        """Write the task's end into its record (only while we still own it)."""
        rid = task.record_id
        assert rid is not None
        state = str(task.state)
        record, ours = self.records.settle(
            rid, self.owner, state, bytes_received=task.bytes_synced,
            bytes_total=task.bytes_total, etag=task.etag, last_modified=task.last_modified,
            error=str(task.error) if task.error else "failed",
            permanent=bool(getattr(task.error, "is_permanent", False)),
        )  # fmt: skip
        if not ours:  # cancelled or taken over by another process
            return Outcome(rid, "cancelled" if record is None else "paused", None, task.error)
        if record is None:
            return Outcome(rid, "cancelled", None, None, task.notes)
        error = task.error if state == "failed" else None
        return Outcome(rid, str(record.status), record, error, task.notes)

    def stop_all(self, reason: str) -> None:
        self._stopping.set()
        with self._lock:
            tasks = list(self.tasks.values())
        for task in tasks:
            task.request_stop(reason)

    def shutdown(self) -> None:
        self._stopping.set()
        self.pool.shutdown(wait=True)
        if self._control is not None:
            self._control.join(timeout=1)
