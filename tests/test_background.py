"""The background session: a real detached worker process, steered from other processes."""

from __future__ import annotations

import contextlib
import os
import pty
import signal
import subprocess
import threading
from pathlib import Path

from conftest import HALFTUNES, read_terminal, sha256_file

from halftunes_cli.liveness import is_lock_held

MB = 1_000_000


def jack_ids(env, n):
    return [str(t) for t in sorted(env.server.state.tracks)[:n]]


def worker_alive(env) -> bool:
    return is_lock_held(env.state_dir / "worker.lock")


def stop_worker(env, sig=signal.SIGKILL) -> None:
    """Signal the worker and reap it (it is our child: tests are a subreaper)."""
    pid = env.worker_pid()
    assert pid is not None
    os.kill(pid, sig)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    env.wait_for(lambda: not worker_alive(env), what="worker lock released")


def start_background(env, n: int, size: int = 3 * MB, bps: int = MB, flowing: int = 100_000):
    """n throttled background transfers, returned once each has bytes on disk."""
    ids = jack_ids(env, n)
    for rid in ids:
        env.track(int(rid), size=size)
    env.server.state.throttle_bps = bps
    assert env.run("download", "-b", *ids).returncode == 0
    env.wait_for(lambda: all(env.part_size(r) > flowing for r in ids))
    return ids


def test_twenty_previews_in_the_background(env):
    ids = [
        str(t["trackId"])
        for t in env.json("search", "artist", "--limit", "40")
        if "previewUrl" in t
    ][:20]
    assert len(ids) == 20
    # The first transfer stalls for 2 s: `download -b` must return without waiting for it
    # (its wall time is benchmark S5's business).
    env.fault(path=f"/previews/{ids[0]}/", kind="stall", after=1000, seconds=2)
    result = env.run("download", "-b", *ids)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ids
    assert env.state_record(ids[0])["status"] in ("queued", "running")
    waited = env.run("wait", "--timeout", "60")
    assert waited.returncode == 0, waited.stderr
    records = env.records()
    for rid in ids:
        assert records[rid]["status"] == "completed"
        assert sha256_file(records[rid]["path"]) == env.expected_sha(int(rid))
    env.wait_for(lambda: not worker_alive(env), what="idle worker exits")
    # (it lets go of its lock inside the transaction that finds the queue empty, then closes
    # its sessions and says so: the last line comes a moment after the lock is free)
    log = env.state_dir / "worker.log"
    env.wait_for(lambda: "worker exiting" in log.read_text(), what="the worker's last line")


