"""The background worker: a detached process that runs queued transfers and exits when idle.

An entry point (like the command line) on top of the download service: started by
`background.ensure_worker` with the worker lock already held on `--lock-fd`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from .background import LOG_MAX_BYTES, POLL_SECONDS, WORKER_LOG, WORKER_PID, WakeChannel
from .config import load_configuration, with_transfer_settings
from .errors import ExitStatus, HalftunesError
from .records import DownloadRecord, Records
from .runner import Outcome, Runner
from .service import DownloadService
from .session import Session

log = logging.getLogger("halftunes_cli.worker")
IDLE_SLEEP_MAX_SECONDS = 60.0


def _setup_logging(state_dir: Path) -> None:
    handler = logging.handlers.RotatingFileHandler(
        state_dir / WORKER_LOG, maxBytes=LOG_MAX_BYTES, backupCount=1, encoding="utf-8"
    )
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s [{os.getpid()}] %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    root = logging.getLogger("halftunes_cli")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def run(state_dir: Path, lock_fd: int) -> int:
    os.umask(0o077)
    _setup_logging(state_dir)
    try:
        config = load_configuration({"state_dir": str(state_dir), "session": "background"})
    except HalftunesError as exc:
        log.error("bad configuration: %s", exc)
        os.close(lock_fd)
        return ExitStatus.USAGE
    service = DownloadService(config)
    records = service.records
    owner = records.owner_token()
    (state_dir / WORKER_PID).write_text(f"{os.getpid()}\n")
    sessions: dict[str | None, Session] = {None: service.session}

    def session_for(record: DownloadRecord) -> Session:
        """Each transfer runs with the settings of the command that queued it."""
        if record.settings not in sessions:
            cfg, environment = with_transfer_settings(config, record.settings)
            sessions[record.settings] = Session(cfg, records=records, environment=environment)
        return sessions[record.settings]

    runner = Runner(service.session, owner, session_for)
    runner.start_control()
    stop = threading.Event()
    wake = WakeChannel(state_dir)

    def on_term(signum: int, frame: object) -> None:
        stop.set()
        wake.wake()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log.info("worker started")
    running: dict[str, Future[Outcome]] = {}
    limit = config.max_connections_per_host

    def done(outcome: Outcome) -> None:
        suffix = f" ({outcome.error})" if outcome.error is not None else ""
        log.info("%s: %s%s", outcome.id, outcome.status, suffix)
        if outcome.status == "completed" and outcome.record is not None:
            try:  # tags and artwork, if the queuing command asked (its cached track details)
                if service.embed(outcome.record, session_for(outcome.record)):
                    log.info("%s: tags written", outcome.id)
            except HalftunesError as exc:
                log.error("%s: %s (the file is kept)", outcome.id, exc)

    lock_open = True

    def leave() -> None:
        nonlocal lock_open
        os.close(lock_fd)
        lock_open = False

    try:
        while not stop.is_set():
            running = {k: f for k, f in running.items() if not f.done()}
            free = limit - len(running)
            claimed = records.claim_queued(owner, free) if free > 0 else []
            for record in claimed:
                log.info("%s: starting at byte %d", record.id, record.bytes_received)
                running[record.id] = runner.submit(record, on_done=done)
            if not running and not claimed and records.exit_if_idle(leave):
                break
            wake.wait(_sleep_for(records, bool(running or claimed)))
        if stop.is_set():
            log.info("SIGTERM: pausing every transfer")
            runner.stop_all("pause")
    except HalftunesError as exc:
        log.error("stopping: %s", exc)
        runner.stop_all("pause")
    finally:
        runner.shutdown()
        for session in sessions.values():
            if session is not service.session:
                session.http.close()
        service.close()
        wake.close()
        with contextlib.suppress(OSError):
            if (state_dir / WORKER_PID).read_text().strip() == str(os.getpid()):
                (state_dir / WORKER_PID).unlink()
        if lock_open:
            os.close(lock_fd)
        log.info("worker exiting")
    return ExitStatus.OK


def _sleep_for(records: Records, busy: bool) -> float:
    """How long the worker may sleep: a moment while transfers run (their ends free slots);
    when all that is left waits for its date, until the earliest one (at most a minute, in
    case the clock was set). A queuing command wakes it sooner (`background.wake_worker`)."""
    if busy:
        return POLL_SECONDS
    earliest = records.next_begin_date()
    if earliest is None:
        return POLL_SECONDS
    return min(max(POLL_SECONDS, earliest - time.time()), IDLE_SLEEP_MAX_SECONDS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m halftunes_cli.worker")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--lock-fd", required=True, type=int)
    args = parser.parse_args(argv)
    sys.exit(run(args.state_dir, args.lock_fd))


if __name__ == "__main__":
    main()
