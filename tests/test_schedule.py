"""A start date and priorities for background downloads (NSURLSessionTask's
earliestBeginDate and priority): `download -b --at TIME --priority low|default|high`."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import pytest
from conftest import run_in_pty, sha256_file
from test_background import stop_worker, worker_alive

from halftunes_cli.cli.downloads import parse_priority, parse_start_time
from halftunes_cli.errors import UsageError

T1, T2 = 1000001, 1000002


def previews(env, n: int) -> list[str]:
    tracks = env.server.state.tracks
    ids = [tid for tid in sorted(tracks) if tracks[tid].get("previewUrl")][:n]
    for tid in ids:
        env.track(tid, size=20_000)
    return [str(t) for t in ids]


def test_at_starts_no_byte_before_its_time_and_survives_a_worker_crash(env):
    env.track(T1, size=200_000)
    begin = datetime.now().astimezone() + timedelta(seconds=3)
    queued = env.run("download", "-b", str(T1), "--at", begin.isoformat(), "--priority", "high")
    assert queued.returncode == 0, queued.stderr
    assert "to start at" in queued.stderr
    record = env.record(str(T1))
    assert record["status"] == "waiting" and record["priority"] == 0.75
    assert record["earliest_begin_date"] == pytest.approx(begin.timestamp(), abs=1e-3)
    assert worker_alive(env)  # a worker waits with it (it does not exit while work waits)
    env.wait_for(env.worker_pid, what="the worker's pid file")
    stop_worker(env)  # kill -9 before the date: the date and priority are in the record
    assert not worker_alive(env)
    assert env.run("list").returncode == 0  # any command starts a worker for dated work
    assert worker_alive(env) and env.record(str(T1))["status"] == "waiting"
    waited = env.run("wait", str(T1), timeout=30)
    assert waited.returncode == 0, waited.stderr
    record = env.record(str(T1))
    assert record["status"] == "completed" and record["priority"] == 0.75
    assert sha256_file(record["path"]) == env.expected_sha(T1)
    (request,) = env.preview_requests(T1)
    assert request["time"] >= begin.timestamp()  # not one byte before its time


def test_a_high_priority_download_starts_before_twenty_low_ones(env):
    low = previews(env, 21)
    high = low.pop()
    gate = env.server.state.gate = threading.Event()  # the first transfer is held
    one_at_a_time = {"HALFTUNES_MAX_CONNECTIONS_PER_HOST": "1"}
    assert env.run("download", "-b", *low, "--priority", "low", env=one_at_a_time).returncode == 0
    env.wait_for(lambda: env.server.state.requests_for("/previews/"), what="the first transfer")
    assert env.run("download", "-b", high, "--priority", "high").returncode == 0
    gate.set()
    assert env.run("wait", timeout=60).returncode == 0
    order = [e["path"].split("/")[2] for e in env.server.state.requests_for("/previews/")]
    assert order[:2] == [low[0], high]  # the running one, then the high one
    assert sorted(order[2:]) == sorted(low[1:])
    assert all(r["status"] == "completed" for r in env.records().values())


def test_new_work_wakes_a_worker_that_sleeps_until_a_date(env):
    """A worker asleep until a date an hour away starts an undated download at once, and a
    waiting download can be paused, resumed (its date kept) and cancelled."""
    env.track(T1, size=20_000)
    env.track(T2, size=20_000)
    later = (datetime.now().astimezone() + timedelta(hours=1)).isoformat()
    assert env.run("download", "-b", str(T1), "--at", later).returncode == 0
    assert env.record(str(T1))["status"] == "waiting"
    time.sleep(0.3)  # (the worker has gone to sleep until the date)
    began = time.monotonic()
    assert env.run("download", "-b", str(T2)).returncode == 0
    assert env.run("wait", str(T2), timeout=20).returncode == 0
    assert time.monotonic() - began < 10  # woken, not at its next minute's look
    assert env.record(str(T1))["status"] == "waiting"
    date = env.record(str(T1))["earliest_begin_date"]
    listing = run_in_pty(env, ["list"], 120)
    assert "waiting" in listing and "starts at" in listing
    assert env.run("pause", str(T1)).returncode == 0
    assert env.record(str(T1))["status"] == "paused"
    assert env.run("resume", "-b", str(T1)).returncode == 0
    again = env.record(str(T1))
    assert again["status"] == "waiting" and again["earliest_begin_date"] == date
    assert env.run("cancel", str(T1)).returncode == 0
    assert env.record(str(T1)) is None and env.preview_requests(T1) == []


def test_schedules_are_for_the_background_and_bad_ones_are_bad_input(env):
    for args, says in (
        (["--at", "10:00"], "--at schedules a background download: add -b"),
        (["--priority", "high"], "--priority schedules a background download"),
        (["-b", "--at", "25:00"], "--at must be HH:MM or an ISO 8601"),
        (["-b", "--at", "tomorrow"], "--at must be HH:MM or an ISO 8601"),
        (["-b", "--at", "0001-01-01T00:00"], "--at must be HH:MM or an ISO 8601"),
        (["-b", "--priority", "urgent"], "--priority must be low, default, high"),
        (["-b", "--priority", "1.5"], "--priority must be low, default, high"),
    ):
        result = env.run("download", str(T1), *args)
        assert result.returncode == 2 and says in result.stderr, (args, result.stderr)
    assert env.record(str(T1)) is None and env.preview_requests(T1) == []


def test_start_times_and_priorities_parse_as_documented():
    now = datetime(2026, 12, 6, 15, 0, 0).astimezone()
    assert parse_start_time("15:30", now) == (now + timedelta(minutes=30)).timestamp()
    assert parse_start_time("14:00", now) == (now + timedelta(hours=23)).timestamp()
    assert (
        parse_start_time("2026-12-24T03:00+00:00", now)
        == datetime.fromisoformat("2026-12-24T03:00+00:00").timestamp()
    )
    assert parse_start_time("2026-12-24T03:00Z", now) == parse_start_time(
        "2026-12-24T03:00+00:00", now
    )
    local = datetime(2026, 12, 24, 3, 0).astimezone().timestamp()
    assert parse_start_time("2026-12-24 03:00", now) == local
    assert [parse_priority(p) for p in ("low", "default", "HIGH", "0.9")] == [
        0.25,
        0.5,
        0.75,
        0.9,
    ]
    with pytest.raises(UsageError):
        parse_priority("-0.1")


def test_the_library_task_carries_its_date_and_priority(env, tmp_path):
    from halftunes_cli import Session, SessionConfiguration

    env.track(T1, size=20_000)
    url = env.track(T1)["previewUrl"]
    config = SessionConfiguration.background(
        "sched", state_dir=env.state_dir, download_dir=tmp_path, api_url=env.server.url
    )
    session = Session(config)
    task = session.download_task(url)
    task.earliest_begin_date = datetime.now() + timedelta(seconds=2)
    task.priority = 0.75
    began = time.time()
    task.resume()
    record = task.record
    assert record["status"] == "waiting" and record["priority"] == 0.75
    assert task.wait(30)
    assert task.error is None and env.preview_requests(T1)[0]["time"] >= began + 1.5
    assert sha256_file(task.location) == env.expected_sha(T1)
    for when, priority in ((float("nan"), 0.5), ("2099-01-01", 0.5), (None, "high"), (None, 2)):
        bad = session.download_task(url + "?other")
        bad.earliest_begin_date, bad.priority = when, priority
        with pytest.raises(UsageError):
            bad.resume()
        assert str(bad.state) == "suspended"