def test_worker_outlives_the_shell_that_started_it(env):
    env.track(1000001, size=2 * MB)
    env.server.state.throttle_bps = 2 * MB
    shell = subprocess.run(
        ["sh", "-c", f'"{HALFTUNES}" download -b 1000001; exit 0'],
        env=env.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shell.returncode == 0, shell.stderr
    assert worker_alive(env)
    waited = env.run("wait", "1000001", "--timeout", "30")
    assert waited.returncode == 0, waited.stderr
    assert sha256_file(env.record(1000001)["path"]) == env.expected_sha(1000001)


def test_ten_racing_commands_start_exactly_one_worker(env):
    ids = jack_ids(env, 10)
    for rid in ids:
        env.track(int(rid), size=500_000)
    # The server holds every answer until all ten commands have returned: the worker that
    # the first of them starts is still busy when the last one queues (however slow the
    # machine), so a second start could only come from a race between the commands.
    gate = env.server.state.gate = threading.Event()
    procs = [env.spawn("download", "-b", rid) for rid in ids]
    for p in procs:
        p.communicate(timeout=60)
        assert p.returncode == 0
    gate.set()
    assert env.run("wait", "--timeout", "60").returncode == 0
    log = (env.state_dir / "worker.log").read_text()
    starts = [line for line in log.splitlines() if line.endswith("worker started")]
    assert len(starts) == 1, log


def test_pause_one_background_transfer_leaves_the_others_running(env):
    ids = start_background(env, 3)
    target, others = ids[0], ids[1:]
    entry = env.preview_requests(int(target))[0]
    served_before = entry["bytes_sent"]
    result = env.run("pause", target)
    assert result.returncode == 0, result.stderr
    env.wait_for(lambda: entry["ended"] is not None, timeout=5)
    assert entry["bytes_sent"] - served_before < MB  # at 1 MB/s: stopped within a second
    assert env.record(target)["status"] == "paused"
    for rid in others:
        assert env.preview_requests(int(rid))[0]["ended"] is None  # still flowing
        assert env.record(rid)["status"] == "running"
    paused_at = env.record(target)["bytes_received"]
    assert paused_at == env.part_size(target)
    env.server.state.throttle_bps = None
    assert env.run("resume", "-b", target).returncode == 0
    assert env.run("wait", "--timeout", "60").returncode == 0
    assert env.preview_requests(int(target))[-1]["range"] == env.resume_range(paused_at)
    for rid in ids:
        assert sha256_file(env.record(rid)["path"]) == env.expected_sha(int(rid))


def test_kill_9_of_the_worker_then_resume_all(env):
    size, bps = 3 * MB, MB
    ids = start_background(env, 3, size, bps, flowing=300_000)
    stop_worker(env, signal.SIGKILL)
    records = env.records()  # any command notices the dead owner
    for rid in ids:
        assert records[rid]["status"] == "paused"
        assert "background worker" in records[rid]["error"]
        assert records[rid]["bytes_received"] == env.part_size(rid)
    env.server.state.throttle_bps = None
    assert env.run("resume", "--all", "-b").returncode == 0
    assert env.run("wait", "--timeout", "60").returncode == 0
    for rid in ids:
        assert sha256_file(env.record(rid)["path"]) == env.expected_sha(int(rid))
        served = sum(r["bytes_sent"] for r in env.preview_requests(int(rid)))
        # at most one checkpoint interval fetched twice, plus the resume's 64 KiB overlap
        assert served - size <= bps + 65536


def test_sigterm_pauses_everything_and_exits(env):
    ids = start_background(env, 2)
    stop_worker(env, signal.SIGTERM)
    for rid in ids:
        row = env.state_record(rid)
        assert row["status"] == "paused" and row["error"] is None
        assert row["bytes_received"] == env.part_size(rid)


def test_wait_timeout_exits_124_and_failures_exit_1(env):
    env.track(1000001, size=3 * MB)
    env.server.state.throttle_bps = 500_000
    assert env.run("download", "-b", "1000001").returncode == 0
    result = env.run("wait", "--timeout", "0.3")
    assert result.returncode == 124
    assert env.run("cancel", "1000001").returncode == 0
    env.server.state.throttle_bps = None
    env.fault(path="/previews/1000002/", kind="status", status=404)
    assert env.run("download", "-b", "1000002").returncode == 0
    result = env.run("wait", "1000002", "--timeout", "30")
    assert result.returncode == 1 and "HTTP 404" in result.stderr


def test_finished_transfers_are_announced_once_on_a_terminal(env):
    assert env.run("download", "-b", "1000001").returncode == 0
    # (not `halftunes wait`: what a wait returns counts as reported, and is not announced)
    env.wait_for(lambda: (env.state_record("1000001") or {}).get("status") == "completed")
    piped = env.run("list")
    assert "background download" not in piped.stderr  # not a terminal: keep it for later

    def run_with_tty_stderr() -> tuple[str, str]:
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [HALFTUNES, "list", "--json"],
            stdout=subprocess.PIPE,
            stderr=slave,
            env=env.env,
            text=True,
        )
        os.close(slave)
        out, _ = proc.communicate(timeout=30)
        return out, read_terminal(master)

    out, err = run_with_tty_stderr()
    assert "1 background download finished" in err and "Better Together" in err
    assert "background download" not in out  # never on stdout
    _, err = run_with_tty_stderr()
    assert "finished" not in err  # once


def test_worker_log_is_rotated(env):
    env.state_dir.mkdir(mode=0o700)
    (env.state_dir / "worker.log").write_bytes(b"x" * (2 << 20))
    assert env.run("download", "-b", "1000001").returncode == 0
    assert env.run("wait", "--timeout", "30").returncode == 0
    assert (env.state_dir / "worker.log.1").stat().st_size == 2 << 20
    assert (env.state_dir / "worker.log").stat().st_size < 100_000


