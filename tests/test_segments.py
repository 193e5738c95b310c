"""One file over several connections (`-x N`): byte-identical, resumable per segment after a
kill -9, never spliced across a change on the server, one connection where the server
cannot be split, work stealing, and the per-host connection limit."""

from __future__ import annotations

import hashlib
import itertools
import json
import signal
import threading
from pathlib import Path

import pytest
from conftest import sha256_file

from halftunes_cli.ranges import OVERLAP_BYTES
from halftunes_cli.testing.catalog import body_sha256

MiB = 1 << 20
T1 = 1000001
EIGHT = {"HALFTUNES_MAX_CONNECTIONS_PER_HOST": "8"}


def file_url(env, size: int, seed: int = 5, extra: str = "") -> str:
    return f"{env.server.url}/files/big-{seed}.bin?size={size}&seed={seed}{extra}"


def file_requests(env, seed: int = 5) -> list[dict]:
    return env.server.state.requests_for(f"/files/big-{seed}.bin")


def ranges_of(requests: list[dict]) -> list[tuple[int, int]]:
    """(first, last) byte of every ranged request, in the order they came."""
    out = []
    for entry in requests:
        if entry["range"]:
            first, _, last = entry["range"].removeprefix("bytes=").partition("-")
            out.append((int(first), int(last)))
    return out


class ConnectionWatch:
    """The most TCP connections to the server that were open (ESTABLISHED) at once, as the
    kernel lists them: sampled every 2 ms while the block runs."""

    def __init__(self, env):
        self.port = int(env.server.url.rsplit(":", 1)[1])
        self.peak = 0
        self._stop = threading.Event()

    def _established(self) -> set[str]:
        found = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == self.port and fields[3] == "01":  # ESTABLISHED
                    found.add(fields[1])  # (the client's end: its local address)
        return found

    def _run(self) -> None:
        # A table is not read in one instant: a socket closed and another opened during one
        # read may both show. Only sockets seen in two reads in a row are counted.
        before = self._established()
        while not self._stop.wait(0.002):
            now = self._established()
            self.peak = max(self.peak, len(before & now))
            before = now

    def __enter__(self) -> ConnectionWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def only_record(env) -> dict:
    (record,) = env.json("list")
    return record


@pytest.mark.parametrize("durability", ["power-cut", "crash"])
def test_fifty_mib_over_eight_connections_is_byte_identical(env, durability):
    size = 50 * MiB
    url = file_url(env, size)
    env.server.state.throttle_bps = 16 * MiB  # per connection: a CDN's cap
    with ConnectionWatch(env) as watch:
        result = env.run(
            "download", "-x", "8", url, env={**EIGHT, "HALFTUNES_DURABILITY": durability}
        )
    assert result.returncode == 0, result.stderr
    assert sha256_file(result.stdout.strip()) == body_sha256(5, size)
    served = file_requests(env)
    first, *others = served
    assert first["range"] is None and first["status"] == 200  # the probe is the first segment
    assert len(others) >= 7 and {e["status"] for e in others} == {206}
    assert {e["if_range"] for e in others} == {f'"f5-{size}"'}
    assert watch.peak == 8
    record = only_record(env)
    assert record["status"] == "completed" and record["bytes_received"] == size
    assert env.state_record(record["id"])["segments"] is None


