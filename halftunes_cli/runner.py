"""Runs claimed records as download tasks, up to N at once, steerable from other processes.

A control thread polls the state file every 50 ms for pause/cancel requests that other
processes left on this process's records, and stops exactly those tasks. A settling thread
writes how tasks ended into their records, all that ended meanwhile in one transaction, so
a transfer slot goes on to its next file without waiting for the state file.
"""

from __future__ import annotations

import enum
import json
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import HalftunesError, HTTPStatusError
from .records import DownloadRecord, Ending, Records, Settlement
from .session import Session
from .store import StateFileReplaced
from .targets import is_url_record_id
from .tasks import DownloadTask, ResumeData, TaskState
from .tasks.partial import sync_group

CONTROL_POLL_SECONDS = 0.05
ENDINGS = {ending.value for ending in Ending}
log = logging.getLogger(__name__)


class OutcomeStatus(enum.StrEnum):
    """How one id ended in one command."""

    COMPLETED = "completed"
    PAUSED = "paused"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # already downloaded
    REFUSED = "refused"  # someone else's right now
    QUEUED = "queued"  # handed to the background worker


@dataclass
class Outcome:
    """How one id ended in one command."""

    id: str
    status: OutcomeStatus
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
        request = self.records.checkpoint(
            self.record_id,
            self.owner,
            task.bytes_synced,
            task.bytes_total,
            task.etag,
            task.last_modified,
            task.segment_record,
        )
        return str(request) if request is not None else None

    def waiting(self, waiting: bool, reason: str | None = None) -> None:
        self.records.set_waiting(self.record_id, self.owner, waiting, reason)


_Ended = tuple[DownloadTask, "Future[Outcome]", "Callable[[Outcome], None] | None"]


