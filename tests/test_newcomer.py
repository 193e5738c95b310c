"""A newcomer's hour (issue 20): each stumble of a first hour with halftunes, as a test that
replays it and checks what the person sees (the screen through pyte, the streams, the exit
status, the files)."""

from __future__ import annotations

import re
import socket
import time

import pytest
from conftest import Env, Terminal, sha256_file

from halftunes_cli.testing.catalog import CatalogServer

T, U = 1000001, 1000002
MB = 1_000_000
WIDTHS = [40, 80, 200]


def lookups(server: CatalogServer) -> int:
    return len(server.state.requests_for("/lookup"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- 1. a stale preview address outlives its catalog ------------------------------------------
def test_cached_tracks_belong_to_the_catalog_that_answered(env):
    assert env.run("search", "jack", "johnson").returncode == 0  # the tracks are cached
    moved = CatalogServer().start()  # the offline catalog, restarted on another port
    try:
        env.server.stop(drop_connections=True)
        result = env.run("download", str(T), env={"HALFTUNES_API_URL": moved.url})
        assert result.returncode == 0, result.stderr
        assert sha256_file(result.stdout.strip()) == moved.state.sha256_of(T)
        assert lookups(moved) == 1  # the cache of another catalog was not used
    finally:
        moved.stop()


def test_a_cached_preview_address_that_refuses_is_looked_up_again(env):
    dead = f"http://127.0.0.1:{free_port()}/previews/{T}/preview.m4a"
    env.fault(
        path="/search", kind="results", results=[{**env.server.state.tracks[T], "previewUrl": dead}]
    )
    assert env.run("search", "moved").returncode == 0  # cached, with an address now dead
    result = env.run("-v", "download", str(T))
    assert result.returncode == 0, result.stderr
    assert sha256_file(result.stdout.strip()) == env.expected_sha(T)
    assert lookups(env.server) == 1  # one fresh lookup, after the address refused
    assert "looking it up again" in result.stderr


@pytest.mark.parametrize("how", ["reload-ignoring-cache", "--force"])
def test_reload_ignoring_cache_and_force_skip_the_cached_tracks(env, how):
    assert env.run("search", "jack", "johnson").returncode == 0
    args = ["download", str(T)] + (["--force"] if how == "--force" else [])
    extra = {"HALFTUNES_CACHE_POLICY": how} if how != "--force" else {}
    assert env.run(*args, env=extra).returncode == 0
    assert lookups(env.server) == 1


def test_cached_tracks_download_while_the_lookup_api_is_down(env):
    assert env.run("search", "jack", "johnson").returncode == 0  # T is known, 1000200 is not
    env.fault(path="/lookup", kind="status", status=503, times=-1)
    result = env.run("download", str(T), "1000200", str(T), env={"HALFTUNES_RETRIES": "0"})
    assert result.returncode == 1
    assert env.state_record(str(T))["status"] == "completed"
    assert "2 ids: 1 completed, 1 failed" in result.stderr


def test_v_says_where_track_details_came_from(env):
    assert env.run("search", "jack", "johnson").returncode == 0
    result = env.run("-v", "download", str(T))
    assert result.returncode == 0
    assert re.search(r"1 track\(s\) from the cache", result.stderr), result.stderr


# -- 2 and 8. progress drawing owns its lines ----------------------------------------------
BAR_END = re.compile(r"(done, [0-9.]+ [KMG]i?B|paused at [0-9.]+ [KMG]?i?B|failed at .*)$")
OVERALL = re.compile(r"^\d+ of \d+ · [0-9.]+ (B|KiB|MiB|GiB) · [0-9.]+ (B|KiB|MiB|GiB)/s$")


def many(env: Env, count: int = 8, size: int = 2 * MB, bps: int = 4 * MB) -> list[str]:
    ids = [str(t) for t, v in sorted(env.server.state.tracks.items()) if "previewUrl" in v]
    ids = ids[:count]
    for rid in ids:
        env.track(int(rid), size=size)
    env.server.state.throttle_bps = bps
    return ids


def assert_clean(screen: list[str], ids: int) -> None:
    """Every line is one thing: the overall line, a bar in its final state, a path, the
    summary, a message; never two drawn over each other."""
    overall = [line for line in screen if " of " in line and "·" in line and "/s" in line]
    assert len(overall) <= 1, screen
    for line in overall:
        assert OVERALL.match(line), f"not only the overall line: {line!r}"
    bars = [line for line in screen if "█" in line or "done," in line]
    for line in bars:
        assert BAR_END.search(line), f"a bar line with something else on it: {line!r}"
        assert "·" not in line or line.count("█") == 0 or " of " not in line, line


@pytest.mark.parametrize("columns", WIDTHS)
def test_many_bars_end_clean_at_every_width(env, columns):
    ids = many(env)
    term = Terminal(env, ["download", *ids], columns=columns, rows=40)
    assert term.wait() == 0
    screen = term.screen()
    assert_clean(screen, len(ids))
    assert sum(1 for line in screen if "done," in line) == len(ids), screen
    assert any(line.startswith(f"{len(ids)} ids: {len(ids)} completed") for line in screen)


@pytest.mark.parametrize("columns", [80, 200])
def test_v_log_lines_go_above_the_bars(env, columns):
    ids = many(env, 3)
    term = Terminal(env, ["-v", "download", *ids], columns=columns, rows=60)
    assert term.wait() == 0
    screen = term.screen()
    assert_clean(screen, len(ids))
    for line in screen:
        if line.startswith(("> ", "< ")):  # a log line is a log line only
            assert "█" not in line and " of " not in line and "ETA" not in line, line


@pytest.mark.parametrize("columns", WIDTHS)
def test_ctrl_c_twice_leaves_a_clean_screen(env, columns):
    import sqlite3

    ids = many(env, 6, size=4 * MB, bps=MB)
    term = Terminal(env, ["download", *ids], columns=columns, rows=40)
    env.wait_for(lambda: all(env.part_size(r) > 100_000 for r in ids), timeout=30)
    # The first Ctrl-C's pause waits for the state file (held here, as a sqlite3 shell
    # would): the second one comes while it waits, and ends the process at once.
    db = sqlite3.connect(env.state_dir / "downloads.db", timeout=1, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    try:
        term.send(b"\x03")
        time.sleep(0.5)
        assert term.proc.poll() is None
        term.send(b"\x03")
        assert term.wait() == 130
    finally:
        db.execute("ROLLBACK")
        db.close()
    screen = term.screen()
    said = [line for line in screen if "interrupted again" in line]
    assert said, screen
    for line in screen:  # no message drawn into a bar, no bar into a message
        if "█" in line or " at " in line:
            assert "interrupted" not in line and "resume" not in line, line
    last = [line for line in screen if line.strip()][-1]
    assert "█" not in last and "ETA" not in last, screen  # the prompt comes under everything


def test_ctrl_c_on_wait_says_the_worker_goes_on_and_draws_no_second_set(env):
    ids = many(env, 3, size=4 * MB, bps=MB)
    assert env.run("download", "-b", *ids).returncode == 0
    env.wait_for(lambda: all(env.part_size(r) > 100_000 for r in ids), timeout=30)
    term = Terminal(env, ["wait"], columns=80, rows=30)
    term.wait_for_text("ETA", timeout=15)
    term.send(b"\x03")
    assert term.wait() == 130
    screen = term.screen()
    assert any("background worker" in line and "goes on" in line for line in screen), screen
    drawn = [line for line in screen if "█" in line or " at " in line or "%" in line]
    assert len(drawn) <= len(ids), screen  # one line per download, not two sets
    assert env.state_record(ids[0])["status"] in ("running", "completed")  # it went on


# -- 3. labels that tell transfers apart ----------------------------------------------------
@pytest.mark.parametrize("columns", WIDTHS)
def test_bars_show_the_title_first(env, columns):
    foxes = [t for t, v in env.server.state.tracks.items() if v["artistName"] == "The Quiet Foxes"]
    term = Terminal(env, ["download", *map(str, foxes)], columns=columns, rows=40)
    assert term.wait() == 0
    bars = "\n".join(line for line in term.screen() if "done," in line)
    for title in ("Ember", "Northbound", "Sleepwal", "Paper Mo"):
        assert title in bars, bars


def test_urls_that_share_a_long_prefix_show_what_differs(env):
    base = f"{env.server.url}/files/the-quiet-foxes-live-at-the-paper-lantern-2024-night"
    urls = [f"{base}-{n}.bin?size=300000&seed={n}" for n in (1, 2)]
    term = Terminal(env, ["download", *urls], columns=80, rows=30)
    assert term.wait() == 0
    bars = "\n".join(line for line in term.screen() if "done," in line)
    assert "night-1" in bars and "night-2" in bars, bars


def test_list_shows_titles_first(env):
    foxes = [t for t, v in env.server.state.tracks.items() if v["artistName"] == "The Quiet Foxes"]
    assert env.run("download", *map(str, foxes)).returncode == 0
    term = Terminal(env, ["list"], columns=80, rows=30)
    assert term.wait() == 0
    rows = [line.split("  ") for line in term.screen()[1:] if "completed" in line]
    titles = "\n".join(" ".join(r[:-1]) for r in rows)  # (the path, last, has them too)
    for title in ("Ember", "Northbound", "Sleepwalker", "Paper Moon"):
        assert title in titles, titles
