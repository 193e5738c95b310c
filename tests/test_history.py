"""The present, not the history: wait answers for what it covers, clean forgets, permanent
failures stay put, and fast failure when the network is down."""

from __future__ import annotations

import json

from conftest import reap_children

T1, T2, T3 = 1000001, 1000002, 1000003


def test_wait_after_an_old_failure_answers_for_the_new_downloads(env):
    # an old failure, reported by the command that ran it
    env.fault(path=f"/previews/{T3}/", kind="status", status=404)
    assert env.run("download", str(T3)).returncode == 1
    # an unreported background failure is reported by the first wait, then no more
    env.fault(path=f"/previews/{T2}/", kind="status", status=404)
    assert env.run("download", "-b", str(T2)).returncode == 0
    first = env.run("wait", "--timeout", "30", "--json")
    assert first.returncode == 1 and [r["id"] for r in json.loads(first.stdout)] == [str(T2)]
    assert env.run("download", "-b", str(T1)).returncode == 0
    second = env.run("wait", "--timeout", "30", "--json")
    reap_children()
    assert second.returncode == 0, second.stderr
    assert [r["id"] for r in json.loads(second.stdout)] == [str(T1)]
    assert env.run("wait").returncode == 0  # nothing left to answer for
    assert env.run("wait", str(T3)).returncode == 1  # named, it still answers


def test_clean_forgets_records_never_files(env):
    env.fault(path=f"/previews/{T2}/", kind="drop", after=20_000)
    env.fault(path=f"/previews/{T2}/", kind="status", status=404, times=-1)
    assert env.run("download", str(T1), str(T2)).returncode == 1
    failed = env.record(T2)
    assert failed["status"] == "failed"
    done_path = env.record(T1)["path"]
    result = env.run("clean", "--failed", "--json")
    assert result.returncode == 0
    assert [r["id"] for r in json.loads(result.stdout)] == [str(T2)]
    assert env.record(T2) is None and not env.tmp.joinpath(failed["part_path"]).exists()
    assert env.run("clean").returncode == 0
    assert env.records() == {}
    assert env.tmp.joinpath(done_path).exists()  # the finished file stays


def test_clean_refuses_what_is_not_finished_and_unknown_ids(env):
    env.track(T1, size=3_000_000)
    env.server.state.throttle_bps = 1_000_000
    proc = env.spawn("download", str(T1))
    env.wait_for(lambda: env.part_size(T1) > 50_000, what="bytes flowing")
    assert env.run("pause", str(T1)).returncode == 0
    proc.communicate(timeout=30)
    result = env.run("clean", str(T1))
    assert result.returncode == 1 and f"{T1} is paused, not finished" in result.stderr
    assert "halftunes cancel" in result.stderr
    assert env.record(T1)["status"] == "paused" and env.part_size(T1) > 0  # untouched
    assert env.run("clean", "424242").returncode == 2


def test_cancel_all_touches_unfinished_downloads_only(env):
    assert env.run("download", str(T1)).returncode == 0
    env.fault(path=f"/previews/{T2}/", kind="status", status=500, times=-1)
    assert env.run("download", str(T2), env={"HALFTUNES_RETRIES": "0"}).returncode == 1
    result = env.run("cancel", "--all", "--json")
    assert result.returncode == 0
    assert [r["id"] for r in json.loads(result.stdout)] == [str(T2)]
    assert env.record(T1)["status"] == "completed"


def test_a_permanent_failure_is_marked_and_resume_all_leaves_it(env):
    env.fault(path=f"/previews/{T1}/", kind="status", status=404, times=-1)
    result = env.run("download", str(T1))
    assert result.returncode == 1
    assert "the partial" not in result.stderr  # there is none: the hint says what is true
    assert "does not have it" in result.stderr
    result = env.run("resume", "--all")
    assert result.returncode == 0 and "failed for good" in result.stderr
    assert len(env.preview_requests(T1)) == 1  # not asked again
    env.server.state.faults.clear()
    assert env.run("resume", str(T1)).returncode == 0  # named, it is tried


def test_a_dead_port_fails_fast(env):
    dead = "http://127.0.0.1:9/files/x.bin"
    result = env.run("-v", "download", dead)
    assert result.returncode == 1
    assert "connection refused" in result.stderr and "Errno" not in result.stderr
    attempts = [line for line in result.stderr.splitlines() if line.startswith("> GET")]
    assert len(attempts) == 2
    record = next(iter(env.records().values()))
    assert record["status"] == "failed"


def test_malformed_urls_are_one_line_and_exit_2(env):
    for url in ("http://[::1", "https://", "http://exa mple.com/x"):
        result = env.run("download", url)
        assert result.returncode == 2, (url, result.stderr)
        assert len(result.stderr.strip().splitlines()) <= 2, result.stderr


def _age_the_search_cache(env, seconds: int = 86400) -> None:
    import sqlite3

    db = sqlite3.connect(env.state_dir / "downloads.db")
    db.execute("UPDATE http_cache SET fetched = fetched - ?", (seconds,))
    db.commit()
    db.close()


def test_search_answers_from_the_cache_when_the_api_is_unreachable(env):
    assert env.run("search", "jack johnson").returncode == 0
    _age_the_search_cache(env)  # a day old: it would be asked again
    env.server.stop()  # the API goes away
    result = env.run("-v", "search", "jack johnson")
    assert result.returncode == 0, result.stderr
    assert "could not be reached" in result.stderr and "cached at" in result.stderr
    assert result.stdout.startswith("1000001\t")
    assert len([line for line in result.stderr.splitlines() if line.startswith("> GET")]) == 2


def test_a_stale_answer_is_shown_when_the_api_fails(env):
    assert env.run("search", "jack johnson").returncode == 0
    _age_the_search_cache(env)
    env.fault(path="/search", kind="status", status=503, times=-1)
    result = env.run("search", "jack johnson", env={"HALFTUNES_RETRIES": "1"})
    assert result.returncode == 0, result.stderr
    assert "could not be reached" in result.stderr and "cached at" in result.stderr
    assert result.stdout.startswith("1000001\t")


def test_an_unreachable_api_fails_fast_without_a_cache(env):
    result = env.run("-v", "search", "jack", env={"HALFTUNES_API_URL": "http://127.0.0.1:9"})
    assert result.returncode == 1 and "connection refused" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("> GET")]) == 2


def test_a_non_json_answer_shows_its_type_and_printable_start(env):
    env.fault(path="/search", kind="html")
    result = env.run("search", "jack")
    assert result.returncode == 1
    assert "(text/html)" in result.stderr and "starting: <html><body>" in result.stderr


def test_a_rate_limit_with_a_short_retry_after_is_retried_once(env):
    env.fault(path="/search", kind="status", status=429, retry_after=1)
    result = env.run("search", "jack johnson", "--json")
    assert result.returncode == 0, result.stderr
    assert [e["status"] for e in env.server.state.requests_for("/search")] == [429, 200]
