"""The background worker: a detached process that runs queued transfers, then exits when idle."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .background import LOG_MAX_BYTES, WORKER_LOG, WORKER_PID

POLL_SECONDS = 0.1


def _log(state_dir: Path, message: str) -> None:
    log = state_dir / WORKER_LOG
    try:
        if os.fstat(2).st_size > LOG_MAX_BYTES:
            # Rotate in place: keep one old log, point stdout/stderr at a fresh one.
            os.replace(log, log.with_name(log.name + ".1"))
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
    except OSError:
        pass
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with contextlib.suppress(OSError):
        os.write(2, f"{stamp} [{os.getpid()}] {message}\n".encode("utf-8", "replace"))


def run(state_dir: Path, lock_fd: int) -> int:
    from .config import load_configuration
    from .errors import HalftunesError
    from .manager import Runner
    from .session import Session
    from .store import Store

    os.umask(0o077)
    try:
        config = load_configuration({"state_dir": str(state_dir), "session": "background"})
    except HalftunesError as exc:
        _log(state_dir, f"bad configuration: {exc}")
        os.close(lock_fd)
        return 2
    store = Store(state_dir)
    owner = store.owner_token()
    (state_dir / WORKER_PID).write_text(f"{os.getpid()}\n")
    session = Session(config, store=store)
    runner = Runner(session, store, owner)
    runner.start_control()
    stop = threading.Event()

    def on_term(signum, frame):  # noqa: ARG001
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _log(state_dir, "worker started")
    running: dict[str, object] = {}
    limit = config.max_connections_per_host

    def done(outcome) -> None:
        msg = f"{outcome.id}: {outcome.status}"
        if outcome.error is not None:
            msg += f" ({outcome.error})"
        _log(state_dir, msg)

    lock_open = True
    try:
        while not stop.is_set():
            running = {k: f for k, f in running.items() if not f.done()}  # type: ignore[attr-defined]
            free = limit - len(running)
            claimed = []
            if free > 0:
                with store.transaction() as conn:
                    rows = conn.execute(
                        "SELECT * FROM downloads WHERE status = 'queued' ORDER BY seq LIMIT ?",
                        (free,),
                    ).fetchall()
                    for row in rows:
                        store.update(conn, row["id"], status="running", owner=owner,
                                     owner_pid=os.getpid(), request=None, error=None)  # fmt: skip
                        claimed.append(dict(row))
            for row in claimed:
                _log(state_dir, f"{row['id']}: starting at byte {row['bytes_received']}")
                running[row["id"]] = runner.submit(row, on_done=done)
            if not running and not claimed:
                # Leave only while holding the write lock with nothing queued: a client that
                # queues after this sees the worker lock free and starts a new worker.
                with store.transaction() as conn:
                    queued = conn.execute(
                        "SELECT COUNT(*) FROM downloads WHERE status = 'queued'"
                    ).fetchone()[0]
                    if queued == 0:
                        os.close(lock_fd)
                        lock_open = False
                if not lock_open:
                    break
            stop.wait(POLL_SECONDS)
        if stop.is_set():
            _log(state_dir, "SIGTERM: pausing every transfer")
            runner.stop_all("pause")
    except HalftunesError as exc:
        _log(state_dir, f"stopping: {exc}")
        runner.stop_all("pause")
    finally:
        runner.shutdown()
        session.close()
        with contextlib.suppress(OSError):
            if (state_dir / WORKER_PID).read_text().strip() == str(os.getpid()):
                (state_dir / WORKER_PID).unlink()
        store.close()
        if lock_open:
            os.close(lock_fd)
        _log(state_dir, "worker exiting")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m halftunes_cli.worker")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--lock-fd", required=True, type=int)
    args = parser.parse_args(argv)
    sys.exit(run(args.state_dir, args.lock_fd))


if __name__ == "__main__":
    main()
