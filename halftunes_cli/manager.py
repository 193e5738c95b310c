"""Download records meet download tasks: plan, claim, run concurrently, steer, settle."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import (
    AlreadyRunningError,
    DiskError,
    HalftunesError,
    UsageError,
    unknown_download,
)
from .naming import track_filename, url_filename
from .session import Session
from .store import Store
from .tasks import DownloadTask, ResumeData, TaskState

CONTROL_POLL_SECONDS = 0.05


def url_record_id(url: str) -> str:
    return "u" + hashlib.sha256(url.encode()).hexdigest()[:10]


def is_url(text: str) -> bool:
    return "://" in text or text.lower().startswith(("javascript:", "mailto:", "data:"))


@dataclass
class Target:
    """One thing to download: a track's preview or a plain URL."""

    id: str
    url: str
    title: str
    namer: Callable[[str], str]  # suffix -> safe file name

    @property
    def filename(self) -> str:
        return self.namer("")


@dataclass
class Outcome:
    id: str
    status: str  # completed | paused | failed | cancelled | skipped | refused | queued
    record: dict[str, Any] | None = None
    error: HalftunesError | None = None
    notes: list[str] = field(default_factory=list)


def target_for_track(track: dict[str, Any]) -> Target:
    track_id = str(track["trackId"])
    preview = track.get("previewUrl")
    title = f"{track.get('artistName', '?')} - {track.get('trackName', '?')}"
    if not preview:
        raise UsageError(f"track {track_id} ({title}) has no preview to download")
    artist, name = track.get("artistName"), track.get("trackName")
    return Target(
        track_id, preview, title, lambda suffix: track_filename(artist, name, preview, suffix)
    )


def target_for_url(url: str) -> Target:
    return Target(url_record_id(url), url, url, lambda suffix: url_filename(url, suffix))