def test_library_background_session_reattaches(env):
    code = f"""
import sys
from halftunes_cli import Session, SessionConfiguration
cfg = SessionConfiguration.background("my-app", state_dir=sys.argv[1], download_dir=sys.argv[2])
session = Session(cfg)
task = session.download_task({env.server.url + "/files/a.bin?size=200000&seed=5"!r})
task.resume()
again = Session(SessionConfiguration.background("my-app", state_dir=sys.argv[1]))
tasks = again.all_tasks()
assert [t.record_id for t in tasks] == [task.record_id], tasks
assert tasks[0].wait(30)
print(tasks[0].state, tasks[0].record["path"])
"""
    import sys

    result = subprocess.run(
        [sys.executable, "-c", code, str(env.state_dir), str(env.download_dir)],
        capture_output=True,
        text=True,
        env=env.env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    status, path = result.stdout.split(maxsplit=1)
    assert status == "completed" and Path(path.strip()).stat().st_size == 200000


# -- each transfer carries the settings of the command that queued it ------------------------
def test_a_running_worker_uses_each_commands_own_settings(env, tmp_path):
    # The worker is started by a plain command and kept busy...
    first = start_background(env, 1, size=3 * MB, bps=MB)[0]
    assert worker_alive(env)
    # ...then another command, with a proxy, a header in its config file and no retries,
    # queues more: those transfers must run with its settings, not the worker's.
    cfg = tmp_path / "b.toml"
    cfg.write_text('retries = 0\n[headers]\nX-Team = "blue"\n')
    extra = {"HALFTUNES_CONFIG": str(cfg), "HTTP_PROXY": env.server.url, "NO_PROXY": ""}
    good = f"{env.server.url}/files/good.bin?size=100000&seed=3"
    flaky = f"{env.server.url}/files/flaky.bin?size=100000&seed=4"
    env.fault(path="/files/flaky.bin", kind="status", status=503, times=2)
    assert env.run("download", "-b", good, flaky, env=extra).returncode == 0
    env.server.state.throttle_bps = None
    waited = env.run("wait", "--timeout", "60")
    assert waited.returncode == 1  # flaky failed: retries = 0 travelled with it
    [good_req] = env.server.state.requests_for("/files/good.bin")
    assert good_req["proxied"] and good_req["headers"].get("x-team") == "blue"
    flaky_reqs = env.server.state.requests_for("/files/flaky.bin")
    assert [r["status"] for r in flaky_reqs] == [503]
    first_reqs = env.preview_requests(int(first))
    assert not any(r["proxied"] or "x-team" in r["headers"] for r in first_reqs)
    assert env.record(first)["status"] == "completed"
    state = b"".join(p.read_bytes() for p in env.state_dir.rglob("*") if p.is_file())
    assert b"blue" not in state  # header values are re-read from the file, never stored


def test_a_proxy_password_is_never_stored(env):
    extra = {"HTTPS_PROXY": "http://user:pa55word@proxy.example:3128"}
    result = env.run("download", "-b", "1000001", env=extra)
    assert result.returncode == 2 and "password" in result.stderr
    assert env.state_record("1000001") is None
    state = b"".join(p.read_bytes() for p in env.state_dir.rglob("*") if p.is_file())
    assert b"pa55word" not in state


def test_a_state_file_of_format_1_is_migrated(env):
    import sqlite3

    from halftunes_cli import store

    env.state_dir.mkdir(mode=0o700)
    db = sqlite3.connect(env.state_dir / "downloads.db")
    v1 = store._SCHEMA.replace("    settings TEXT,\n", "")
    v1 = v1.replace("    segments TEXT,\n", "").replace("    http_status INTEGER,\n", "")
    db.executescript(v1.replace("    permanent INTEGER NOT NULL DEFAULT 0,\n", ""))
    db.execute(
        "INSERT INTO downloads (id, seq, url, path, path_key, part_path, status, "
        "created, updated) VALUES ('u1', 1, 'https://a/b', '/x/b', '/x/b', '/x/b.part', "
        "'paused', 0, 0)"
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    assert [r["id"] for r in env.json("list")] == ["u1"]
    db = sqlite3.connect(env.state_dir / "downloads.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION == 3
    assert "segments" in [c[1] for c in db.execute("PRAGMA table_info(downloads)")]
    assert "settings" in [c[1] for c in db.execute("PRAGMA table_info(downloads)")]
    db.close()