class Runner:
    """`session_for` picks the session a record runs in (the worker: one per distinct set of
    settings the queuing commands carried); by default every record runs in `session`."""

    def __init__(
        self,
        session: Session,
        owner: str,
        session_for: Callable[[DownloadRecord], Session] | None = None,
    ):
        self.session = session
        self.session_for = session_for or (lambda record: session)
        self.records = session.records
        self.owner = owner
        self.tasks: dict[str, DownloadTask] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._control: threading.Thread | None = None
        self._ended: queue.SimpleQueue[_Ended | None] = queue.SimpleQueue()
        self._settler: threading.Thread | None = None
        self.pool = ThreadPoolExecutor(
            max_workers=session.configuration.max_connections_per_host,
            thread_name_prefix="transfer",
        )

    def start_control(self) -> None:
        if self.records.is_persistent and self._control is None:
            self._control = threading.Thread(target=self._control_loop, daemon=True, name="control")
            self._control.start()

    def _control_loop(self) -> None:
        while not self._stopping.wait(CONTROL_POLL_SECONDS):
            try:
                requests_ = self.records.stop_requests(self.owner)
            except StateFileReplaced as exc:
                # Nobody reads what we would record from now on: stop every transfer (each
                # fails with this error when its checkpoint is refused), keep the partials.
                log.error("%s", exc)
                self.stop_all("pause")
                return
            except HalftunesError:
                continue
            for rid, request in requests_.items():
                with self._lock:
                    task = self.tasks.get(rid)
                if task is not None:
                    task.request_stop(str(request))

    def submit(
        self, record: DownloadRecord, on_done: Callable[[Outcome], None] | None = None
    ) -> Future[Outcome]:
        resume_data = ResumeData(
            record.url,
            record.path,
            record.part_path,
            int(record.bytes_received or 0),
            record.bytes_total,
            record.etag,
            record.last_modified,
            segments=record.segments,
        )
        task = DownloadTask(
            self.session_for(record),
            record.url,
            record.path,
            resume_data=resume_data,
            record_id=record.id,
            journal=_RecordJournal(self.records, self.owner, record.id),
        )
        task.title = record.display_name
        if record.checksum:
            algorithm, _, digest = record.checksum.partition("=")
            task.checksum = (algorithm, digest)
        task.requires_content = not is_url_record_id(record.id)  # an empty preview is none
        # durable files are fsynced in groups by the settling thread (crash: no fsync at all)
        task.group_commit = task.session.configuration.is_durable
        with self._lock:
            self.tasks[record.id] = task

        future: Future[Outcome] = Future()

        def run() -> None:
            try:
                if self._stopping.is_set() and task._stop_reason is None:
                    task.request_stop("pause")
                task.run_to_end()
            except BaseException as exc:  # task.run ends every error itself: a bug
                future.set_exception(exc)
                raise
            self._ended.put((task, future, on_done))

        self._start_settler()
        self.pool.submit(run)
        return future

    # -- settling ------------------------------------------------------------------------
    def _start_settler(self) -> None:
        with self._lock:
            if self._settler is None:
                self._settler = threading.Thread(
                    target=self._settle_loop, daemon=True, name="settler"
                )
                self._settler.start()

    def _settle_loop(self) -> None:
        while True:
            batch = [self._ended.get()]
            while True:
                try:
                    batch.append(self._ended.get_nowait())
                except queue.Empty:
                    break
            ended = [item for item in batch if item is not None]
            tasks = [task for task, _, _ in ended]
            outcomes: list[Outcome | BaseException]
            try:
                self.records.store.verify_identity()  # never rename what nobody will record
            except StateFileReplaced as exc:
                for task in tasks:
                    if task.is_handed_off:
                        task.abandon_handed_off(exc)
            try:
                self._group_commit([task for task in tasks if task.is_handed_off])
                outcomes = list(self.settle_many(tasks))
            except BaseException:  # noqa: BLE001 - one bad ending must not take its batch with it
                outcomes = [self._settle_alone(task) for task in tasks]
            for (task, future, on_done), outcome in zip(ended, outcomes, strict=True):
                with self._lock:
                    self.tasks.pop(str(task.record_id), None)
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                    continue
                if on_done is not None:
                    try:
                        on_done(outcome)
                    except Exception:  # the caller's hook must not stop the settling
                        log.exception("%s: reporting the outcome failed", outcome.id)
                future.set_result(outcome)
            if None in batch:
                return

    def _settle_alone(self, task: DownloadTask) -> Outcome | BaseException:
        try:
            self._group_commit([task] if task.is_handed_off else [])
            return self.settle_many([task])[0]
        except BaseException as exc:  # noqa: BLE001 - any failure goes to the task's waiter
            return exc

    @staticmethod
    def _group_commit(tasks: list[DownloadTask]) -> None:
        """Finished bodies, made durable together, then renamed to their final names: a
        file appears under its name only after its bytes are on disk."""
        errors = sync_group([task.partial for task in tasks])
        for task in tasks:
            task.finish_handed_off(errors.get(task.partial.path))

    def settle_many(self, tasks: list[DownloadTask]) -> list[Outcome]:
        """Write the tasks' ends into their records (only those we still own)."""
        if not tasks:
            return []
        endings = []
        for task in tasks:
            assert task.record_id is not None
            summary = task.metrics_summary()
            endings.append(
                Settlement(
                    task.record_id,
                    self.owner,
                    Ending(task.state.value) if task.state.value in ENDINGS else Ending.FAILED,
                    task.bytes_synced,
                    task.bytes_total,
                    task.etag,
                    task.last_modified,
                    str(task.error) if task.error else "failed",
                    bool(getattr(task.error, "is_permanent", False)),
                    json.dumps(summary, separators=(",", ":")) if summary else None,
                    task.segment_record,
                    task.error.status if isinstance(task.error, HTTPStatusError) else None,
                )
            )
        settled = self.records.settle_many(endings)
        return [
            self._outcome(task, record, ours)
            for task, (record, ours) in zip(tasks, settled, strict=True)
        ]

    @staticmethod
    def _outcome(task: DownloadTask, record: DownloadRecord | None, ours: bool) -> Outcome:
        rid = str(task.record_id)
        if not ours:  # cancelled or taken over by another process
            gone = OutcomeStatus.CANCELLED if record is None else OutcomeStatus.PAUSED
            return Outcome(rid, gone, None, task.error)
        if record is None:
            return Outcome(rid, OutcomeStatus.CANCELLED, None, None, task.notes)
        error = task.error if task.state is TaskState.FAILED else None
        return Outcome(rid, OutcomeStatus(record.status.value), record, error, task.notes)

    def stop_all(self, reason: str) -> None:
        self._stopping.set()
        with self._lock:
            tasks = list(self.tasks.values())
        for task in tasks:
            task.request_stop(reason)

    def shutdown(self) -> None:
        self._stopping.set()
        self.pool.shutdown(wait=True)
        with self._lock:
            settler = self._settler
        if settler is not None:
            self._ended.put(None)  # after every transfer's end: all are settled first
            settler.join()
        if self._control is not None:
            self._control.join(timeout=1)
