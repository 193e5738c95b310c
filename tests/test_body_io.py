"""The body's way from the socket to the disk: the reused receive buffer, chunked bodies,
connections kept for the next download, and early writeback in durability = power-cut."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest
from conftest import sha256_file

from halftunes_cli.tasks.checkpointer import Checkpointer
from halftunes_cli.tasks.partial import WRITEBACK_BYTES, PartialFile
from halftunes_cli.transport import RequestHandle

T1 = 1000001
MB = 1_000_000


def with_previews(env, count: int) -> list[int]:
    tracks = env.server.state.tracks
    return [tid for tid in sorted(tracks) if tracks[tid].get("previewUrl")][:count]


def test_a_chunked_body_downloads(env):
    env.track(T1, size=3 * MB)
    env.fault(path=f"/previews/{T1}/", kind="chunked", times=-1)
    result = env.run("download", str(T1))
    assert result.returncode == 0, result.stderr
    assert sha256_file(result.stdout.strip()) == env.expected_sha(T1)
    (req,) = env.preview_requests(T1)
    assert req["status"] == 200 and req["bytes_sent"] == 3 * MB


def test_each_slot_keeps_its_connection_for_the_next_download(env):
    ids = with_previews(env, 12)
    for tid in ids:
        env.track(tid, size=300_000)
    env.run("search", "jack")  # the API's connection is not a download's
    before = env.server.state.connections
    result = env.run("download", *map(str, ids), env={"HALFTUNES_MAX_CONNECTIONS_PER_HOST": "2"})
    assert result.returncode == 0, result.stderr
    records = env.records()
    for tid in ids:
        rec = records[str(tid)]
        assert rec["status"] == "completed" and sha256_file(rec["path"]) == env.expected_sha(tid)
        assert len(env.preview_requests(tid)) == 1  # no connection cut under a transfer
    # 12 bodies read to the end by 2 transfers at a time: 2 connections (+1 for the lookup)
    assert env.server.state.connections - before <= 3


def test_a_body_cut_short_is_not_reused_and_the_next_request_opens_a_connection(env):
    env.track(T1, size=MB)
    env.fault(path=f"/previews/{T1}/", kind="drop", after=400_000)
    result = env.run("download", str(T1))
    assert result.returncode == 0, result.stderr
    assert sha256_file(result.stdout.strip()) == env.expected_sha(T1)
    first, second = env.preview_requests(T1)
    assert (first["bytes_sent"], second["status"]) == (400_000, 206)


def test_early_writeback_covers_each_finished_region_once_in_order(tmp_path):
    calls: list[tuple[int, int]] = []
    fsyncs: list[int] = []
    worker = Checkpointer("test")

    def writeback(fd: int, offset: int, length: int) -> None:
        assert os.fstat(fd).st_size >= offset + length  # the bytes are in the file already
        calls.append((offset, length))

    part = PartialFile(
        tmp_path / "w.part",
        checkpointer=worker,
        writeback=writeback,
        fsync=lambda fd: fsyncs.append(fd),
    )
    part.open_at(0)
    block = b"b" * (WRITEBACK_BYTES // 4 + 1)
    for _ in range(9):
        part.write(block)
    part.checkpoint()  # the checkpointer's queue is in order: it has run every writeback too
    part.wait_for_checkpoint()
    done = threading.Event()
    worker.submit(done.set)
    assert done.wait(10)
    part.close()
    ends = [offset + length for offset, length in calls]
    assert calls and calls[0][0] == 0
    assert [offset for offset, _ in calls[1:]] == ends[:-1]  # contiguous, no byte twice
    assert all(length >= WRITEBACK_BYTES for _, length in calls)
    assert ends[-1] <= part.length == 9 * len(block)
    assert part.synced == part.length and fsyncs  # durability still comes from the fsync


def test_no_writeback_in_crash_mode(tmp_path):
    calls = []
    part = PartialFile(
        tmp_path / "c.part",
        durable=False,
        checkpointer=Checkpointer("test"),
        writeback=lambda *a: calls.append(a),
    )
    part.open_at(0)
    part.write(b"c" * (2 * WRITEBACK_BYTES))
    part.checkpoint()
    part.close()
    assert calls == [] and Path(part.path).stat().st_size == 2 * WRITEBACK_BYTES


def test_a_late_stop_never_cuts_the_connection_another_request_took_over():
    # A finished request's handle still knows the pooled socket the next request now uses.
    ours, server = socket.socketpair()
    with ours, server:
        finished, current = RequestHandle(), RequestHandle()
        finished.attach(ours)
        current.attach(ours)  # the pool handed the connection on
        finished.abort()
        server.sendall(b"x")
        assert ours.recv(1) == b"x"  # still open
        current.abort()
        assert ours.recv(1) == b""  # the owner's stop shuts it


def test_a_stop_after_the_end_changes_nothing(env):
    from halftunes_cli import Session, SessionConfiguration

    env.track(T1, size=200_000)
    url = env.track(T1)["previewUrl"]
    session = Session(SessionConfiguration.ephemeral())
    before = env.server.state.connections
    first = session.download_task(url, env.download_dir / "a.m4a")
    first.run()
    first.request_stop("cancel")  # late: the task has ended, its connection is in the pool
    assert first.state == "completed" and first.error is None
    second = session.download_task(url, env.download_dir / "b.m4a")
    second.run()
    for name in ("a.m4a", "b.m4a"):
        assert sha256_file(env.download_dir / name) == env.expected_sha(T1)
    assert env.server.state.connections - before == 1  # the pooled connection was not cut


def test_group_commit_makes_each_file_durable_before_its_final_name(env, monkeypatch):
    # power-cut: the settling thread fsyncs finished partials in groups, then renames them
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("rename", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    ids = with_previews(env, 8)
    for tid in ids:
        env.track(tid, size=150_000)
    result = env.run("download", *map(str, ids))
    assert result.returncode == 0, result.stderr
    renames = [i for i, (kind, _) in enumerate(events) if kind == "rename" and _.endswith(".part")]
    assert len(renames) == len(ids)
    for i in renames:
        part = events[i][1]
        assert ("fsync", part) in events[:i], f"{part} renamed before it was fsynced"
    records = env.records()
    for tid in ids:
        rec = records[str(tid)]
        assert rec["status"] == "completed" and sha256_file(rec["path"]) == env.expected_sha(tid)


def test_one_bad_ending_does_not_fail_the_others_in_its_batch(env, monkeypatch):
    # The settling thread writes a batch in one transaction; when that fails, each ending is
    # settled alone, so only the one that cannot be written reports an error.
    import time as _time

    from halftunes_cli import Session
    from halftunes_cli.config import load_configuration
    from halftunes_cli.records import Records
    from halftunes_cli.runner import Runner
    from halftunes_cli.targets import Target

    ids = with_previews(env, 2)
    session = Session(
        load_configuration({"state_dir": str(env.state_dir), "download_dir": str(env.download_dir)})
    )
    owner = session.records.owner_token()
    targets = [
        Target(str(t), env.track(t)["previewUrl"], str(t), lambda s, t=t: f"{t}{s}.m4a")
        for t in ids
    ]
    claims = session.records.claim(
        targets,
        owner=owner,
        force=False,
        queue=False,
        download_dir=env.download_dir,
        session_kind="default",
    )
    runner = Runner(session, owner)
    runner._settler = object()  # hold the settling thread back: both endings form one batch
    futures = [runner.submit(c.record) for c in claims]
    deadline = _time.monotonic() + 20
    while runner._ended.qsize() < 2 and _time.monotonic() < deadline:
        _time.sleep(0.01)
    bad = str(ids[1])
    real = Records.settle_many

    def settle_many(self, endings):
        if any(e.record_id == bad for e in endings):
            raise RuntimeError("this record cannot be written")
        return real(self, endings)

    monkeypatch.setattr(Records, "settle_many", settle_many)
    runner._ended.put(None)
    runner._settle_loop()  # here, on this thread: one batch of both
    good = futures[0].result(timeout=1)
    assert good.status == "completed" and sha256_file(good.record.path) == env.expected_sha(ids[0])
    with pytest.raises(RuntimeError):
        futures[1].result(timeout=1)
    runner._settler = None
    runner.shutdown()
    session.close()


def test_the_installed_urllib3_is_one_the_body_reader_knows(server):
    # transport.body_reader reads from urllib3 2's response internals (its http.client
    # response, `_fp`, and that one's `_close_conn`) and `read1` (2.2+): a urllib3 outside
    # the range pyproject admits must fail here, not in a transfer.
    import http.client

    import requests
    import urllib3

    major, minor = (int(part) for part in urllib3.__version__.split(".")[:2])
    assert (2, 2) <= (major, minor) < (3, 0), urllib3.__version__
    with requests.get(server.url + "/files/x.bin?size=1000", stream=True) as response:
        raw = response.raw
        assert isinstance(raw, urllib3.HTTPResponse) and hasattr(raw, "read1")
        assert isinstance(raw._fp, http.client.HTTPResponse)
        assert callable(raw._fp._close_conn) and hasattr(raw._fp.fp, "readinto1")
        assert raw.connection is not None and raw.connection.sock is not None
