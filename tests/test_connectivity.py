"""Waiting for connectivity (NSURLSessionConfiguration.waitsForConnectivity): a transfer that
cannot reach its host waits, visibly, and starts as soon as the host answers; the background
session waits by default, a foreground download with --wait-for-network."""

from __future__ import annotations

import json
import threading
import time

from conftest import run_in_pty, sha256_file
from test_background import stop_worker, worker_alive

from halftunes_cli import Session, SessionConfiguration
from halftunes_cli.testing.catalog import CatalogServer

T1 = 1000001
PROBE = 1.0  # seconds between probes at most (a test setting; 30 s by default)


def down(env) -> int:
    """Stop the catalog (after a search put the preview addresses in the cache)."""
    assert env.run("search", "jack").returncode == 0
    port = env.server.port
    env.server.stop()
    return port


def up_again(env, port: int) -> CatalogServer:
    env.server = CatalogServer(port=port, state=env.server.state).start()
    return env.server


def test_a_background_download_waits_while_the_host_is_down(env):
    env.track(T1, size=300_000)
    probe = {"HALFTUNES_CONNECTIVITY_PROBE_SECONDS": str(PROBE)}
    port = down(env)
    queued = env.run("download", "-b", str(T1), env=probe)
    assert queued.returncode == 0, queued.stderr
    env.wait_for(lambda: env.record(str(T1))["status"] == "waiting", what="waiting")
    listing = run_in_pty(env, ["list"], 120)
    assert "waiting for the network" in listing and "connection refused" in listing
    busy = env.run("download", str(T1))  # in the worker's hands: not a second transfer
    assert busy.returncode == 1 and "waits for the network in the background worker" in busy.stderr
    time.sleep(2 * PROBE)  # it probes, and keeps waiting (no failure is counted)
    assert env.record(str(T1))["status"] == "waiting"
    server = up_again(env, port)
    back = time.time()
    waited = env.run("wait", str(T1), timeout=30)
    assert waited.returncode == 0, waited.stderr
    record = env.record(str(T1))
    assert record["status"] == "completed"
    assert sha256_file(record["path"]) == env.expected_sha(T1)
    (request,) = server.state.requests_for(f"/previews/{T1}/")
    assert request["time"] - back < PROBE + 1.0  # within one probe interval (and slack)
    server.stop()


def test_pause_and_cancel_reach_a_waiting_transfer_at_once(env):
    env.track(T1, size=300_000)
    env.track(1000002, size=300_000)
    slow = {"HALFTUNES_CONNECTIVITY_PROBE_SECONDS": "60"}  # (it would sleep a minute)
    down(env)
    assert env.run("download", "-b", str(T1), "1000002", env=slow).returncode == 0
    env.wait_for(
        lambda: all(r["status"] == "waiting" for r in env.records().values()), what="waiting"
    )
    began = time.monotonic()
    paused = env.run("pause", str(T1))
    assert paused.returncode == 0, paused.stderr
    assert time.monotonic() - began < 5
    assert env.record(str(T1))["status"] == "paused"
    began = time.monotonic()
    assert env.run("cancel", "1000002").returncode == 0
    assert time.monotonic() - began < 5 and env.record("1000002") is None
    env.wait_for(lambda: not worker_alive(env), what="the worker leaves: nothing is left to do")


def test_a_waiting_transfer_whose_worker_died_is_paused(env):
    env.track(T1, size=300_000)
    down(env)
    assert env.run("download", "-b", str(T1)).returncode == 0
    env.wait_for(lambda: env.record(str(T1))["status"] == "waiting", what="waiting")
    env.wait_for(env.worker_pid, what="the worker's pid file")
    stop_worker(env)  # kill -9
    record = env.record(str(T1))
    assert record["status"] == "paused" and "stopped while downloading" in record["error"]


def test_the_foreground_fails_fast_unless_asked_to_wait(env):
    env.track(T1, size=100_000)
    port = down(env)
    began = time.monotonic()
    failed = env.run("download", str(T1))
    assert failed.returncode == 1 and "connection refused" in failed.stderr
    assert time.monotonic() - began < 10  # two attempts, not a minute of retries
    limited = {"HALFTUNES_RESOURCE_TIMEOUT": "2", "HALFTUNES_CONNECTIVITY_PROBE_SECONDS": "0.3"}
    began = time.monotonic()
    gave_up = env.run("download", str(T1), "--wait-for-network", env=limited)
    assert gave_up.returncode == 1 and "before the resource timeout" in gave_up.stderr
    assert 1.8 <= time.monotonic() - began < 10  # it probed until the timeout itself
    assert env.record(str(T1))["status"] == "failed"
    threading.Timer(1.5, lambda: up_again(env, port)).start()
    probing = {"HALFTUNES_CONNECTIVITY_PROBE_SECONDS": "0.3"}
    came = env.run("download", str(T1), "--wait-for-network", "--progress", "json", env=probing)
    assert came.returncode == 0, came.stderr
    assert sha256_file(came.stdout.strip()) == env.expected_sha(T1)
    events = [json.loads(line) for line in came.stderr.splitlines() if line.startswith("{")]
    assert any(e.get("reason") == "waiting for the network" for e in events)
    env.server.stop()


def test_the_library_delegate_hears_it(env, tmp_path):
    env.track(T1, size=50_000)
    url = env.track(T1)["previewUrl"]
    port = env.server.port
    state = env.server.state
    env.server.stop()
    heard = []

    class Delegate:
        def task_is_waiting_for_connectivity(self, task):
            heard.append(("waiting", task.is_waiting_for_connectivity))

        def on_complete(self, task, error):
            heard.append(("complete", task.is_waiting_for_connectivity))

    config = SessionConfiguration.ephemeral(
        download_dir=tmp_path, waits_for_connectivity=True, connectivity_probe_seconds=0.3
    )
    assert not SessionConfiguration.ephemeral().waits_for_connectivity
    assert SessionConfiguration.background("x").waits_for_connectivity
    session = Session(config, delegate=Delegate())
    task = session.download_task(url, tmp_path / "a.m4a")
    task.resume()
    deadline = time.monotonic() + 10
    while not heard and time.monotonic() < deadline:
        time.sleep(0.02)
    assert heard == [("waiting", True)]
    server = CatalogServer(port=port, state=state).start()
    try:
        assert task.wait(20)
    finally:
        server.stop()
        session.close()
    assert task.error is None and heard == [("waiting", True), ("complete", False)]
    assert sha256_file(tmp_path / "a.m4a") == env.expected_sha(T1)
    assert task.metrics.retries == 0  # waiting is not retrying


def test_the_configuration_says_who_waits(env):
    default = env.json("config", "show")
    assert default["waits_for_connectivity"]["value"] is False
    background = env.json("config", "show", env={"HALFTUNES_SESSION": "background"})
    assert background["waits_for_connectivity"]["value"] is True
    assert background["connectivity_probe_seconds"]["value"] == 30.0
    bad = env.run("config", "show", env={"HALFTUNES_CONNECTIVITY_PROBE_SECONDS": "0"})
    assert bad.returncode == 2