def check_download_dir(path: Path) -> Path:
    """Create a missing download dir (as wget -P does); refuse one we cannot write to."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DiskError(f"download dir {path} exists and is not a directory") from None
    except OSError as exc:
        raise DiskError(f"cannot create download dir {path}: {exc.strerror}",
                        "choose another folder with -o DIR") from None  # fmt: skip
    if not path.is_dir():
        raise DiskError(f"download dir {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise DiskError(f"download dir {path} is not writable", "choose another folder with -o DIR")
    return path


class Claimer:
    """Turns targets into records this process (or the worker) may transfer."""

    def __init__(self, store: Store, download_dir: Path, session_kind: str):
        self.store = store
        self.download_dir = download_dir
        self.session_kind = session_kind
        self._listing: set[str] | None = None

    def _on_disk(self) -> set[str]:
        if self._listing is None:
            try:
                self._listing = {n.casefold() for n in os.listdir(self.download_dir)}
            except OSError:
                self._listing = set()
        return self._listing

    def _choose_path(self, conn: Any, target: Target) -> Path:
        path = self.download_dir / target.filename
        taken = self.store.path_taken(conn, str(path), target.id)
        if not taken and target.filename.casefold() in self._on_disk():
            taken = True  # a file we did not make (or an older record's): never overwrite it
        if taken:
            path = self.download_dir / target.namer(f" ({target.id})")
        self._on_disk().add(path.name.casefold())
        return path

    def claim(self, target: Target, owner: str | None, force: bool, queue: bool,
              conn: Any = None) -> Outcome:  # fmt: skip
        """Create or take the record. `owner` None with queue=True hands it to the worker.

        Pass `conn` to claim many targets inside one transaction."""
        if conn is None:
            with self.store.transaction() as conn:
                return self.claim(target, owner, force, queue, conn)
        store = self.store
        status = "queued" if queue else "running"
        row = store.row(conn, target.id)
        if row is not None:
            return self._claim_existing(conn, row, owner, force, status)
        path = self._choose_path(conn, target)
        store.insert(conn, {
            "id": target.id, "url": target.url, "path": str(path),
            "part_path": str(path) + ".part", "status": status, "owner": owner,
            "owner_pid": os.getpid() if owner else None, "title": target.title,
            "session": self.session_kind, "announced": 0 if queue else 1,
        })  # fmt: skip
        return Outcome(target.id, status, store.row(conn, target.id))

    def claim_record(self, row: dict[str, Any], owner: str | None, force: bool,
                     queue: bool, conn: Any = None) -> Outcome:  # fmt: skip
        if conn is None:
            with self.store.transaction() as conn:
                return self.claim_record(row, owner, force, queue, conn)
        fresh = self.store.row(conn, row["id"])
        if fresh is None:
            raise unknown_download(row["id"])
        return self._claim_existing(conn, fresh, owner, force,
                                    "queued" if queue else "running")  # fmt: skip

    def _claim_existing(self, conn, row, owner, force, status) -> Outcome:
        store = self.store
        rid = row["id"]
        if row["status"] == "running" and store.is_owner_alive(row["owner"]):
            who = "the background worker" if row["session"] == "background" else "another halftunes"
            return Outcome(rid, "refused", row, AlreadyRunningError(
                f"{rid} is being downloaded right now by {who} (pid {row['owner_pid']})",
                f"run `halftunes wait {rid}` to wait for it"))  # fmt: skip
        if row["status"] == "queued" and status == "running":
            from .background import is_worker_alive

            if store.state_dir is not None and is_worker_alive(store.state_dir):
                return Outcome(rid, "refused", row, AlreadyRunningError(
                    f"{rid} is queued for the background worker",
                    f"run `halftunes wait {rid}` to wait for it"))  # fmt: skip
        if row["status"] == "queued" and status == "queued":
            return Outcome(rid, "queued", row)
        fields: dict[str, Any] = {"status": status, "owner": owner, "request": None,
                                  "owner_pid": os.getpid() if owner else None, "error": None,
                                  "session": self.session_kind,
                                  "announced": 0 if status == "queued" else 1}  # fmt: skip
        done = row["status"] == "completed"
        if done and Path(row["path"]).exists() and not force:
            return Outcome(rid, "skipped", row)
        if done or force:  # start over: the finished file is gone, or the user asked
            with contextlib.suppress(OSError):
                os.unlink(row["part_path"])
            fields.update(bytes_received=0, bytes_total=None, etag=None, last_modified=None)
        elif row["status"] == "running":
            # Its owner died before anyone noticed: keep only what may be trusted.
            fields["bytes_received"] = store.recover_partial(row)
        store.update(conn, rid, **fields)
        return Outcome(rid, status, store.row(conn, rid))


class _RecordJournal:
    def __init__(self, store: Store, owner: str, record_id: str):
        self.store = store
        self.owner = owner
        self.record_id = record_id

    def checkpoint(self, task: DownloadTask) -> str | None:
        return self.store.checkpoint(self.record_id, self.owner, task._synced, task.bytes_total,
                                     task.etag, task.last_modified)  # fmt: skip


class Runner:
    """Runs claimed records as download tasks, up to N at once, steerable from outside.

    A control thread polls the state file every 50 ms for pause/cancel requests that other
    processes left on this process's records, and stops exactly those tasks.
    """

    def __init__(self, session: Session, store: Store, owner: str):
        self.session = session
        self.store = store
        self.owner = owner
        self.tasks: dict[str, DownloadTask] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._control: threading.Thread | None = None
        self.pool = ThreadPoolExecutor(max_workers=session.configuration.max_connections_per_host,
                                       thread_name_prefix="transfer")  # fmt: skip

    def start_control(self) -> None:
        if self.store.is_persistent and self._control is None:
            self._control = threading.Thread(target=self._control_loop, daemon=True,
                                             name="control")  # fmt: skip
            self._control.start()

    def _control_loop(self) -> None:
        while not self._stopping.wait(CONTROL_POLL_SECONDS):
            try:
                requests_ = self.store.requests_for(self.owner)
            except HalftunesError:
                continue
            for rid, request in requests_.items():
                with self._lock:
                    task = self.tasks.get(rid)
                if task is not None and request in ("pause", "cancel"):
                    task.request_stop(request)

    def submit(self, record: dict[str, Any], on_done=None):
        resume_data = ResumeData(
            record["url"], record["path"], record["part_path"], int(record["bytes_received"] or 0),
            record["bytes_total"], record["etag"], record["last_modified"],
        )  # fmt: skip
        task = DownloadTask(
            self.session, record["url"], record["path"], resume_data=resume_data,
            record_id=record["id"], journal=_RecordJournal(self.store, self.owner, record["id"]),
        )  # fmt: skip
        task.title = record.get("title") or record["id"]  # type: ignore[attr-defined]
        with self._lock:
            self.tasks[record["id"]] = task

        def run() -> Outcome:
            if self._stopping.is_set() and task._stop_reason is None:
                task.request_stop("pause")
            task.run()
            outcome = self.settle(task)
            with self._lock:
                self.tasks.pop(record["id"], None)
            if on_done is not None:
                on_done(outcome)
            return outcome

        return self.pool.submit(run)

    def settle(self, task: DownloadTask) -> Outcome:
        """Write the task's end into its record (only while we still own it)."""
        rid = task.record_id
        assert rid is not None
        state = task.state
        with self.store.transaction() as conn:
            row = conn.execute("SELECT owner FROM downloads WHERE id = ?", (rid,)).fetchone()
            if row is None or row["owner"] != self.owner:
                return Outcome(rid, "cancelled" if row is None else "paused", None, task.error)
            if state is TaskState.CANCELLED:
                self.store.delete(conn, rid)
                return Outcome(rid, "cancelled", None, None, task.notes)
            if state is TaskState.COMPLETED:
                status, error = "completed", None
            elif state is TaskState.PAUSED:
                status, error = "paused", None
            else:
                status, error = "failed", str(task.error) if task.error else "failed"
            self.store.update(conn, rid, status=status, error=error, bytes_received=task._synced,
                              bytes_total=task.bytes_total, owner=None, request=None,
                              etag=task.etag, last_modified=task.last_modified)  # fmt: skip
            record = self.store.row(conn, rid)
        return Outcome(rid, record["status"], record, task.error if state is TaskState.FAILED
                       else None, task.notes)  # fmt: skip

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


def wait_until_stopped(store: Store, record_id: str, timeout: float = 30.0) -> dict | None:
    """Block until a record is no longer running (or gone); returns it."""
    deadline = time.monotonic() + timeout
    while True:
        row = store.get(record_id)
        if row is None or row["status"] != "running":
            return row
        if not store.is_owner_alive(row["owner"]):
            store.reconcile()
            return store.get(record_id)
        if time.monotonic() > deadline:
            return row
        time.sleep(0.02)
