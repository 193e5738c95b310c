"""Resume against the habits of real servers (nginx, Apache, Caddy, object stores): validators
that do not change when the file does, forced compression, and a server that thinks for a
long time before its headers. The result is the new content, byte for byte, or a refusal."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from conftest import sha256_file

from halftunes_cli.ranges import OVERLAP_BYTES
from halftunes_cli.testing.catalog import MODIFIED_NOW

T = 1000001
MB = 1_000_000


def start_and_pause(env, size: int = 2 * MB) -> dict:
    env.track(T, size=size)
    env.server.state.throttle_bps = MB
    proc = env.spawn("download", str(T))
    env.wait_for(lambda: env.part_size(T) > 100_000, what="bytes flowing")
    assert env.run("pause", str(T)).returncode == 0
    proc.communicate(timeout=30)
    env.server.state.throttle_bps = None
    record = env.state_record(str(T))
    assert record["status"] == "paused" and record["bytes_received"] > 100_000
    return record


def rewrite_same_size(env) -> None:
    """New content of the same size, the modification time unchanged (a same-second rewrite)."""
    env.server.state.versions[T] = env.server.state.versions.get(T, 1) + 1


@pytest.mark.parametrize("style", ["lm-only", "mtime-etag"])
def test_a_same_second_rewrite_never_splices(env, style):
    # Last-Modified in the same second as the response's Date: neither it nor an ETag made of
    # mtime + size can tell a same-second rewrite, so halftunes trusts none of them.
    env.server.state.styles[T] = style
    env.server.state.mtimes[T] = MODIFIED_NOW  # every answer: Last-Modified == its Date
    record = start_and_pause(env)
    assert record["etag"] is None and record["last_modified"] is None
    rewrite_same_size(env)
    result = env.run("resume", str(T))
    assert result.returncode == 0, result.stderr
    assert sha256_file(record["path"]) == env.expected_sha(T)  # the new content, whole
    last = env.preview_requests(T)[-1]
    assert last["range"] is None and last["if_range"] is None and last["status"] == 200


def test_a_reused_etag_is_caught_by_the_overlap(env):
    # The validator says "unchanged" (an ETag reused across content): the 64 KiB before the
    # resume point differ from the partial, so nothing is appended and it restarts from 0.
    env.server.state.styles[T] = "sticky-etag"
    record = start_and_pause(env)
    assert record["etag"] == f'"p{T}-sticky"'
    rewrite_same_size(env)
    result = env.run("-v", "resume", str(T))
    assert result.returncode == 0, result.stderr
    assert "the server's copy changed" in result.stderr
    assert sha256_file(record["path"]) == env.expected_sha(T)
    overlap_try, fresh = env.preview_requests(T)[-2:]
    assert overlap_try["status"] == 206 and overlap_try["if_range"] == f'"p{T}-sticky"'
    assert overlap_try["range"] == env.resume_range(record["bytes_received"])
    assert fresh["range"] is None and fresh["status"] == 200


def test_a_weak_etag_never_goes_into_if_range(env):
    env.server.state.styles[T] = "weak-etag"
    record = start_and_pause(env)
    assert record["etag"] is None and record["last_modified"]  # the old mtime is strong
    result = env.run("resume", str(T))
    assert result.returncode == 0, result.stderr
    assert sha256_file(record["path"]) == env.expected_sha(T)
    last = env.preview_requests(T)[-1]
    assert last["if_range"] == record["last_modified"] and last["status"] == 206
    assert last["bytes_sent"] == 2 * MB - record["bytes_received"] + OVERLAP_BYTES


def test_a_forced_gzip_body_is_decoded_also_across_a_pause(env):
    # Apache force-gzip: Content-Encoding gzip although we sent Accept-Encoding: identity.
    env.server.state.gzip_tracks.add(T)
    record = start_and_pause(env, size=3 * MB)
    result = env.run("-v", "resume", str(T))
    assert result.returncode == 0, result.stderr
    assert "compressed" in result.stderr
    path = result.stdout.strip()
    assert sha256_file(path) == env.expected_sha(T)  # the resource, not its gzip
    requests = env.preview_requests(T)
    assert all(r["accept_encoding"] == "identity" for r in requests)
    assert requests[-1]["status"] == 206  # ranges over the gzip bytes resumed
    assert env.state_record(str(T))["status"] == "completed"
    assert not Path(path + ".decoding").exists() and not Path(record["part_path"]).exists()


def test_pause_during_a_long_wait_for_headers(env):
    env.fault(path=f"/previews/{T}/", kind="header_delay", seconds=20)
    proc = env.spawn("download", str(T))
    env.wait_for(lambda: env.preview_requests(T), what="the request")
    entry = env.preview_requests(T)[0]  # logged: the client now waits for the headers
    began = time.time()
    result = env.run("pause", str(T))
    assert result.returncode == 0, result.stderr
    env.wait_for(lambda: entry.get("closed_by_client"), timeout=5, what="the client hung up")
    assert entry["closed_by_client"] - began < 1.0  # the server saw the close within 1 s
    assert entry["bytes_sent"] == 0 and entry["status"] is None
    _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "paused by request" in err
    assert env.state_record(str(T))["status"] == "paused"


def test_ctrl_c_during_a_long_wait_for_headers_and_a_second_one(env):
    env.fault(path=f"/previews/{T}/", kind="header_delay", seconds=20)
    proc = env.spawn("download", str(T))
    env.wait_for(lambda: env.preview_requests(T), what="the request")
    entry = env.preview_requests(T)[0]
    began = time.time()
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert entry["closed_by_client"] - began < 1.0
    assert env.record(T)["status"] == "paused"


def test_a_second_ctrl_c_always_ends_the_process(env):
    env.track(T, size=3 * MB)
    env.server.state.throttle_bps = 500_000
    proc = env.spawn("download", str(T))
    env.wait_for(lambda: env.part_size(T) > 50_000, what="bytes flowing")
    # Hold the first Ctrl-C's pause in its checkpoint: the state file is locked by us.
    import sqlite3

    db = sqlite3.connect(env.state_dir / "downloads.db", timeout=1, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    try:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert proc.poll() is None  # the first Ctrl-C waits for its checkpoint
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=10)
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert proc.returncode == 130 and "exiting now" in err
    env.server.state.throttle_bps = None
    assert env.run("resume", str(T)).returncode == 0  # the partial on disk was trusted
    assert sha256_file(env.record(T)["path"]) == env.expected_sha(T)


def test_resume_of_an_id_another_process_is_downloading_exits_1(env):
    env.track(T, size=3 * MB)
    env.server.state.throttle_bps = MB
    proc = env.spawn("download", str(T))
    env.wait_for(lambda: env.part_size(T) > 50_000, what="bytes flowing")
    result = env.run("resume", str(T))
    assert result.returncode == 1
    assert "right now" in result.stderr and f"halftunes wait {T}" in result.stderr
    env.server.state.throttle_bps = None
    proc.communicate(timeout=30)
    assert len(env.preview_requests(T)) == 1
