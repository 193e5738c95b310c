"""Progress as plain data: `TransferEvent`s, and `TaskEvents`, the session delegate that turns
tasks' callbacks (and the records `wait` polls) into them. Whatever draws progress subscribes
to events and never sees a task or a record."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .errors import HalftunesError
    from .records import DownloadRecord
    from .tasks import Task


class EventKind(enum.StrEnum):
    PROGRESS = "progress"  # bytes moved
    RETRY = "retry"  # waiting before another attempt
    ENDED = "ended"  # completed, paused, failed or cancelled (`state`)


@dataclass(frozen=True)
class TransferEvent:
    """What one transfer did, as a renderer needs it."""

    kind: EventKind
    id: str  # the download's id, or the task's number in its session
    label: str  # what a person calls it: the title, or the file's name
    bytes_done: int  # received (or sent) so far
    bytes_total: int | None  # None: not known (yet)
    delta: int = 0  # of bytes_done, what this event brought (0: not known)
    state: str = "running"  # a task's state or a record's status, by value
    error: str | None = None  # why it failed
    retry_in_seconds: float | None = None
    reason: str | None = None  # why it retries, in a few words ("HTTP 503")
    path: str | None = None  # where a completed download's file is


class Subscriber(Protocol):
    """A renderer of progress (bars, lines, JSON Lines, nothing)."""

    def begin(self, count: int, labels: list[str] | None = None) -> None: ...

    def handle(self, event: TransferEvent) -> None: ...

    def close(self) -> None: ...


class TaskEvents:
    """A session delegate: each task callback becomes an event for `subscriber`."""

    def __init__(self, subscriber: Subscriber):
        self.subscriber = subscriber

    def on_transfers(self, count: int, labels: list[str] | None = None) -> None:
        self.subscriber.begin(count, labels)

    def on_data_written(self, task: Task, written: int, total: int, expected: int | None) -> None:
        self._moved(task, written, total, expected)

    def on_data_sent(self, task: Task, sent: int, total: int, expected: int | None) -> None:
        self._moved(task, sent, total, expected)

    def _moved(self, task: Task, delta: int, total: int, expected: int | None) -> None:
        event = TransferEvent(EventKind.PROGRESS, task.event_id, task.label, total, expected, delta)
        self.subscriber.handle(event)

    def on_retry(self, task: Task, wait_seconds: float, reason: str) -> None:
        done, total = task.progress
        event = TransferEvent(
            EventKind.RETRY,
            task.event_id,
            task.label,
            done,
            total,
            retry_in_seconds=wait_seconds,
            reason=reason,
        )
        self.subscriber.handle(event)

    def on_complete(self, task: Task, error: HalftunesError | None) -> None:
        done, total = task.progress
        state = str(task.state)
        failed = state == "failed" and error is not None
        event = TransferEvent(
            EventKind.ENDED,
            task.event_id,
            task.label,
            done,
            total,
            state=state,
            error=str(error) if failed else None,
            path=task.saved_to if state == "completed" else None,
        )
        self.subscriber.handle(event)

    def on_all_finished(self) -> None:
        self.subscriber.close()


def record_event(record: DownloadRecord, ended: bool = False) -> TransferEvent:
    """A record that `wait` polls, as an event (moving, or ended as its status says)."""
    kind = EventKind.ENDED if ended else EventKind.PROGRESS
    return TransferEvent(
        kind,
        record.id,
        record.label,
        record.bytes_received,
        record.bytes_total,
        state=str(record.status),
        error=record.error,
        path=record.path if ended and str(record.status) == "completed" else None,
    )
