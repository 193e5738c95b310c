"""Download records: their statuses, the allowed transitions, and the repository whose methods
are those transitions. It is the only writer of `status` and the only code that deletes the
partial file of a recorded download; `store` holds the rows and the SQL.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .config import PRIORITIES
from .errors import (
    AlreadyRunningError,
    IllegalTransition,
    unknown_download,
)
from .liveness import (
    MemoryOwner,
    OwnerLock,
    PartialBusy,
    boot_id,
    is_lock_held,
    is_partial_busy,
    is_worker_alive,
    owner_lock_path,
    remove_partial,
)
from .store import Connection, Row, Store
from .targets import Target


class RecordStatus(enum.StrEnum):
    QUEUED = "queued"  # waiting for the background worker
    # waiting: with no owner, queued for the worker, not to start before its date (`--at`);
    # with an owner, its transfer waits for connectivity (and probes) in that process
    WAITING = "waiting"
    RUNNING = "running"  # an owner process is transferring it
    PAUSED = "paused"  # stopped with a checkpoint; `resume` continues it
    COMPLETED = "completed"  # the file is under its final name
    FAILED = "failed"  # stopped by an error; the partial (if any) is kept


class StopRequest(enum.StrEnum):
    """What another process asks of a running transfer's owner (the `request` column)."""

    PAUSE = "pause"
    CANCEL = "cancel"


class Ending(enum.StrEnum):
    """How a transfer ended, as its owner settles it (a task's final state, by value)."""

    COMPLETED = "completed"
    PAUSED = "paused"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ClaimOutcome(enum.StrEnum):
    """What claiming one target or record gave."""

    CLAIMED = "claimed"  # ours to run, now
    QUEUED = "queued"  # handed to the background worker
    SKIPPED = "skipped"  # already done
    REFUSED = "refused"  # someone else's right now


class StopAction(enum.StrEnum):
    """What a stop request did."""

    WAITING = "waiting"  # asked a live owner to stop
    PAUSED = "paused"  # paused an idle record here
    FORGOTTEN = "forgotten"  # cancelled an idle record here: record and partial gone
    UNCHANGED = "unchanged"  # nothing to stop
    FINISHED = "finished"  # completed since the request was made: left as it is


S = RecordStatus
# The one mapping of how a transfer ended to its record's status (a cancelled one has no
# record left); `background` reads it backwards.
ENDING_STATUS: dict[Ending, RecordStatus | None] = {
    Ending.COMPLETED: S.COMPLETED,
    Ending.PAUSED: S.PAUSED,
    Ending.FAILED: S.FAILED,
    Ending.CANCELLED: None,
}
# Allowed moves; `None` is "no record yet". Deleting a record (cancel, clean) is always allowed.
TRANSITIONS: dict[RecordStatus | None, frozenset[RecordStatus]] = {
    None: frozenset({S.QUEUED, S.WAITING, S.RUNNING}),
    S.QUEUED: frozenset({S.QUEUED, S.WAITING, S.RUNNING, S.PAUSED}),
    S.WAITING: frozenset({S.QUEUED, S.WAITING, S.RUNNING, S.PAUSED, S.FAILED, S.COMPLETED}),
    # running -> queued/running: taking over a record whose owner died unnoticed
    S.RUNNING: frozenset({S.PAUSED, S.COMPLETED, S.FAILED, S.QUEUED, S.WAITING, S.RUNNING}),
    S.PAUSED: frozenset({S.QUEUED, S.WAITING, S.RUNNING, S.PAUSED}),
    S.FAILED: frozenset({S.QUEUED, S.WAITING, S.RUNNING}),
    S.COMPLETED: frozenset({S.QUEUED, S.WAITING, S.RUNNING}),
}
UNFINISHED = (S.QUEUED, S.WAITING, S.RUNNING, S.PAUSED, S.FAILED)
ACTIVE = (S.QUEUED, S.WAITING, S.RUNNING)  # not ended: `wait` waits for these
TO_START = (S.QUEUED, S.WAITING)  # handed to the worker, not started yet
OWNED = (S.RUNNING, S.WAITING)  # with an owner: a transfer in a live process's hands
DEFAULT_PRIORITY = PRIORITIES["default"]


