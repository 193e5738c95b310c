"""The background session's client side: start the worker, hand it records, reattach tasks."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .store import is_lock_held

WORKER_LOCK = "worker.lock"
WORKER_PID = "worker.pid"
WORKER_LOG = "worker.log"
LOG_MAX_BYTES = 1 << 20


def is_worker_alive(state_dir: Path) -> bool:
    return is_lock_held(Path(state_dir) / WORKER_LOCK)


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
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(state_dir / WORKER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    try:
        log_path = state_dir / WORKER_LOG
        rotate_log(log_path)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            subprocess.Popen(
                [sys.executable, "-m", "halftunes_cli.worker", "--state-dir", str(state_dir),
                 "--lock-fd", str(fd)],
                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, pass_fds=(fd,),
                start_new_session=True, cwd="/", close_fds=True,
            )  # fmt: skip
        finally:
            os.close(log_fd)
    finally:
        os.close(fd)  # the child keeps the lock through its own copy
    return True


def worker_pid(state_dir: Path) -> int | None:
    try:
        return int((Path(state_dir) / WORKER_PID).read_text().strip())
    except (OSError, ValueError):
        return None


class BackgroundDownloadTask:
    """A download handed to the worker; its record is the truth (reattachable by identifier)."""

    def __init__(self, session: Any, url: str, destination: Any = None, completion: Any = None,
                 record_id: str | None = None):  # fmt: skip
        from .manager import url_record_id

        self.session = session
        self.url = url
        self.destination = destination
        self.completion = completion
        self.record_id = record_id or url_record_id(url)
        self.task_identifier = session._new_task_id()

    @property
    def record(self) -> dict | None:
        return self.session.store.get(self.record_id)

    @property
    def state(self) -> str:
        row = self.record
        return row["status"] if row else "cancelled"

    def resume(self) -> BackgroundDownloadTask:
        from .manager import Claimer, check_download_dir, target_for_url
        from .naming import safe_filename

        cfg = self.session.configuration
        store = self.session.store
        row = store.get(self.record_id)
        download_dir = Path(self.destination).parent if self.destination else cfg.download_dir
        claimer = Claimer(store, check_download_dir(Path(download_dir)), "background")
        if row is None:
            target = target_for_url(self.url)
            target.id = self.record_id
            if self.destination:
                stem, ext = os.path.splitext(Path(self.destination).name)
                target.namer = lambda suffix: safe_filename(stem, ext, suffix)
            claimer.claim(target, None, force=False, queue=True)
        elif row["status"] in ("paused", "failed"):
            claimer.claim_record(row, None, force=False, queue=True)
        store.set_fields(self.record_id, session_id=cfg.identifier)
        ensure_worker(Path(cfg.state_dir))
        return self

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.session.store.reconcile()
            state = self.state
            if state not in ("queued", "running"):
                if self.completion is not None:
                    row = self.record
                    location = Path(row["path"]) if row and state == "completed" else None
                    self.completion(location, None, row.get("error") if row else None)
                    self.completion = None
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    def cancel(self) -> None:
        from .manager import wait_until_stopped

        store = self.session.store
        with store.transaction() as conn:
            store.update(conn, self.record_id, request="cancel")
        wait_until_stopped(store, self.record_id)

    def suspend(self) -> None:
        from .manager import wait_until_stopped

        store = self.session.store
        with store.transaction() as conn:
            row = store.row(conn, self.record_id)
            if row is not None and row["status"] == "queued":
                store.update(conn, self.record_id, status="paused")
            elif row is not None:
                store.update(conn, self.record_id, request="pause")
        wait_until_stopped(store, self.record_id)


def reattach(session: Any) -> list[BackgroundDownloadTask]:
    """The tasks a background session with this identifier handed to the worker before."""
    ident = session.configuration.identifier
    rows = session.store.query("SELECT id, url, path FROM downloads WHERE session_id = ? "
                               "ORDER BY seq", (ident,))  # fmt: skip
    return [BackgroundDownloadTask(session, r["url"], r["path"], record_id=r["id"]) for r in rows]