def test_kill_9_mid_way_then_every_segment_resumes_from_its_durable_length(env):
    size = 16 * MiB
    cap = MiB  # per connection
    env.server.state.throttle_bps = cap
    url = file_url(env, size)
    proc = env.spawn("download", "-x", "8", url, env=EIGHT)

    def checkpointed():
        rows = env.records() if (env.state_dir / "downloads.db").exists() else {}
        for row in rows.values():
            plan = env.state_record(row["id"])["segments"]
            if plan and all(d > 0 for _, _, d in json.loads(plan)["segments"]):
                return row["id"]
        return None

    rid = env.wait_for(checkpointed, what="a checkpoint of all eight segments")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = sum(e["bytes_sent"] for e in file_requests(env))
    record = env.record(rid)  # any command notices the dead owner
    assert record["status"] == "paused", record
    plan = json.loads(env.state_record(rid)["segments"])
    segments = plan["segments"]
    assert plan["connections"] == 8 and len(segments) == 8
    assert record["bytes_received"] == sum(d for _, _, d in segments) < size
    env.server.state.throttle_bps = None
    with env.server.state.lock:
        env.server.state.log.clear()
    result = env.run("resume", rid, env=EIGHT)
    assert result.returncode == 0, result.stderr
    assert sha256_file(env.record(rid)["path"]) == body_sha256(5, size)
    resumed = file_requests(env)
    # each segment asks for its own rest, from its durable length less the overlap, with
    # If-Range; none starts at 0 again
    asked = sorted(ranges_of(resumed))
    wanted = sorted((s + d - min(d, OVERLAP_BYTES), e - 1) for s, e, d in segments if s + d < e)
    assert asked[: len(wanted)] == wanted or set(wanted) <= set(asked), (asked, wanted)
    assert all(e["if_range"] == f'"f5-{size}"' and e["status"] == 206 for e in resumed)
    after = sum(e["bytes_sent"] for e in resumed)
    # bytes served in all: the file, plus per connection its overlap and at most what one
    # checkpoint interval (1 s at the cap) left unrecorded
    assert before + after <= size + 8 * (OVERLAP_BYTES + 2 * cap), (before, after)


def test_a_file_changed_between_pause_and_resume_restarts_never_a_splice(env):
    size = 8 * MiB
    env.track(T1, size=size)
    env.server.state.throttle_bps = 500_000
    proc = env.spawn("download", "-x", "4", str(T1))
    env.wait_for(
        lambda: (r := env.state_record(str(T1))) and r["segments"] and r["bytes_received"] > 0,
        what="a checkpoint of the segments",
    )
    paused = env.run("pause", str(T1))
    assert paused.returncode == 0, paused.stderr
    assert proc.wait(timeout=30) == 0 and "paused by request" in proc.stderr.read()
    assert env.record(T1)["status"] == "paused"
    env.track(T1, version=2)  # the same size, other bytes, another ETag
    env.server.state.throttle_bps = 4 * MiB
    with env.server.state.lock:
        env.server.state.log.clear()
    result = env.run("resume", str(T1))
    assert result.returncode == 0, result.stderr
    assert sha256_file(env.record(T1)["path"]) == env.expected_sha(T1)  # version 2, whole
    assert "changed" in result.stderr or "restarting" in result.stderr, result.stderr
    # the restart goes over the connections the download started with (resume has no -x)
    served = env.preview_requests(T1)
    restart = next(i for i, e in enumerate(served) if e["status"] == 200)
    assert sum(1 for e in served[restart:] if e["status"] == 206) >= 3, served


def test_a_changed_file_under_a_reused_etag_is_caught_by_a_segment_overlap(env):
    size = 8 * MiB
    env.track(T1, size=size)
    env.server.state.styles[T1] = "sticky-etag"  # one ETag whatever the content
    env.server.state.throttle_bps = 500_000
    proc = env.spawn("download", "-x", "4", str(T1))
    env.wait_for(
        lambda: (r := env.state_record(str(T1))) and r["segments"] and r["bytes_received"] > 0,
        what="a checkpoint of the segments",
    )
    assert env.run("pause", str(T1)).returncode == 0
    proc.wait(timeout=30)
    env.track(T1, version=2)
    env.server.state.throttle_bps = None
    result = env.run("resume", str(T1))
    assert result.returncode == 0, result.stderr
    assert sha256_file(env.record(T1)["path"]) == env.expected_sha(T1)
    assert "differ" in result.stderr, result.stderr


@pytest.mark.parametrize("habit", ["no_ranges", "no_etag"])
def test_a_server_that_cannot_be_split_gets_one_connection(env, habit):
    size = 4 * MiB
    result = env.run("-v", "download", "-x", "8", file_url(env, size, extra=f"&{habit}=1"))
    assert result.returncode == 0, result.stderr
    assert sha256_file(result.stdout.strip()) == body_sha256(5, size)
    (only,) = file_requests(env)
    assert only["range"] is None and only["bytes_sent"] == size
    assert "one connection" in result.stderr