@dataclass(frozen=True)
class Schedule:
    """When and in which order the worker starts a queued download: not before `not_before`
    (seconds since the epoch; None: at once), higher `priority` (0.0-1.0) first."""

    not_before: float | None = None
    priority: float | None = None

    def status(self, now: float | None = None) -> RecordStatus:
        """A queued record's status: waiting while its date is ahead, else queued."""
        ahead = self.not_before is not None and self.not_before > (now or time.time())
        return S.WAITING if ahead else S.QUEUED


PUBLIC_KEYS = (
    "id",
    "url",
    "path",
    "part_path",
    "status",
    "bytes_received",
    "bytes_total",
    "error",
    "title",
    "etag",
    "last_modified",
    "session",
    "owner_pid",
    "created",
    "updated",
)


def check_transition(old: str | None, new: str) -> RecordStatus:
    new_status = RecordStatus(new)
    old_status = RecordStatus(old) if old is not None else None
    if new_status not in TRANSITIONS[old_status]:
        raise IllegalTransition(f"download record: {old} -> {new} is not allowed")
    return new_status


@dataclass
class DownloadRecord:
    """One row of the state file, typed."""

    id: str
    url: str
    path: str
    part_path: str
    status: RecordStatus
    bytes_received: int = 0
    bytes_total: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    error: str | None = None
    owner: str | None = None
    owner_pid: int | None = None
    session: str = "default"
    session_id: str | None = None
    title: str | None = None
    boot_id: str | None = None
    request: str | None = None
    announced: int = 1
    settings: str | None = None  # JSON: what the queuing command was given (no secrets)
    permanent: int = 0  # failed for good (404, 410, ...): `resume --all` leaves it alone
    metrics: str | None = None  # JSON: the last transfer's task metrics (curl's figures)
    not_before: float | None = None  # the worker starts it no earlier (`--at`)
    priority: float | None = None  # the worker starts higher ones first (None: 0.5)
    checksum: str | None = None  # ALGO=HEX the finished file must have (`--checksum`)
    # JSON: the segments of a file fetched over several connections, each with its durable
    # length (`bytes_received` is then their sum, not a length of the partial)
    segments: str | None = None
    http_status: int | None = None  # the HTTP status that failed it, if one did
    seq: int = 0
    created: float = 0.0
    updated: float = 0.0

    @classmethod
    def from_row(cls, row: Row) -> DownloadRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in row.items() if k in known}
        values["status"] = RecordStatus(values["status"])
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """The record as `list --json` shows it (the contract keys and a few more)."""
        out = {key: getattr(self, key) for key in PUBLIC_KEYS}
        out["status"] = str(self.status)
        out["metrics"] = self.metrics_summary
        out["earliest_begin_date"] = self.not_before
        out["priority"] = self.priority if self.priority is not None else DEFAULT_PRIORITY
        return out

    @property
    def metrics_summary(self) -> dict[str, Any] | None:
        """The last transfer's metrics (None before any ran, or if unreadable)."""
        if not self.metrics:
            return None
        try:
            value = json.loads(self.metrics)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    @property
    def is_for_worker(self) -> bool:
        """Handed to the worker and not started yet (queued, or waiting for its date)."""
        return self.status in TO_START and self.owner is None

    @property
    def is_finished_on_disk(self) -> bool:
        return self.status is S.COMPLETED and Path(self.path).exists()

    @property
    def display_name(self) -> str:
        return self.title or self.id

    @property
    def label(self) -> str:
        """A short name for progress lines: the title, or a URL download's file name."""
        if self.title and "://" not in self.title:
            return self.title
        return Path(self.path).name


