"""Foreground downloads end to end: real CLI processes against the real local server."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest
from conftest import corrupt_state, sha256_file

from halftunes_cli.ranges import OVERLAP_BYTES

T1, T2 = 1000001, 1000002  # Jack Johnson - Better Together / Banana Pancakes
MB = 1_000_000


def start_throttled(env, tid, size=3 * MB, bps=1_000_000, *args, extra=None):
    env.track(tid, size=size)
    env.server.state.throttle_bps = bps
    proc = env.spawn("download", str(tid), *args, env=extra)
    env.wait_for(lambda: env.part_size(tid) > 50_000, what="bytes flowing")
    return proc


def test_download_5mb_sha256(env):
    env.track(T1, size=5 * MB)
    result = env.run("download", str(T1))
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path == env.download_dir / "Jack Johnson - Better Together.m4a"
    assert sha256_file(path) == env.expected_sha(T1)
    assert not Path(str(path) + ".part").exists()
    rec = env.record(T1)
    assert rec["status"] == "completed" and rec["bytes_received"] == rec["bytes_total"] == 5 * MB
    req = env.preview_requests(T1)
    assert len(req) == 1 and req[0]["range"] is None
    assert req[0]["accept_encoding"] == "identity"


def test_json_output_has_the_contract_keys(env):
    records = env.json("download", str(T1), str(T2))
    assert [r["id"] for r in records] == [str(T1), str(T2)]
    for key in (
        "id",
        "url",
        "path",
        "part_path",
        "status",
        "bytes_received",
        "bytes_total",
        "error",
    ):
        assert key in records[0]
    assert {r["status"] for r in records} == {"completed"}


def test_drop_at_40_percent_recovers_from_the_checkpoint(env):
    size = 2 * MB
    env.track(T1, size=size)
    env.fault(path=f"/previews/{T1}/", kind="drop", after=int(size * 0.4))
    result = env.run("download", str(T1))
    assert result.returncode == 0, result.stderr
    assert sha256_file(result.stdout.strip()) == env.expected_sha(T1)
    first, second = env.preview_requests(T1)
    assert first["bytes_sent"] == int(size * 0.4)
    assert second["range"] == env.resume_range(int(size * 0.4))
    assert second["if_range"] == f'"p{T1}-v1-{size}"'
    assert second["status"] == 206
    # nothing fetched twice but the 64 KiB overlap, compared before appending
    assert first["bytes_sent"] + second["bytes_sent"] == size + OVERLAP_BYTES


DURABILITY = pytest.mark.parametrize("durability", ["power-cut", "crash"])


@DURABILITY
def test_kill_9_then_resume_fetches_only_the_missing_bytes(env, durability):
    size = 3 * MB
    proc = start_throttled(env, T1, size, extra={"HALFTUNES_DURABILITY": durability})
    threshold = random.Random(20261127).randint(100_000, 2 * MB)
    env.wait_for(lambda: env.part_size(T1) >= threshold or proc.poll() is not None)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    env.server.state.throttle_bps = None
    rec = env.record(T1)  # any command notices the dead owner
    assert rec["status"] == "paused"
    assert "stopped while downloading" in rec["error"]
    have = env.part_size(T1)
    assert rec["bytes_received"] == have > 0
    result = env.run("resume", str(T1))
    assert result.returncode == 0, result.stderr
    assert sha256_file(env.record(T1)["path"]) == env.expected_sha(T1)
    last = env.preview_requests(T1)[-1]
    assert last["range"] == env.resume_range(have)
    assert last["bytes_sent"] == size - have + min(have, OVERLAP_BYTES)


@DURABILITY
def test_after_a_reboot_only_the_last_checkpoint_is_trusted(env, durability):
    # A power cut: the partial may hold bytes (in a page cache that is gone) beyond the last
    # checkpoint. Another boot id on the record makes the next command cut it back.
    import sqlite3

    proc = start_throttled(env, T1, 3 * MB, extra={"HALFTUNES_DURABILITY": durability})
    env.wait_for(
        lambda: (
            (env.state_record(T1)["bytes_received"] or 0) > 0
            and env.part_size(T1) > env.state_record(T1)["bytes_received"] + 100_000
        ),
        what="a checkpoint, and bytes past it",
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    db = sqlite3.connect(env.state_dir / "downloads.db")
    db.execute("UPDATE downloads SET boot_id = 'a-boot-before-the-power-cut'")
    db.commit()
    checkpoint = db.execute("SELECT bytes_received FROM downloads").fetchone()[0]
    db.close()
    assert env.part_size(T1) > checkpoint
    rec = env.record(T1)
    assert rec["status"] == "paused" and rec["bytes_received"] == checkpoint
    assert env.part_size(T1) == checkpoint  # cut back: nothing after it is trusted
    env.server.state.throttle_bps = None
    assert env.run("resume", str(T1)).returncode == 0
    assert sha256_file(rec["path"]) == env.expected_sha(T1)
    assert env.preview_requests(T1)[-1]["range"] == env.resume_range(checkpoint)


def test_kill_9_before_the_first_checkpoint_still_resumes_with_if_range(env):
    # Regression: validators used to reach the record only at the first checkpoint (1 s),
    # so a crash before it restarted from byte 0.
    proc = start_throttled(env, T1, 3 * MB)  # returns at about 50 KB, well inside 1 s
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    have = env.record(T1)["bytes_received"]
    assert have == env.part_size(T1) > 0
    env.server.state.throttle_bps = None
    assert env.run("resume", str(T1)).returncode == 0
    last = env.preview_requests(T1)[-1]
    assert last["range"] == env.resume_range(have) and last["if_range"] == f'"p{T1}-v1-{3 * MB}"'


def test_pause_from_another_process_then_resume(env):
    proc = start_throttled(env, T1, 3 * MB, 1_000_000)
    entry = env.preview_requests(T1)[0]
    served_before = entry["bytes_sent"]
    result = env.run("pause", str(T1))
    assert result.returncode == 0, result.stderr
    env.wait_for(lambda: entry["ended"] is not None, timeout=5, what="server saw the stop")
    # At 1 MB/s, bytes that stop within one second of the command are less than 1 MB more.
    assert entry["bytes_sent"] - served_before < 1_000_000, "bytes kept flowing after pause"
    rec = env.record(T1)
    assert rec["status"] == "paused"
    assert rec["bytes_received"] == env.part_size(T1) > 0
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "paused by request" in err
    env.server.state.throttle_bps = None
    result = env.run("resume", str(T1))
    assert result.returncode == 0, result.stderr
    assert sha256_file(result.stdout.strip()) == env.expected_sha(T1)
    assert env.preview_requests(T1)[-1]["range"] == env.resume_range(rec["bytes_received"])


def test_a_partial_deleted_while_paused_is_never_appended_to(env):
    start_throttled(env, T1, 2 * MB)
    assert env.run("pause", str(T1)).returncode == 0
    rec = env.record(T1)
    Path(rec["part_path"]).unlink()
    env.server.state.throttle_bps = None
    result = env.run("resume", str(T1))
    assert result.returncode == 0, result.stderr
    assert sha256_file(rec["path"]) == env.expected_sha(T1)
    assert env.preview_requests(T1)[-1]["range"] is None


def test_cancel_running_leaves_no_partial_and_no_record(env):
    proc = start_throttled(env, T1)
    part = Path(env.state_record(T1)["part_path"])
    result = env.run("cancel", str(T1))
    assert result.returncode == 0, result.stderr
    proc.communicate(timeout=20)
    assert not part.exists()
    assert env.record(T1) is None
    assert not any(env.download_dir.iterdir())


def test_cancel_completed_keeps_the_file(env):
    path = env.run("download", str(T1)).stdout.strip()
    assert env.run("cancel", str(T1)).returncode == 0
    assert Path(path).exists() and env.record(T1) is None


def test_file_changed_between_pause_and_resume_restarts(env):
    start_throttled(env, T1, 2 * MB)
    assert env.run("pause", str(T1)).returncode == 0
    env.track(T1, version=2)
    env.server.state.throttle_bps = None
    result = env.run("resume", str(T1))
    assert result.returncode == 0, result.stderr
    assert "restarting from 0" in result.stderr
    assert sha256_file(result.stdout.strip()) == env.expected_sha(T1)
    last = env.preview_requests(T1)[-1]
    assert last["range"] is not None and last["status"] == 200


def test_server_ignoring_range_restarts_cleanly(env):
    start_throttled(env, T1, 2 * MB)
    assert env.run("pause", str(T1)).returncode == 0
    env.server.state.throttle_bps = None
    env.fault(path=f"/previews/{T1}/", kind="ignore_range")
    result = env.run("resume", str(T1))
    assert result.returncode == 0, result.stderr
    assert sha256_file(result.stdout.strip()) == env.expected_sha(T1)
    assert env.preview_requests(T1)[-1]["status"] == 200


@pytest.mark.parametrize(
    "fault",
    [{"kind": "short", "extra": 5000}, {"kind": "lie_length"}],  # 5 kB more, or 10 GB more
    ids=["short body", "10 GB length lie"],
)
def test_a_body_shorter_than_announced_is_never_completed_early(env, fault):
    env.track(T1, size=MB)
    env.fault(path=f"/previews/{T1}/", **fault)
    result = env.run("download", str(T1))
    assert result.returncode == 0, result.stderr
    assert sha256_file(result.stdout.strip()) == env.expected_sha(T1)
    # all bytes arrived but fewer than announced: asking for the rest (from the overlap on)
    # says there is no more; the overlap matches and the file completes without a refetch
    first, second = env.preview_requests(T1)
    assert (first["status"], second["status"]) == (200, 206)
    assert second["range"] == env.resume_range(MB) and second["bytes_sent"] == OVERLAP_BYTES


def test_4xx_after_a_drop_fails_and_keeps_the_partial(env):
    env.track(T1, size=MB)
    env.fault(path=f"/previews/{T1}/", kind="drop", after=400_000)
    env.fault(path=f"/previews/{T1}/", kind="status", status=403, times=-1)
    result = env.run("download", str(T1))
    assert result.returncode == 1 and "HTTP 403" in result.stderr
    rec = env.record(T1)
    assert rec["status"] == "failed" and "403" in rec["error"]
    assert rec["bytes_received"] == env.part_size(T1) == 400_000
    assert not Path(rec["path"]).exists()
    env.server.state.faults.clear()
    result = env.run("resume", str(T1))
    assert result.returncode == 0, result.stderr
    assert sha256_file(rec["path"]) == env.expected_sha(T1)
    assert env.preview_requests(T1)[-1]["range"] == env.resume_range(400_000)


def test_stalled_server_times_out_and_retries(env):
    env.track(T1, size=MB)
    env.fault(path=f"/previews/{T1}/", kind="stall", after=300_000, seconds=4)
    result = env.run("download", str(T1), env={"HALFTUNES_REQUEST_TIMEOUT": "1"})
    assert result.returncode == 0, result.stderr
    assert sha256_file(result.stdout.strip()) == env.expected_sha(T1)
    second = env.preview_requests(T1)[1]
    assert second["range"] == env.resume_range(300_000)


def test_503_with_retry_after_is_retried(env):
    env.fault(path=f"/previews/{T1}/", kind="status", status=503, retry_after=1)
    result = env.run("download", str(T1))
    assert result.returncode == 0, result.stderr
    first, second = env.preview_requests(T1)
    assert (first["status"], second["status"]) == (503, 200)
    assert second["time"] - first["time"] >= 1.0  # Retry-After honoured (server's clock)


def test_404_fails_without_retry_and_keeps_going(env):
    env.fault(path=f"/previews/{T1}/", kind="status", status=404)
    result = env.run("download", str(T1), str(T2))
    assert result.returncode == 1
    assert "HTTP 404" in result.stderr
    assert len(env.preview_requests(T1)) == 1
    assert env.record(T2)["status"] == "completed"


def test_usage_errors_win_over_failures_and_good_ids_still_download(env):
    env.fault(path=f"/previews/{T1}/", kind="status", status=404)
    result = env.run("download", str(T1), "abc", str(T2))
    assert result.returncode == 2
    assert "HTTP 404" in result.stderr and "'abc' is neither" in result.stderr
    assert env.record(T2)["status"] == "completed"
    status = env.run("status", "--json")  # the alias of list
    assert status.returncode == 0
    assert {r["id"]: r["status"] for r in json.loads(status.stdout)} == {
        str(T1): "failed",
        str(T2): "completed",
    }


def test_two_downloads_of_the_same_id_at_once(env):
    env.track(T1, size=2 * MB)
    env.server.state.throttle_bps = 2_000_000
    a = env.spawn("download", str(T1))
    b = env.spawn("download", str(T1))
    _out_a, err_a = a.communicate(timeout=30)
    _out_b, err_b = b.communicate(timeout=30)
    codes = sorted([a.returncode, b.returncode])
    assert codes == [0, 1], (err_a, err_b)
    loser_err = err_a if a.returncode == 1 else err_b
    assert "right now" in loser_err and "halftunes wait" in loser_err
    assert len(env.preview_requests(T1)) == 1
    assert sha256_file(env.record(T1)["path"]) == env.expected_sha(T1)


def test_completed_is_not_fetched_again_unless_forced(env):
    path = env.run("download", str(T1)).stdout.strip()
    again = env.run("download", str(T1))
    assert again.returncode == 0 and again.stdout.strip() == path
    assert len(env.preview_requests(T1)) == 1
    forced = env.run("download", str(T1), "--force")
    assert forced.returncode == 0 and forced.stdout.strip() == path
    assert len(env.preview_requests(T1)) == 2


def test_sigint_pauses_and_exits_130(env):
    proc = start_throttled(env, T1)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "halftunes resume" in err
    rec = env.record(T1)
    assert rec["status"] == "paused" and rec["bytes_received"] == env.part_size(T1) > 0
    env.server.state.throttle_bps = None
    assert env.run("resume", str(T1)).returncode == 0
    assert sha256_file(rec["path"]) == env.expected_sha(T1)


def test_an_ignored_sigint_stays_ignored(env):
    # A shell's background job (`halftunes download ID &`) starts with SIGINT ignored, so
    # that Ctrl-C at the terminal does not stop it: halftunes keeps it so.
    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    env.track(T1, size=2 * MB)
    env.server.state.throttle_bps = 2 * MB
    proc = env.spawn("download", str(T1), preexec_fn=ignore_sigint)
    env.wait_for(lambda: env.part_size(T1) > 100_000)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert sha256_file(out.strip()) == env.expected_sha(T1)


def test_ephemeral_ctrl_c_discards_the_partial(env):
    env.track(T1, size=3 * MB)
    env.server.state.throttle_bps = 1_000_000
    proc = env.spawn("--session", "ephemeral", "download", str(T1))
    part = env.download_dir / "Jack Johnson - Better Together.m4a.part"
    env.wait_for(lambda: part.exists() and part.stat().st_size > 0)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert not part.exists() and not env.state_dir.exists()


def test_names_differing_only_in_case_get_the_track_id(env):
    # 1000001 "Better Together" and the hostile "BETTER TOGETHER" by the same artist
    other = next(
        t for t in env.server.state.tracks.values() if t["trackName"] == "BETTER TOGETHER"
    )["trackId"]
    result = env.run("download", str(T1), str(other))
    assert result.returncode == 0, result.stderr
    paths = result.stdout.strip().split("\n")
    assert paths[0].endswith("Jack Johnson - Better Together.m4a")
    assert paths[1].endswith(f"Jack Johnson - BETTER TOGETHER ({other}).m4a")
    assert sha256_file(paths[1]) == env.expected_sha(other)


def test_hostile_names_stay_inside_the_download_dir(env):
    hostile = [
        t["trackId"]
        for t in env.server.state.tracks.values()
        if t["collectionName"] == "Hostile Names"
    ]
    result = env.run("download", *map(str, hostile))
    assert result.returncode == 0, result.stderr
    for tid, line in zip(hostile, result.stdout.strip().split("\n"), strict=True):
        path = Path(line)
        assert path.parent == env.download_dir
        assert len(path.name.encode()) <= 200 and not path.name.startswith(".")
        assert not any(c in path.name for c in "/\\\x07\t\n\u202e")
        assert sha256_file(path) == env.expected_sha(int(tid))
    assert len(list(env.download_dir.iterdir())) == len(hostile)


def test_ids_from_stdin(env):
    ids = env.json("search", "jack johnson", "--limit", "3")
    result = env.run("download", "-", input="\n".join(str(i["trackId"]) for i in ids) + "\n")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().split("\n")) == 3


def test_bad_ids_exit_2_and_good_ones_still_download(env):
    no_preview = next(t for t in env.server.state.tracks.values() if "previewUrl" not in t)
    result = env.run(
        "download", "999", str(T1), "abc", str(no_preview["trackId"]), "ftp://example.com/x.mp3"
    )
    assert result.returncode == 2
    assert "no track with id 999" in result.stderr
    assert "'abc' is neither" in result.stderr
    assert "has no preview" in result.stderr
    assert "unsupported URL scheme (ftp:)" in result.stderr
    assert "Traceback" not in result.stderr
    assert env.record(T1)["status"] == "completed"


def test_a_failed_lookup_still_downloads_the_cached_ids(env):
    # Regression: a lookup error used to hand unresolved entries on and end in a traceback.
    assert env.run("search", "better together").returncode == 0  # caches T1, not T2
    env.fault(path="/lookup", kind="malformed")
    result = env.run("download", str(T1), str(T2))
    assert result.returncode == 1, result.stderr
    assert "not JSON" in result.stderr and "Traceback" not in result.stderr
    assert env.record(T1)["status"] == "completed" and env.record(T2) is None


def test_url_download_and_plain_http_rule(env):
    url = f"{env.server.url}/files/big%20song.mp3?size=300000&seed=3"
    result = env.run("download", url)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).name == "big song.mp3"
    refused = env.run("download", "http://example.com/song.mp3")
    assert refused.returncode == 2 and "App Transport Security" in refused.stderr


def test_missing_download_dir_is_created(env, tmp_path):
    deep = tmp_path / "a" / "b"
    result = env.run("download", str(T1), "-P", str(deep))
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == deep / "Jack Johnson - Better Together.m4a"
    assert sha256_file(deep / "Jack Johnson - Better Together.m4a") == env.expected_sha(T1)


@pytest.mark.parametrize("kind", ["garbage", "empty", "directory", "future"])
def test_bad_state_file_is_reported_and_moved_aside(env, kind):
    assert env.run("download", str(T1)).returncode == 0
    db = env.state_dir / "downloads.db"
    corrupt_state(env.state_dir, kind)
    result = env.run("list")
    assert result.returncode == 1
    assert str(db) in result.stderr and "Traceback" not in result.stderr
    aside = list(env.state_dir.glob("downloads.db.corrupt-*"))
    if kind == "future":
        assert "newer" in result.stderr and not aside
        assert env.run("list").returncode == 1  # refused again, untouched
        return
    assert len(aside) == 1
    assert env.run("list", "--json").returncode == 0  # starts clean
    # the finished file survived
    assert (env.download_dir / "Jack Johnson - Better Together.m4a").exists()


def test_owner_locks_do_not_pile_up(env):
    assert env.run_process("download", str(T1)).returncode == 0
    assert env.run_process("download", str(T2)).returncode == 0
    assert list((env.state_dir / "owners").iterdir()) == []


def test_a_transfer_slot_goes_on_while_the_state_file_is_busy(env):
    # Endings are written by the settling thread: with the state file's write lock held by
    # someone else, one slot still fetches every file, and all is recorded once it is free.
    import sqlite3

    tracks = env.server.state.tracks
    ids = [t for t in sorted(tracks) if tracks[t].get("previewUrl")][:3]
    for tid in ids:
        env.track(tid, size=200_000)
    env.server.state.throttle_bps = 400_000  # each file takes ~0.5 s
    proc = env.spawn("download", *map(str, ids), env={"HALFTUNES_MAX_CONNECTIONS_PER_HOST": "1"})
    env.wait_for(lambda: env.state_record(str(ids[0])), what="the claim")
    holder = sqlite3.connect(env.state_dir / "downloads.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        env.wait_for(
            lambda: (
                all(r["bytes_sent"] == 200_000 for t in ids for r in env.preview_requests(t))
                and all(env.preview_requests(t) for t in ids)
            ),
            timeout=15,
            what="every file sent while the state file is locked",
        )
        assert proc.poll() is None  # the command waits to record them
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    for tid in ids:
        rec = env.state_record(str(tid))
        assert rec["status"] == "completed" and sha256_file(rec["path"]) == env.expected_sha(tid)