def test_a_finished_connection_takes_half_of_the_largest_rest(env):
    # The first connection is slow (its answer is throttled), the second is not: when the
    # second is done it takes over half of what the first still has to fetch, again and
    # again, and the server sees ranges that start inside the first segment.
    size = 16 * MiB
    url = file_url(env, size)
    env.fault(path="/files/big-5.bin", kind="none", throttle=1_000_000, times=1)
    result = env.run("-v", "download", "-x", "2", url)
    assert result.returncode == 0, result.stderr
    assert sha256_file(result.stdout.strip()) == body_sha256(5, size)
    first_half = size // 2
    stolen = [(a, b) for a, b in ranges_of(file_requests(env)) if 0 < a < first_half]
    assert stolen, file_requests(env)
    assert all(b < first_half for _, b in stolen)  # each inside the first segment's range
    assert "taken over by idle connections" in result.stderr


def test_the_per_host_limit_holds(env):
    size = 16 * MiB
    env.server.state.throttle_bps = 4 * MiB
    with ConnectionWatch(env) as watch:
        result = env.run(
            "-v",
            "download",
            "-x",
            "8",
            file_url(env, size),
            env={"HALFTUNES_MAX_CONNECTIONS_PER_HOST": "3"},
        )
    assert result.returncode == 0, result.stderr
    assert sha256_file(result.stdout.strip()) == body_sha256(5, size)
    assert watch.peak == 3
    assert "3 of 8 connections" in result.stderr


def test_ctrl_c_keeps_the_segments_and_resume_completes(env):
    size = 16 * MiB
    env.server.state.throttle_bps = MiB
    proc = env.spawn("download", "-x", "4", file_url(env, size))
    rid = env.wait_for(
        lambda: next(
            (
                r["id"]
                for r in env.json("list")
                if (env.state_record(r["id"]) or {}).get("segments") and r["bytes_received"] > 0
            ),
            None,
        ),
        what="a checkpoint of the segments",
    )
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    record = env.record(rid)
    assert record["status"] == "paused"
    plan = json.loads(env.state_record(rid)["segments"])
    assert sum(d for _, _, d in plan["segments"]) == record["bytes_received"] > 0
    env.server.state.throttle_bps = None
    assert env.run("resume", rid).returncode == 0
    assert sha256_file(env.record(rid)["path"]) == body_sha256(5, size)


def test_cancel_removes_the_segmented_partial(env):
    size = 16 * MiB
    env.server.state.throttle_bps = MiB
    env.run("download", "-b", "-x", "4", file_url(env, size))
    rid = only_record(env)["id"]
    env.wait_for(
        lambda: (env.state_record(rid) or {}).get("segments"), what="the segments recorded"
    )
    part = env.state_record(rid)["part_path"]
    assert env.run("cancel", rid).returncode == 0
    env.wait_for(lambda: env.state_record(rid) is None, what="the record gone")
    env.server.state.throttle_bps = None
    env.wait_for(lambda: not __import__("os").path.exists(part), what="the partial gone")


@pytest.mark.parametrize("value", ["0", "17", "many", "-1", "٣", "", "1.5"])
def test_a_bad_connection_count_is_a_usage_error(env, value):
    result = env.run("download", "-x", value, str(T1))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "-x/--connections must be a number from 1 to 16 or auto" in result.stderr
    assert "Traceback" not in result.stderr
    assert env.record(T1) is None if (env.state_dir / "downloads.db").exists() else True