@dataclass
class Claim:
    """What claiming one target or record gave: it is ours to run (`claimed`), handed to the
    worker (`queued`), already done (`skipped`), or someone else's right now (`refused`)."""

    id: str
    outcome: ClaimOutcome
    record: DownloadRecord | None = None
    error: AlreadyRunningError | None = None
    elsewhere: Path | None = None  # skipped, though this command asked for it there


@dataclass
class StopResult:
    """What `request_stop` did: asked a live owner (`waiting`), settled it itself (`paused`,
    `forgotten`), found nothing to stop (`unchanged`), or found it completed since the
    request was made (`finished`: it is left as it is)."""

    id: str
    action: StopAction
    record: DownloadRecord | None


@dataclass
class Settlement:
    """How a task ended, to be written into its record (`Records.settle_many`)."""

    record_id: str
    owner: str
    ending: Ending
    bytes_received: int
    bytes_total: int | None
    etag: str | None
    last_modified: str | None
    error: str | None
    permanent: bool = False
    metrics: str | None = None  # JSON (the task's metrics summary)
    segments: str | None = None  # JSON: the durable plan of several connections, if any
    http_status: int | None = None  # the HTTP status of the answer that failed it


RecoverPartial = Callable[[str, int, bool, "int | None"], int]


class Records:
    """The repository of download records in one state dir (or in memory, for ephemeral)."""

    def __init__(self, store: Store, recover_partial: RecoverPartial | None = None):
        """`recover_partial(path, checkpoint, same_boot, bytes_total) -> trusted length` repairs
        the partial of a transfer whose owner died (tasks.partial.recover_partial); without
        it the checkpoint is taken as it is."""
        self.store = store
        self.state_dir = store.state_dir
        self.recover_partial = recover_partial
        self._owner: OwnerLock | MemoryOwner | None = None
        self._boot = boot_id()

    @property
    def is_persistent(self) -> bool:
        return self.store.is_persistent

    def close(self) -> None:
        self.store.close()
        if self._owner is not None:
            self._owner.release()
            self._owner = None

    # -- reading -------------------------------------------------------------------------------
    def get(self, record_id: str) -> DownloadRecord | None:
        row = self.store.get(record_id)
        return DownloadRecord.from_row(row) if row is not None else None

    def all(self, ids: list[str] | None = None) -> list[DownloadRecord]:
        return [DownloadRecord.from_row(r) for r in self.store.all(ids)]

    def of_session(self, identifier: str) -> list[DownloadRecord]:
        return [DownloadRecord.from_row(r) for r in self.store.by_session_id(identifier)]

    def stop_requests(self, owner: str) -> dict[str, StopRequest]:
        return {
            rid: StopRequest(req)
            for rid, req in self.store.requests_for(owner).items()
            if req in StopRequest.__members__.values()
        }

    # -- owners --------------------------------------------------------------------------------
    def owner_token(self) -> str:
        """This process's owner token (its lock is taken on first use)."""
        if self._owner is None:
            if self.state_dir is None:
                self._owner = MemoryOwner()
            else:
                self._owner = OwnerLock(self.state_dir)
        return self._owner.token

    def is_owner_alive(self, token: str | None) -> bool:
        if not token:
            return False
        if self._owner is not None and token == self._owner.token:
            return True
        if self.state_dir is None:
            return False
        return is_lock_held(owner_lock_path(self.state_dir, token))

    def _is_busy(self, row: Row) -> AlreadyRunningError | None:
        """The error to give when someone else is transferring this record right now."""
        if _in_hand(row) and self.is_owner_alive(row["owner"]):
            return self.busy_error(DownloadRecord.from_row(row))
        return None

    @staticmethod
    def busy_error(record: DownloadRecord) -> AlreadyRunningError:
        who = "the background worker" if record.session == "background" else "another halftunes"
        doing = (
            "waits for the network in"
            if record.status is S.WAITING
            else "is being downloaded right now by"
        )
        return AlreadyRunningError(
            f"{record.id} {doing} {who} (pid {record.owner_pid})",
            f"run `halftunes wait {record.id}` to wait for it, or `halftunes pause {record.id}`",
        )

    # -- transitions -----------------------------------------------------------------------------
    def _write(self, conn: Connection, row: Row | None, record_id: str, **values: Any) -> None:
        """The one place a record's status is written (checked against TRANSITIONS)."""
        if "status" in values:
            values["status"] = str(
                check_transition(row["status"] if row else None, values["status"])
            )
            if values["status"] == S.RUNNING:
                values.setdefault("boot_id", self._boot)  # this boot's page cache holds its bytes
        if row is None:
            self.store.insert_record(conn, {"id": record_id, **values})
        else:
            self.store.update_record(conn, record_id, **values)

    def claim(
        self,
        items: Iterable[Target | DownloadRecord],
        *,
        owner: str | None,
        force: bool,
        queue: bool,
        download_dir: Path,
        session_kind: str,
        settings: str | None = None,
        schedule: Schedule | None = None,
        checksum: str | None = None,
    ) -> list[Claim]:
        """Create or take the records for `items` in one transaction.

        `owner` None with `queue` hands them to the background worker, with the `settings`
        (JSON) that the worker is to use for them, and their `schedule` (a record queued
        again keeps its own unless one is given). `checksum` (ALGO=HEX), when given, is what
        their finished file must hash to."""
        listing = _DirListing()
        out: list[Claim] = []
        with self.store.transaction() as conn:
            for item in items:
                row = self.store.row(conn, item.id)
                target = item if isinstance(item, Target) else None
                if row is None and target is not None:
                    out.append(
                        self._create(
                            conn,
                            target,
                            owner,
                            queue,
                            download_dir,
                            session_kind,
                            listing,
                            settings,
                            schedule,
                        )
                    )
                    self._set_checksum(conn, out[-1], checksum)
                    continue
                if row is None:
                    raise unknown_download(item.id)
                out.append(
                    self._take(
                        conn,
                        row,
                        owner,
                        force,
                        queue,
                        session_kind,
                        settings,
                        target,
                        download_dir,
                        listing,
                        schedule,
                    )
                )
                self._set_checksum(conn, out[-1], checksum)
        return out

    def _set_checksum(self, conn: Connection, claim: Claim, checksum: str | None) -> None:
        """A transfer this claim starts (here or in the worker) must end with this digest."""
        if checksum is None or claim.record is None:
            return
        if claim.outcome in (ClaimOutcome.CLAIMED, ClaimOutcome.QUEUED):
            self.store.update_record(conn, claim.id, checksum=checksum)
            claim.record.checksum = checksum

    def _choose_path(
        self,
        conn: Connection,
        target: Target,
        download_dir: Path,
        listing: _DirListing,
        own: str | None = None,
    ) -> Path:
        """The target's file: its name, or with ` (id)` when another record or a file we did
        not make has it (compared case-insensitively: never two tracks in one file). `own` is
        the record's present path, which it may always reuse."""
        path = target.place(download_dir)
        mine = own is not None and str(path).casefold() == own.casefold()
        if not mine and (self.store.path_taken(conn, str(path), target.id) or listing.has(path)):
            path = target.place(download_dir, f" ({target.id})")
        listing.add(path)
        return path

    def _create(
        self,
        conn: Connection,
        target: Target,
        owner: str | None,
        queue: bool,
        download_dir: Path,
        session_kind: str,
        listing: _DirListing,
        settings: str | None,
        schedule: Schedule | None = None,
    ) -> Claim:
        path = self._choose_path(conn, target, download_dir, listing)
        if is_partial_busy(str(path) + ".part"):  # written by a process no record names
            return Claim(
                target.id, ClaimOutcome.REFUSED, None, PartialBusy(Path(str(path) + ".part"))
            )
        schedule = schedule if queue and schedule is not None else Schedule()
        status = schedule.status() if queue else S.RUNNING
        self._write(
            conn,
            None,
            target.id,
            url=target.url,
            path=str(path),
            part_path=str(path) + ".part",
            status=status,
            owner=owner,
            owner_pid=os.getpid() if owner else None,
            title=target.title,
            session=session_kind,
            announced=0 if queue else 1,
            boot_id=self._boot,
            settings=settings,
            not_before=schedule.not_before,
            priority=schedule.priority,
        )
        record = DownloadRecord.from_row(self.store.row(conn, target.id) or {})
        return Claim(target.id, ClaimOutcome.QUEUED if queue else ClaimOutcome.CLAIMED, record)

    def _take(
        self,
        conn: Connection,
        row: Row,
        owner: str | None,
        force: bool,
        queue: bool,
        session_kind: str,
        settings: str | None,
        target: Target | None,
        download_dir: Path,
        listing: _DirListing,
        schedule: Schedule | None = None,
    ) -> Claim:
        rid = row["id"]
        busy = self._is_busy(row)
        if busy is None and is_partial_busy(row["part_path"]):
            busy = PartialBusy(Path(row["part_path"]))  # its writer is not the record's owner
        if busy is not None:
            return Claim(rid, ClaimOutcome.REFUSED, DownloadRecord.from_row(row), busy)
        worker_has_it = self.state_dir is not None and is_worker_alive(self.state_dir)
        if row["status"] == S.QUEUED and not queue and worker_has_it:
            return Claim(
                rid,
                ClaimOutcome.REFUSED,
                DownloadRecord.from_row(row),
                AlreadyRunningError(
                    f"{rid} is queued for the background worker",
                    f"run `halftunes wait {rid}` to wait for it",
                ),
            )
        if row["status"] in TO_START and row["owner"] is None and queue:
            if schedule is not None:  # queued again with a new date or priority
                self._write(
                    conn,
                    row,
                    rid,
                    status=schedule.status(),
                    not_before=schedule.not_before,
                    priority=schedule.priority,
                )
            return Claim(
                rid, ClaimOutcome.QUEUED, DownloadRecord.from_row(self.store.row(conn, rid) or row)
            )
        done = row["status"] == S.COMPLETED
        if done and Path(row["path"]).exists() and not force:
            claim = Claim(rid, ClaimOutcome.SKIPPED, DownloadRecord.from_row(row))
            wanted = (
                [target.place(download_dir), target.place(download_dir, f" ({rid})")]
                if target
                else []
            )
            if wanted and str(row["path"]).casefold() not in {str(w).casefold() for w in wanted}:
                claim.elsewhere = wanted[0]
            return claim
        if not queue:  # here and now: no date
            schedule = Schedule(None, row["priority"])
        elif schedule is None:  # queued again: its own date and priority
            schedule = Schedule(row["not_before"], row["priority"])
        status = schedule.status() if queue else S.RUNNING
        values: dict[str, Any] = {
            "status": status,
            "not_before": schedule.not_before,
            "priority": schedule.priority,
            "owner": owner,
            "request": None,
            "permanent": 0,
            "owner_pid": os.getpid() if owner else None,
            "error": None,
            "session": session_kind,
            "announced": 0 if queue else 1,
            "settings": settings,
        }
        # Another address for the same track (its preview moved): the bytes of the old one
        # are not this one's to append to.
        moved = target is not None and target.url != row["url"]
        if done or force or moved:  # start over: the file is gone, the user asked, it moved
            remove_partial(row["part_path"])
            values.update(
                bytes_received=0, bytes_total=None, etag=None, last_modified=None, segments=None
            )
            if target is not None:  # ...where this command asks for it (-P / -o)
                path = self._choose_path(conn, target, download_dir, listing, row["path"])
                values.update(
                    url=target.url,
                    path=str(path),
                    part_path=str(path) + ".part",
                    title=target.title,
                )
        elif _in_hand(row):
            # Its owner died before anyone noticed: keep only what may be trusted.
            values["bytes_received"] = self._recover_partial(row)
        self._write(conn, row, rid, **values)
        record = DownloadRecord.from_row(self.store.row(conn, rid) or row)
        return Claim(rid, ClaimOutcome.QUEUED if queue else ClaimOutcome.CLAIMED, record)

    def claim_queued(self, owner: str, limit: int) -> list[DownloadRecord]:
        """The worker takes up to `limit` queued records whose date has come, the highest
        priority first, then the oldest."""
        claimed = []
        with self.store.transaction() as conn:
            for row in self.store.due(conn, time.time(), limit):
                self._write(
                    conn,
                    row,
                    row["id"],
                    status=S.RUNNING,
                    owner=owner,
                    owner_pid=os.getpid(),
                    request=None,
                    error=None,
                )
                claimed.append(DownloadRecord.from_row(self.store.row(conn, row["id"]) or row))
        return claimed

    def exit_if_idle(self, leave: Callable[[], None]) -> bool:
        """Call `leave` (the worker dropping its lock) only while no record is queued, inside
        the write transaction: a client that queues after this sees the lock free."""
        with self.store.transaction() as conn:
            if self.store.count_to_start(conn) == 0:
                leave()
                return True
        return False

    def set_waiting(
        self, record_id: str, owner: str, waiting: bool, reason: str | None = None
    ) -> None:
        """Its owner's transfer waits for connectivity (`reason`: why the host cannot be
        reached, kept as its message meanwhile) or no longer: `waiting` or `running`, while
        the record is still that owner's."""
        with self.store.transaction() as conn:
            row = self.store.row(conn, record_id)
            if row is None or row["owner"] != owner or row["status"] not in OWNED:
                return
            status = S.WAITING if waiting else S.RUNNING
            self._write(conn, row, record_id, status=status, error=reason if waiting else None)

    def resized(self, record_id: str, size: int) -> None:
        """A completed download's file was rewritten (tags): its size is now `size`."""
        with self.store.transaction() as conn:
            row = self.store.row(conn, record_id)
            if row is not None and row["status"] == S.COMPLETED:
                self.store.update_record(conn, record_id, bytes_received=size, bytes_total=size)

    def next_begin_date(self) -> float | None:
        """The earliest date a waiting record may start at (None: none waits)."""
        return self.store.earliest_date()

    def checkpoint(
        self,
        record_id: str,
        owner: str,
        bytes_received: int,
        bytes_total: int | None,
        etag: str | None,
        last_modified: str | None,
        segments: str | None = None,
    ) -> StopRequest | None:
        """Record a fsynced length (for several connections: the plan of `segments`, each
        with its fsynced length, summed in `bytes_received`); returns a pending stop
        request, if any."""
        with self.store.transaction() as conn:
            row = self.store.row(conn, record_id)
            if row is None:
                return StopRequest.CANCEL
            if row["owner"] != owner:
                return StopRequest.PAUSE  # someone took it over: stop writing
            self._write(
                conn,
                row,
                record_id,
                bytes_received=bytes_received,
                bytes_total=bytes_total,
                etag=etag,
                last_modified=last_modified,
                segments=segments,
                boot_id=self._boot,
            )
            return StopRequest(row["request"]) if row["request"] else None

    def settle_many(self, endings: list[Settlement]) -> list[tuple[DownloadRecord | None, bool]]:
        """Write finished tasks' ends into their records, each only while we still own it,
        in one transaction (one state-file write for a batch of small files that ended
        together). An ending is completed, paused, failed or cancelled; each result is the
        record (None when it is gone: cancelled here or by another process) and whether it
        was still ours to settle."""
        with self.store.transaction() as conn:
            return [self._settle(conn, ending) for ending in endings]

    def _settle(self, conn: Connection, e: Settlement) -> tuple[DownloadRecord | None, bool]:
        row = self.store.row(conn, e.record_id)
        if row is None:
            return None, False
        if row["owner"] != e.owner:
            return DownloadRecord.from_row(row), False
        status = ENDING_STATUS[e.ending]
        if status is None:  # cancelled: nothing of it stays
            self._forget(conn, row)
            return None, True
        self._write(
            conn,
            row,
            e.record_id,
            status=status,
            error=e.error if status is S.FAILED else None,
            permanent=int(e.permanent and status is S.FAILED),
            bytes_received=e.bytes_received,
            bytes_total=e.bytes_total,
            owner=None,
            request=None,
            etag=e.etag,
            last_modified=e.last_modified,
            segments=e.segments if status is not S.COMPLETED else None,
            http_status=e.http_status if status is S.FAILED else None,
            **({"metrics": e.metrics} if e.metrics is not None else {}),
        )
        return DownloadRecord.from_row(self.store.row(conn, e.record_id) or row), True

    def request_stop(
        self, record_id: str, request: StopRequest, seen: RecordStatus | None = None
    ) -> StopResult:
        """Pause or cancel: ask a live owner to stop, or settle an idle record right here.

        Compare-and-set: `seen` is the status the request was made against. A record that
        has completed since is left alone (`finished`): a stop aimed at a transfer never
        forgets the file it became."""
        with self.store.transaction() as conn:
            row = self.store.row(conn, record_id)
            if row is None:
                raise unknown_download(record_id)
            if seen is not None and seen is not S.COMPLETED and row["status"] == S.COMPLETED:
                return StopResult(record_id, StopAction.FINISHED, DownloadRecord.from_row(row))
            if _in_hand(row) and self.is_owner_alive(row["owner"]):
                self._write(conn, row, record_id, request=str(request))
                return StopResult(record_id, StopAction.WAITING, DownloadRecord.from_row(row))
            if request is StopRequest.CANCEL:
                self._forget(conn, row)
                return StopResult(record_id, StopAction.FORGOTTEN, DownloadRecord.from_row(row))
            if row["status"] in ACTIVE:
                self._write(conn, row, record_id, status=S.PAUSED, owner=None, request=None)
                record = DownloadRecord.from_row(self.store.row(conn, record_id) or row)
                return StopResult(record_id, StopAction.PAUSED, record)
            return StopResult(record_id, StopAction.UNCHANGED, DownloadRecord.from_row(row))

    def forget(self, record_id: str, seen: RecordStatus | None = None) -> DownloadRecord | None:
        """Delete a record (and its partial, unless it finished); the file stays. With
        `seen`, only while the record still has that status (compare-and-set)."""
        with self.store.transaction() as conn:
            row = self.store.row(conn, record_id)
            if row is None or (seen is not None and row["status"] != seen):
                return None
            self._forget(conn, row)
            return DownloadRecord.from_row(row)

    def _forget(self, conn: Connection, row: Row) -> None:
        if row["status"] != S.COMPLETED:
            remove_partial(row["part_path"])  # (unless another process writes it: theirs)
        self.store.delete_record(conn, row["id"])

    def wait_until_stopped(
        self, record_id: str, timeout_seconds: float = 30.0, poll_seconds: float = 0.02
    ) -> DownloadRecord | None:
        """Block until a record is no longer running (or gone); returns it."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            record = self.get(record_id)
            if record is None or not (record.status in OWNED and record.owner):
                return record
            if not self.is_owner_alive(record.owner):
                self.reconcile_dead_owners()
                return self.get(record_id)
            if time.monotonic() > deadline:
                return record
            time.sleep(poll_seconds)

    def tag_session(self, record_id: str, identifier: str | None) -> None:
        with self.store.transaction() as conn:
            if self.store.row(conn, record_id) is not None:
                self.store.update_record(conn, record_id, session_id=identifier)

    # -- announcements ---------------------------------------------------------------------------
    def take_unannounced(self) -> list[DownloadRecord]:
        """Background transfers that ended unwatched, marked announced as they are taken."""
        with self.store.transaction() as conn:
            rows = self.store.unannounced(conn)
            for row in rows:
                self.store.update_record(conn, row["id"], announced=1)
        return [DownloadRecord.from_row(r) for r in rows]

    def unreported(self) -> list[DownloadRecord]:
        """Outcomes not yet shown by the command that ran them, announced, or returned by a
        `wait` (background transfers that ended since they were queued)."""
        with self.store.transaction() as conn:
            return [DownloadRecord.from_row(r) for r in self.store.unreported(conn)]

    def mark_announced(self, ids: Iterable[str]) -> None:
        with self.store.transaction() as conn:
            for rid in ids:
                if self.store.row(conn, rid) is not None:
                    self.store.update_record(conn, rid, announced=1)

    # -- recovery --------------------------------------------------------------------------------
    def reconcile_dead_owners(self) -> list[DownloadRecord]:
        """Mark transfers whose owner died as paused, with their partial re-checkpointed."""
        if self.state_dir is None:
            return []
        dead = {o for o in self.store.running_owners() if not self.is_owner_alive(o)}
        if not dead:
            return []
        fixed = []
        with self.store.transaction() as conn:
            for row in self.store.with_status(conn, OWNED):
                if not _in_hand(row) or row["owner"] not in dead:
                    continue
                if row["request"] == StopRequest.CANCEL:
                    self._forget(conn, row)
                    continue
                received = self._recover_partial(row)
                who = "the background worker" if row["session"] == "background" else "the process"
                error = (
                    f"{who} (pid {row['owner_pid']}) stopped while downloading; "
                    f"paused at {received} bytes: run `halftunes resume {row['id']}`"
                )
                self._write(
                    conn,
                    row,
                    row["id"],
                    status=S.PAUSED,
                    bytes_received=received,
                    owner=None,
                    request=None,
                    error=error,
                    boot_id=self._boot,
                )
                fixed.append(DownloadRecord.from_row(self.store.row(conn, row["id"]) or row))
        for token in dead:
            if token:
                with contextlib.suppress(OSError):
                    owner_lock_path(self.state_dir, token).unlink()
        return fixed

    def _recover_partial(self, row: Row) -> int:
        """How many bytes of a partial whose owner stopped may be trusted: the record says
        which (its checkpoint, its boot), the partial's keeper (`recover_partial`, given by
        the session: the file work is not the records') makes it so."""
        checkpoint = int(row["bytes_received"] or 0)
        if self.recover_partial is None or row.get("segments"):
            # (a segmented partial is as long as the whole file: its length vouches for
            # nothing, only each segment's recorded length does)
            return checkpoint
        same_boot = self._boot is not None and row.get("boot_id") == self._boot
        return self.recover_partial(row["part_path"], checkpoint, same_boot, row["bytes_total"])


def _in_hand(row: Row) -> bool:
    """Running, or waiting for connectivity, in its owner's process."""
    return row["status"] in OWNED and row["owner"] is not None


class _DirListing:
    """Names in the folders a claim batch writes to, case-folded, each folder read once."""

    def __init__(self) -> None:
        self._names: dict[Path, set[str]] = {}

    def _load(self, folder: Path) -> set[str]:
        if folder not in self._names:
            try:
                self._names[folder] = {n.casefold() for n in os.listdir(folder)}
            except OSError:
                self._names[folder] = set()
        return self._names[folder]

    def has(self, path: Path) -> bool:
        return path.name.casefold() in self._load(path.parent)

    def add(self, path: Path) -> None:
        self._load(path.parent).add(path.name.casefold())
