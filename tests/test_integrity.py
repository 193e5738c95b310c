"""Faults nobody planned for: a busy or vanished state file, a second writer on a partial, a
stop racing a transfer's end, digits that are not ASCII, a closed progress stream, failing
callbacks and fsyncs, odd paths, a server restarted mid-transfer. Each test names the case
of issue 18 it covers; each asserts what a user would check: the bytes of the final file,
the records, the exit status, one clear line."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import HALFTUNES, Env, LockWatch, WriterAudit, reap_children, sha256_file

from halftunes_cli import Session, SessionConfiguration, store
from halftunes_cli.records import Ending, Records, RecordStatus, Settlement, StopRequest
from halftunes_cli.service import DownloadService
from halftunes_cli.tasks import TaskState
from halftunes_cli.testing.catalog import CatalogServer

MB = 1_000_000
T, U = 1000005, 1000006

# A process that holds the state file's lock: sqlite3's exclusive locking mode, as a backup
# tool or a `sqlite3` shell in a transaction does. It holds it until its stdin closes.
HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode=EXCLUSIVE")
conn.execute("BEGIN EXCLUSIVE")
conn.execute("UPDATE meta SET value = value")
print("held", flush=True)
sys.stdin.read()
"""


def hold_state_file(env: Env) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(env.state_dir / "downloads.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=10)


def state_files(env: Env) -> tuple[int, list[str]]:
    """The state file's inode and every other file beside it (SQLite's -wal and -shm come
    and go: they are its business)."""
    names = sorted(
        p.name
        for p in env.state_dir.iterdir()
        if p.name.startswith("downloads.db") and not p.name.endswith(("-wal", "-shm"))
    )
    return (env.state_dir / "downloads.db").stat().st_ino, names


# Another process that writes a partial (as a second halftunes would): it holds the partial's
# lock until its stdin closes.
WRITER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def hold_partial(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def finished(env: Env, rid: str | int) -> Path:
    """The record says completed and its file holds exactly the server's bytes."""
    row = env.state_record(str(rid))
    assert row is not None and row["status"] == "completed", row
    assert sha256_file(row["path"]) == env.expected_sha(int(rid))
    return Path(row["path"])


# -- 1. a busy state file is not a corrupt one ---------------------------------------------------
def test_a_state_file_locked_longer_than_the_busy_timeout_is_busy_not_corrupt(env, monkeypatch):
    assert env.run("download", str(T)).returncode == 0
    before = state_files(env)
    monkeypatch.setattr(store, "BUSY_TIMEOUT_SECONDS", 0.3, raising=False)
    holder = hold_state_file(env)
    try:
        result = env.run("list")
    finally:
        release(holder)
    assert result.returncode == 1
    assert "busy" in result.stderr and "moved" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # the error and its hint
    assert state_files(env) == before  # untouched: no downloads.db.corrupt-*
    assert env.record(T)["status"] == "completed"  # the records are all still there


def test_a_command_out_of_file_descriptors_leaves_the_state_file_alone(env):
    assert env.run("download", str(T)).returncode == 0
    before = state_files(env)

    def few_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (5, 5))

    result = env.run_process("list", preexec_fn=few_files)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "moved it aside" not in result.stderr
    assert "cannot open" in result.stderr, result.stderr
    assert state_files(env) == before
    assert env.record(T)["status"] == "completed"


FULL_DISK = r"""
set -e
mount -t tmpfs -o size=200k tmpfs "$STATE"
cp -a "$SEED"/. "$STATE"/
dd if=/dev/zero of="$STATE/filler" bs=4k 2>/dev/null || true
set +e
"$HALFTUNES" download "$ID" -P "$DEST" >"$OUT" 2>"$ERR"
echo $? >"$CODE"
ls "$STATE" >"$LS"
"""


def test_a_full_state_disk_is_reported_and_the_state_file_kept(env, tmp_path):
    assert env.run("download", str(T)).returncode == 0
    seed = tmp_path / "seed"
    os.rename(env.state_dir, seed)
    env.state_dir.mkdir()
    files = {k: tmp_path / k for k in ("out", "err", "code", "ls")}
    shell = {
        **env.env,
        "STATE": str(env.state_dir),
        "SEED": str(seed),
        "ID": str(U),
        "DEST": str(tmp_path / "dest"),
        "HALFTUNES": HALFTUNES,
        **{k.upper(): str(v) for k, v in files.items()},
    }
    try:
        made = subprocess.run(
            ["unshare", "-m", "sh", "-c", FULL_DISK],
            env=shell,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError:
        pytest.skip("no unshare here")
    if made.returncode != 0 or not files["code"].exists():
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    err = files["err"].read_text()
    assert int(files["code"].read_text()) == 1, err
    assert "Traceback" not in err and "corrupt" not in err and "moved it aside" not in err
    assert "full" in err, err
    assert "downloads.db" in files["ls"].read_text().split()
    assert not any(".corrupt-" in n for n in files["ls"].read_text().split())


# -- 1 and 2. one writer per partial, whatever the state file says ------------------------------
def test_a_partial_that_another_process_writes_is_never_touched(env):
    env.download_dir.mkdir()
    part = env.download_dir / "Jack Johnson - Good People.m4a.part"
    part.write_bytes(b"theirs" * 10_000)
    writer = hold_partial(part)  # a writer no record names (its state file was lost)
    try:
        result = env.run("download", str(T))
        assert result.returncode == 1 and "being downloaded" in result.stderr, result.stderr
        assert "halftunes wait" in result.stderr or "halftunes list" in result.stderr
        assert env.state_record(str(T)) is None  # refused before a record was made
        assert part.read_bytes() == b"theirs" * 10_000  # not one byte touched
    finally:
        release(writer)
    assert env.run("download", str(T)).returncode == 0  # its writer is gone: ours now
    finished(env, T)


def test_a_library_task_refuses_a_partial_that_another_process_writes(server, tmp_path):
    part = tmp_path / "f.bin.part"
    part.write_bytes(b"x" * 5000)
    writer = hold_partial(part)
    try:
        session = Session(SessionConfiguration.ephemeral(download_dir=tmp_path))
        task = session.download_task(server.url + "/files/f.bin?size=100000")
        task.run()
    finally:
        release(writer)
    assert task.state is TaskState.FAILED and "being downloaded" in str(task.error)
    assert part.read_bytes() == b"x" * 5000 and not (tmp_path / "f.bin").exists()
    assert not server.state.requests_for("/files/f.bin")  # it did not even ask


def test_a_state_file_moved_aside_under_a_transfer_stops_it_and_never_splices(env):
    env.track(T, size=4 * MB)
    env.server.state.throttle_bps = MB
    audit = WriterAudit().start()
    proc = env.spawn("download", str(T))
    env.wait_for(lambda: env.part_size(T) > 300_000)
    for suffix in ("", "-wal", "-shm"):  # as a backup tool (or halftunes itself) moves it
        os.rename(env.state_dir / f"downloads.db{suffix}", env.state_dir / f"aside.db{suffix}")
    # The same id again, with no record of it: refused while the first process still holds
    # the partial, or fetched afresh once it has noticed and let go. Never both at once.
    second = env.run("download", str(T))
    assert second.returncode == 0 or "being downloaded" in second.stderr, second.stderr
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err  # the first one noticed and stopped cleanly
    assert "was moved or deleted" in err and "Traceback" not in err, err
    env.server.state.throttle_bps = None
    if second.returncode != 0:
        assert env.run("download", str(T)).returncode == 0
    finished(env, T)
    assert audit.stop() == [], "two processes wrote one partial"


def test_a_state_dir_deleted_under_the_worker_never_gets_a_second_writer(env):
    import shutil

    env.track(T, size=4 * MB)
    env.server.state.throttle_bps = MB
    audit = WriterAudit().start()
    assert env.run("download", "-b", str(T)).returncode == 0
    env.wait_for(lambda: env.part_size(T) > 300_000)
    first_worker = LockWatch(env.state_dir / "worker.lock")
    shutil.rmtree(env.state_dir)
    queued = env.run("download", "-b", str(T))  # a second worker, if the first has let go
    assert queued.returncode == 0 or "being downloaded" in queued.stderr, queued.stderr
    first_worker.wait_free()  # it notices that its state file is gone and leaves
    env.server.state.throttle_bps = None
    waited = env.run("wait", "--timeout", "60")
    if queued.returncode != 0 or waited.returncode != 0:
        assert env.run("download", str(T)).returncode == 0
    finished(env, T)
    assert audit.stop() == [], "two processes wrote one partial"


# -- 3. a stop racing a transfer's end ---------------------------------------------------------
def test_cancel_all_never_forgets_a_download_that_completed_meanwhile(env):
    for rid in (T, U):
        assert env.run("download", str(rid)).returncode == 0
    config = SessionConfiguration.default(state_dir=env.state_dir, download_dir=env.download_dir)
    with DownloadService(config) as service:
        # `cancel --all` read the records while these two were still running...
        stale = service.records.all()
        for record in stale:
            record.status = RecordStatus.RUNNING
        service.records.all = lambda ids=None: stale  # type: ignore[method-assign]
        # ...and reaches them after they completed.
        service.steer([], all_=True, action=StopRequest.CANCEL)
    for rid in (T, U):
        finished(env, rid)


def test_a_cancel_that_waits_for_an_owner_which_then_completes_keeps_the_record(env):
    config = SessionConfiguration.default(state_dir=env.state_dir, download_dir=env.download_dir)
    owner = Records(store.Store(env.state_dir))
    token = owner.owner_token()  # a live owner: this test
    from halftunes_cli.targets import Target

    path = env.download_dir / "song.m4a"
    env.download_dir.mkdir()
    [claim] = owner.claim(
        [Target("42", "http://127.0.0.1/x", "song", lambda s: "song.m4a")],
        owner=token,
        force=False,
        queue=False,
        download_dir=env.download_dir,
        session_kind="default",
    )
    assert claim.outcome == "claimed"
    service = DownloadService(config)
    steering = threading.Thread(
        target=service.steer, args=(["42"],), kwargs={"all_": False, "action": StopRequest.CANCEL}
    )
    steering.start()
    env.wait_for(lambda: (env.state_record("42") or {}).get("request") == "cancel")
    path.write_bytes(b"done")  # the owner's body was complete: it finishes and says so
    owner.settle_many([Settlement("42", token, Ending.COMPLETED, 4, 4, None, None, None)])
    steering.join(timeout=10)
    service.close()
    owner.close()
    row = env.state_record("42")
    assert row is not None and row["status"] == "completed"
    assert path.read_bytes() == b"done"


def test_a_stop_that_arrives_with_the_last_byte_lets_the_download_complete(server, tmp_path):
    url = server.url + "/files/a.bin?size=300000&seed=5"

    class StopAtTheEnd:
        def on_data_written(self, task, n, total, expected):
            if total == expected:
                task.request_stop("cancel")

    session = Session(SessionConfiguration.ephemeral(download_dir=tmp_path), StopAtTheEnd())
    task = session.download_task(url)
    task.run()
    assert task.state is TaskState.COMPLETED, task.error
    assert (tmp_path / "a.bin").stat().st_size == 300_000


def test_a_stop_that_lands_just_after_the_rename_ends_the_task_completed(
    server, tmp_path, monkeypatch
):
    url = server.url + "/files/b.bin?size=200000&seed=6"
    session = Session(SessionConfiguration.ephemeral(download_dir=tmp_path))
    task = session.download_task(url)
    real_replace = os.replace

    def replace_then_pause(src, dst):
        real_replace(src, dst)
        if str(dst).endswith("b.bin"):
            task.request_stop("pause")

    monkeypatch.setattr(os, "replace", replace_then_pause)
    task.run()
    assert task.state is TaskState.COMPLETED
    assert (tmp_path / "b.bin").stat().st_size == 200_000


# -- 4. characters that look like digits ----------------------------------------------------
def test_a_retry_after_of_superscript_two_is_one_line_not_a_traceback(env):
    env.fault(path="/search", kind="status", status=429, retry_after="²")
    result = env.run("search", "jack")
    assert result.returncode == 1
    assert "rate limited" in result.stderr and "internal error" not in result.stderr


def test_a_503_with_an_odd_retry_after_is_retried(env):
    env.fault(path=f"/previews/{T}/", kind="status", status=503, retry_after="²")
    result = env.run("download", str(T))
    assert result.returncode == 0, result.stderr
    finished(env, T)
    assert [r["status"] for r in env.preview_requests(T)] == [503, 200]


def test_a_content_length_of_superscript_one_is_a_server_fault(env):
    env.fault(path=f"/previews/{T}/", kind="header", name="Content-Length", value="¹", times=-1)
    result = env.run("download", str(T), env={"HALFTUNES_RETRIES": "1"})
    assert result.returncode == 1
    assert "Content-Length" in result.stderr and "internal error" not in result.stderr
    assert env.state_record(str(T))["status"] == "failed"
    assert len(env.preview_requests(T)) == 2  # a server fault: tried again, as a 5xx is


def test_an_odd_track_id_in_an_answer_neither_crashes_nor_poisons_the_cache(env):
    odd = {**env.server.state.tracks[T], "trackId": "²"}
    env.fault(path="/search", kind="results", results=[odd, env.server.state.tracks[U]])
    first = env.run("search", "odd", "digits", "--json")
    assert first.returncode == 0, first.stderr
    assert [r["trackId"] for r in json.loads(first.stdout)] == ["²", U]
    for args in (["search", "odd", "digits"], ["search", "odd", "digits", "--offline"]):
        again = env.run(*args)  # from the cache
        assert again.returncode == 0, again.stderr
    typed = env.run("download", "²")
    assert typed.returncode == 2 and "neither a track id" in typed.stderr


# -- 5. progress output that cannot be written ----------------------------------------------
def test_a_closed_progress_stream_never_touches_the_transfers(env, tmp_path):
    for rid in (T, U):
        env.track(rid, size=2 * MB)
    env.server.state.throttle_bps = 4 * MB
    out = open(tmp_path / "stdout", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [HALFTUNES, "download", str(T), str(U), "--progress", "json"],
        stdout=out,
        stderr=subprocess.PIPE,
        env=env.env,
    )
    assert proc.stderr.readline()  # `head -1`
    proc.stderr.close()
    code = proc.wait(timeout=60)
    out.close()
    assert code == 0
    for rid in (T, U):
        finished(env, rid)
    assert len((tmp_path / "stdout").read_text().splitlines()) == 2  # both paths printed


def test_both_streams_closed_still_settles_every_record(env):
    for rid in (T, U):
        env.track(rid, size=2 * MB)
    env.server.state.throttle_bps = 4 * MB
    proc = subprocess.Popen(
        [HALFTUNES, "download", str(T), str(U), "--progress", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env.env,
    )
    assert proc.stdout.readline()  # `2>&1 | head -1`
    proc.stdout.close()
    assert proc.wait(timeout=60) == 1  # its output could not be written
    for rid in (T, U):
        finished(env, rid)


# -- 6. library callbacks and fsync errors --------------------------------------------------
def test_a_raising_completion_handler_is_reported_after_the_task_completed(server, tmp_path):
    def completion(location, response, error):
        raise RuntimeError("my handler broke")

    session = Session(SessionConfiguration.ephemeral(download_dir=tmp_path))
    task = session.download_task(server.url + "/files/c.bin?size=100000", completion=completion)
    with pytest.raises(RuntimeError, match="my handler broke"):
        task.run()
    assert task.state is TaskState.COMPLETED and task.error is None
    assert (tmp_path / "c.bin").stat().st_size == 100_000


def test_a_raising_delegate_never_changes_the_outcome(server, tmp_path):
    class Broken:
        def on_data_written(self, *args):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    session = Session(SessionConfiguration.ephemeral(download_dir=tmp_path), Broken())
    task = session.download_task(server.url + "/files/d.bin?size=2000000")
    task.resume()
    assert task.wait(30)
    assert task.state is TaskState.COMPLETED and task.error is None
    assert (tmp_path / "d.bin").stat().st_size == 2_000_000
    assert isinstance(task.callback_error, BrokenPipeError)


def failing_fsync_of_partials(monkeypatch) -> None:
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):
            raise OSError(errno.EIO, "Input/output error")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_failed_fsync_fails_a_library_download(server, tmp_path, monkeypatch):
    failing_fsync_of_partials(monkeypatch)
    config = SessionConfiguration.ephemeral(download_dir=tmp_path)
    assert config.durability == "power-cut"
    task = Session(config).download_task(server.url + "/files/e.bin?size=300000")
    task.run()
    assert task.state is TaskState.FAILED
    assert "disk error" in str(task.error) and "Input/output error" in str(task.error)
    assert not (tmp_path / "e.bin").exists()  # never renamed: its bytes may not be on disk
    assert (tmp_path / "e.bin.part").exists()  # kept


def test_a_failed_fsync_fails_a_cli_download_and_keeps_the_partial(env, monkeypatch):
    failing_fsync_of_partials(monkeypatch)
    result = env.run("download", str(T))
    assert result.returncode == 1 and "Input/output error" in result.stderr, result.stderr
    row = env.state_record(str(T))
    assert row["status"] == "failed" and not Path(row["path"]).exists()
    assert Path(row["part_path"]).exists()


# -- 7. odd places -------------------------------------------------------------------------
def test_a_relative_state_dir_works_for_the_background_worker(env, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    rel = {"HALFTUNES_STATE_DIR": "relstate", "HALFTUNES_DOWNLOAD_DIR": "music"}
    queued = env.run_process("download", "-b", str(T), env=rel, cwd=work)
    assert queued.returncode == 0, queued.stderr
    waited = env.run_process("wait", "--timeout", "30", env=rel, cwd=work)
    assert waited.returncode == 0, waited.stderr
    listed = env.run_process("list", "--json", env=rel, cwd=work)
    [row] = json.loads(listed.stdout)
    assert row["status"] == "completed" and row["path"].startswith(str(work / "music"))
    assert sha256_file(row["path"]) == env.expected_sha(T)
    assert (work / "relstate" / "downloads.db").exists()
    assert "Traceback" not in (work / "relstate" / "worker.log").read_text()
    reap_children()


def test_wait_gives_up_when_the_worker_dies_at_start_up(env, tmp_path):
    broken = tmp_path / "broken-python"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(
        "import sys\nif 'halftunes_cli.worker' in ' '.join(sys.orig_argv):\n"
        "    sys.stderr.write('cannot start: a broken installation\\n')\n    raise SystemExit(3)\n"
    )
    queued = env.run_process("download", "-b", str(T), env={"PYTHONPATH": str(broken)})
    assert queued.returncode == 0, queued.stderr
    waited = env.run_process("wait", "--timeout", "60", env={"PYTHONPATH": str(broken)}, timeout=90)
    assert waited.returncode == 1, waited.stderr
    assert "worker" in waited.stderr and "start" in waited.stderr
    assert "worker.log" in waited.stderr
    log = (env.state_dir / "worker.log").read_text()
    assert log.count("cannot start") == 3  # `download -b` started it; `wait` tried twice
    reap_children()


def test_an_empty_preview_is_a_failed_download(env):
    env.track(T, size=0)
    result = env.run("download", str(T))
    assert result.returncode == 1
    assert "empty" in result.stderr and len(result.stderr.strip().splitlines()) <= 2
    row = env.state_record(str(T))
    assert row["status"] == "failed" and not Path(row["path"]).exists()


# -- 8. a server restarted mid-transfer ------------------------------------------------------
def test_a_server_restarted_mid_transfer_is_waited_for(env):
    env.track(T, size=6 * MB)
    env.server.state.throttle_bps = 2 * MB
    proc = env.spawn("download", str(T))
    env.wait_for(lambda: env.part_size(T) > MB)
    old = env.server
    old.stop(drop_connections=True)  # nginx -s stop: the port refuses for 3 s
    time.sleep(3)
    restarted = CatalogServer(port=old.port, state=old.state).start()
    try:
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        finished(env, T)
        ranged = [r for r in env.preview_requests(T) if r["range"]]
        assert ranged and ranged[-1]["status"] == 206  # continued, not started over
    finally:
        restarted.stop()


# -- 9. also read in the code ----------------------------------------------------------------
def test_an_interrupted_foreground_run_restores_the_signal_handlers(env):
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    env.track(T, size=4 * MB)
    env.server.state.throttle_bps = MB

    def ctrl_c_once_bytes_flow() -> None:
        env.wait_for(lambda: env.part_size(T) > 100_000)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c_once_bytes_flow, daemon=True).start()
    result = env.run("download", str(T))  # in this process: its handlers are ours to check
    assert result.returncode == 130, result.stderr
    assert env.state_record(str(T))["status"] == "paused"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_an_upload_reads_at_most_a_bounded_answer(server, tmp_path):
    import tracemalloc

    source = tmp_path / "up.bin"
    source.write_bytes(b"u" * 100_000)
    server.state.faults.append({"path": "/upload/", "kind": "big_reply", "bytes": 48 << 20})
    session = Session(SessionConfiguration.ephemeral(download_dir=tmp_path))
    task = session.upload_task(server.url + "/upload/up.bin", source)
    tracemalloc.start()
    try:
        task.run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert task.state is TaskState.COMPLETED and task.response.status_code == 201
    assert len(task.data) == 1 << 20
    assert peak < 8 << 20, peak


def test_a_bug_anywhere_is_one_line_and_exit_1_with_the_traceback_under_v(env, monkeypatch):
    def broken(self):
        raise ValueError("a bug of ours")

    monkeypatch.setattr(DownloadService, "all_records", broken)
    result = env.run("list")  # (in-process: a traceback would be raised here, failing the test)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "halftunes: error: internal error: ValueError: a bug of ours",
        "  hint: this is a bug in halftunes; run again with -v for the traceback and report it",
    ]
    verbose = env.run("-v", "list")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr


# -- found by an attack run on the first fixes ------------------------------------------------
def test_a_timeout_too_large_for_the_clock_is_bad_input(env):
    for value in ("1e10", "1e300"):
        result = env.run("download", str(T), env={"HALFTUNES_REQUEST_TIMEOUT": value})
        assert result.returncode == 2 and "request_timeout" in result.stderr, result.stderr
    assert env.state_record(str(T)) is None


def test_a_bug_in_a_transfer_shows_its_traceback_under_v(env, monkeypatch):
    def broken_send(*args, **kwargs):
        raise TypeError("transport bug")

    monkeypatch.setattr("halftunes_cli.transport.HttpClient.send", broken_send)
    result = env.run("-v", "download", str(T))
    assert result.returncode == 1 and "internal error: TypeError: transport bug" in result.stderr
    assert "Traceback" in result.stderr and "broken_send" in result.stderr


def corrupt_a_page(env: Env) -> None:
    """Spoil the downloads table's page (page 2) past its first bytes: the file's header
    stays valid, and SQLite says "malformed" only when a query reaches the page."""
    db = env.state_dir / "downloads.db"
    assert not Path(str(db) + "-wal").exists() or Path(str(db) + "-wal").stat().st_size == 0
    with open(db, "r+b") as f:
        f.seek(4096 + 8)
        f.write(b"\xff" * 4088)


def test_a_state_file_found_corrupt_in_use_is_moved_aside(env):
    assert env.run("download", str(T)).returncode == 0
    corrupt_a_page(env)
    first = env.run("download", str(U))
    assert first.returncode == 1 and "moved it aside" in first.stderr, first.stderr
    assert [p.name for p in env.state_dir.glob("downloads.db.corrupt-*")]
    again = env.run("download", str(U))  # a clean state file: it works again
    assert again.returncode == 0, again.stderr
    finished(env, U)


def test_a_database_with_our_name_but_other_columns_is_not_ours(env):
    import sqlite3

    env.state_dir.mkdir()
    conn = sqlite3.connect(env.state_dir / "downloads.db")
    conn.execute("CREATE TABLE downloads (id TEXT PRIMARY KEY, whatever TEXT)")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    result = env.run("list")
    assert result.returncode == 1 and "moved it aside" in result.stderr, result.stderr
    assert env.run("list").returncode == 0


@pytest.mark.parametrize("spoil", ["worker.lock", "worker.log"])
def test_a_worker_file_that_is_a_folder_is_one_line_and_wait_ends(env, spoil):
    assert env.run("list").returncode == 0
    (env.state_dir / spoil).mkdir()
    queued = env.run("download", "-b", str(T))
    assert queued.returncode == 1 and "background worker" in queued.stderr, queued.stderr
    assert len(queued.stderr.strip().splitlines()) <= 3
    waited = env.run("wait", "--timeout", "20")
    assert waited.returncode == 1, waited.stderr  # not 124: it says why instead of waiting


def test_a_dangling_symlink_as_state_file_creates_nothing_where_it_points(env, tmp_path):
    env.state_dir.mkdir()
    target = tmp_path / "nowhere" / "x.db"
    (tmp_path / "nowhere").mkdir()
    (env.state_dir / "downloads.db").symlink_to(target)
    result = env.run("list")
    assert result.returncode == 1 and "moved it aside" in result.stderr, result.stderr
    assert not target.exists()


def test_a_closed_stderr_does_not_stop_a_download(env):
    def close_stderr() -> None:
        os.close(2)

    result = env.run_process("download", str(T), preexec_fn=close_stderr)
    assert result.returncode == 0
    finished(env, T)


def test_an_in_process_command_is_stopped_at_its_timeout(env):
    from conftest import CommandTimedOut

    env.server.state.first_byte_delay = 3  # a slow server: each answer starts after 3 s
    started = time.monotonic()
    with pytest.raises(CommandTimedOut):
        env.run("search", "jack", timeout=1)
    assert time.monotonic() - started < 10