def test_auto_splits_big_files_only(env, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('connections_per_file = "auto"\nmax_connections_per_host = 8\n')
    extra = {"HALFTUNES_CONFIG": str(config)}
    env.server.state.throttle_bps = 16 * MiB
    small = env.run("download", file_url(env, 8 * MiB, seed=6), env=extra)
    assert small.returncode == 0, small.stderr
    assert len(file_requests(env, 6)) == 1
    with ConnectionWatch(env) as watch:
        big = env.run("download", file_url(env, 64 * MiB, seed=7), env=extra)
    assert big.returncode == 0, big.stderr
    assert sha256_file(big.stdout.strip()) == body_sha256(7, 64 * MiB)
    assert watch.peak == 8


def test_the_library_splits_a_file_for_an_ephemeral_session(env, tmp_path):
    from halftunes_cli import Session, SessionConfiguration

    size = 12 * MiB
    env.server.state.throttle_bps = 8 * MiB
    config = SessionConfiguration.ephemeral(
        connections_per_file=4, download_dir=tmp_path / "lib", max_connections_per_host=4
    )
    session = Session(config)
    try:
        with ConnectionWatch(env) as watch:
            task = session.download_task(file_url(env, size)).run()
    finally:
        session.close()
    assert task.error is None, task.error
    digest = hashlib.sha256(task.location.read_bytes()).hexdigest()
    assert digest == body_sha256(5, size)
    assert watch.peak == 4


def test_a_first_connection_fast_enough_keeps_the_file_to_itself(env, monkeypatch):
    # On loopback or a fast LAN more connections only cost CPU: a first connection that
    # brings the probe's bytes at the fast rate keeps the whole file (scaled down here so
    # the offline catalog is "fast" even on a loaded machine).
    from halftunes_cli.tasks import segments

    monkeypatch.setattr(segments, "PROBE_BYTES", 64 * 1024)
    monkeypatch.setattr(segments, "FAST_BYTES_PER_SECOND", 256 * 1024)
    monkeypatch.setattr(segments, "EARLY_SECONDS", 1.0)  # (a loaded machine is no slow link)
    size = 16 * MiB  # (two halves of 8 MiB: the probe decides long before the first ends)
    result = env.run("-v", "download", "-x", "2", file_url(env, size), env=EIGHT)
    assert result.returncode == 0, result.stderr
    assert sha256_file(result.stdout.strip()) == body_sha256(5, size)
    (only,) = file_requests(env)
    assert only["range"] is None and only["bytes_sent"] == size
    assert "one connection: it alone brings" in result.stderr


def test_keep_only_makes_the_first_segment_the_whole_file_unless_another_started():
    from halftunes_cli.tasks.segments import SegmentPlan

    plan = SegmentPlan.split(8 * MiB, 4)
    lead = plan.take()
    assert lead is not None and plan.keep_only(lead)
    assert [(s.start, s.end) for s in plan.segments] == [(0, 8 * MiB)] and plan.connections == 1
    busy = SegmentPlan.split(8 * MiB, 4)
    first, second = busy.take(), busy.take()
    assert first is not None and second is not None and not busy.keep_only(first)
    assert len(busy.segments) == 4


def test_work_stealing_splits_the_largest_rest_and_keeps_a_partition():
    from halftunes_cli.tasks.segments import SegmentPlan

    plan = SegmentPlan.split(16 * MiB, 2)
    a, b = plan.take(), plan.take()
    assert a is not None and b is not None
    plan.claim(b, 8 * MiB)
    plan.wrote(b, 8 * MiB)  # b is done; a has written 1 MiB of its 8
    plan.claim(a, MiB)
    plan.wrote(a, MiB)
    plan.release(b)
    stolen = plan.take()
    assert stolen is not None and (stolen.start, stolen.end) == (MiB + 7 * MiB // 2, 8 * MiB)
    assert a.end == stolen.start
    bounds = [(s.start, s.end) for s in plan.segments]
    assert bounds[0][0] == 0 and bounds[-1][1] == 16 * MiB
    assert all(x[1] == y[0] for x, y in itertools.pairwise(bounds))
    text, done = plan.snapshot()
    again = SegmentPlan.from_record(text, 16 * MiB)
    assert again is not None and again.done_bytes == done == 9 * MiB
    assert SegmentPlan.from_record(text, 15 * MiB) is None  # another size: nothing trusted


def _pause_with_both_halves_written(env, size: int) -> dict:
    """A -x 2 download paused once both halves have checkpointed bytes; its record."""
    env.track(T1, size=size)
    env.server.state.throttle_bps = 500_000
    proc = env.spawn("download", "-x", "2", str(T1))

    def both_written():
        row = env.state_record(str(T1))
        plan = json.loads(row["segments"]) if row and row["segments"] else None
        return plan and all(d > OVERLAP_BYTES for _, _, d in plan["segments"])

    env.wait_for(both_written, what="bytes checkpointed in both halves")
    assert env.run("pause", str(T1)).returncode == 0
    proc.wait(timeout=30)
    return env.state_record(str(T1))


def _set_plan(env, segments: list[list[int]]) -> None:
    import sqlite3

    db = sqlite3.connect(env.state_dir / "downloads.db")
    plan = json.dumps({"connections": 2, "segments": segments})
    done = sum(d for _, _, d in segments)
    db.execute("UPDATE downloads SET segments = ?, bytes_received = ?", (plan, done))
    db.commit()
    db.close()


def test_a_range_that_starts_where_another_segment_ended_compares_that_segment_s_bytes(env):
    # Every unfinished range starts at 0 bytes of its own, right after a finished one: the
    # bytes before it are compared, so a file rewritten under the same ETag is caught.
    size = 4 * MiB
    env.server.state.styles[T1] = "sticky-etag"
    row = _pause_with_both_halves_written(env, size)
    (_, _, d0), _ = json.loads(row["segments"])["segments"]
    _set_plan(env, [[0, d0, d0], [d0, size, 0]])  # the first ends where it got to
    env.track(T1, version=2)
    env.server.state.throttle_bps = None
    with env.server.state.lock:
        env.server.state.log.clear()
    result = env.run("resume", str(T1))
    assert result.returncode == 0, result.stderr
    assert sha256_file(env.record(T1)["path"]) == env.expected_sha(T1)  # version 2, whole
    assert "differ" in result.stderr, result.stderr
    # (the range that resumed the second segment: its end may already have moved down, when
    # the other connection took half of it before its request went out)
    asked = [e["range"] or "" for e in env.preview_requests(T1)]
    assert any(r.startswith(f"bytes={d0 - OVERLAP_BYTES}-") for r in asked), asked


def test_a_resume_that_compared_nothing_checks_a_stretch_of_the_partial(env):
    # A record that says every byte is there although the partial's end is zeros (edited by
    # hand, or a disk that lied): nothing is left to fetch, so nothing was compared; the
    # partial's last 64 KiB are asked for and compared before the file gets its name.
    import os

    size = 4 * MiB
    row = _pause_with_both_halves_written(env, size)
    (_, half, _), _ = json.loads(row["segments"])["segments"]
    _set_plan(env, [[0, half, half], [half, size, size - half]])
    fd = os.open(row["part_path"], os.O_WRONLY)
    os.pwrite(fd, bytes(OVERLAP_BYTES), size - OVERLAP_BYTES)
    os.close(fd)
    env.server.state.throttle_bps = None
    with env.server.state.lock:
        env.server.state.log.clear()
    result = env.run("resume", str(T1))
    assert result.returncode == 0, result.stderr
    assert sha256_file(env.record(T1)["path"]) == env.expected_sha(T1)
    check = env.preview_requests(T1)[0]
    assert check["range"] == f"bytes={size - OVERLAP_BYTES}-{size - 1}", check
    assert "differ" in result.stderr


def test_a_server_that_answers_ranges_badly_ends_on_one_connection(env):
    # It says Accept-Ranges but ignores every Range: after two restarts over several
    # connections the file goes over one, and completes (it used to restart forever).
    env.fault(path="/files/big-5.bin", kind="ignore_range", times=-1)
    env.server.state.throttle_bps = 8 * MiB
    size = 8 * MiB
    result = env.run("-v", "download", "-x", "4", file_url(env, size), env=EIGHT)
    assert result.returncode == 0, result.stderr
    assert sha256_file(result.stdout.strip()) == body_sha256(5, size)
    assert len(file_requests(env)) <= 3 * 4 + 1
    assert "one connection: 2 restarts over several connections" in result.stderr


def test_auto_says_why_a_small_file_takes_one_connection(env):
    result = env.run("-v", "download", "-x", "auto", file_url(env, 2 * MiB))
    assert result.returncode == 0, result.stderr
    assert "one connection: auto splits files of 64 MiB or more" in result.stderr
    shown = env.json("config", "show", env={"HALFTUNES_CONNECTIONS_PER_FILE": "auto"})
    assert shown["connections_per_file"] == {"value": "auto", "source": "env"}
