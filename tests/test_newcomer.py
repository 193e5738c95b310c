"""A newcomer's hour (issue 20): each stumble of a first hour with halftunes, as a test that
replays it and checks what the person sees (the screen through pyte, the streams, the exit
status, the files)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HALFTUNES, Env, Terminal, sha256_file

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
def test_a_pause_from_a_second_terminal_shows_on_the_first(env, columns):
    ids = many(env, 3, size=4 * MB, bps=MB)
    first = Terminal(env, ["download", *ids], columns=columns, rows=40)
    env.wait_for(lambda: env.part_size(ids[1]) > 100_000, timeout=30)
    second = Terminal(env, ["pause", ids[1]], columns=columns, rows=10)
    assert second.wait() == 0
    assert any(line.startswith(f"{ids[1]}: paused") for line in second.screen()), second.screen()
    env.server.state.throttle_bps = None  # let the other two finish now
    assert first.wait() == 0  # stopped on purpose: not a failure
    screen = first.screen()
    assert_clean(screen, len(ids))
    assert sum(1 for line in screen if "done," in line) == 2, screen
    assert sum(1 for line in screen if "paused at" in line) == 1, screen
    assert env.state_record(ids[1])["status"] == "paused"
    assert all(len(line) <= columns for line in screen)


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


@pytest.mark.parametrize("columns", WIDTHS)
def test_ctrl_c_on_wait_says_the_worker_goes_on_and_draws_no_second_set(env, columns):
    ids = many(env, 3, size=4 * MB, bps=MB)
    assert env.run("download", "-b", *ids).returncode == 0
    env.wait_for(lambda: all(env.part_size(r) > 100_000 for r in ids), timeout=30)
    term = Terminal(env, ["wait"], columns=columns, rows=30)
    # every download's bar drawn first (under load the third may come a poll later)
    env.wait_for(lambda: sum("%" in line for line in term.screen()) >= len(ids), timeout=15)
    term.send(b"\x03")  # (the terminal echoes ^C after the cursor: no line may wrap)
    assert term.wait() == 130
    screen = term.screen()
    said = " ".join(screen)
    assert "background worker goes on" in " ".join(said.split()), screen
    drawn = [line for line in screen if "█" in line or " at " in line or "%" in line]
    assert len(drawn) == len(ids), screen  # one line per download, not two sets
    assert sum("still running at" in line for line in screen) == len(ids), screen
    assert not any("ETA" in line or "%" in line for line in screen), screen  # none left stale
    assert all(re.search(r"still running at [0-9.]+ (B|KiB|MiB)$", line) for line in drawn), drawn
    assert env.state_record(ids[0])["status"] in ("running", "completed")  # it went on


def test_a_pause_from_elsewhere_shows_on_wait_at_once(env):
    ids = many(env, 2, size=4 * MB, bps=MB // 2)
    assert env.run("download", "-b", *ids).returncode == 0
    term = Terminal(env, ["wait"], columns=80, rows=30)
    term.wait_for_text("%", timeout=15)
    assert env.run_process("pause", ids[0]).returncode == 0
    term.wait_for_text("paused at", timeout=10)  # while the other one still runs
    assert env.state_record(ids[1])["status"] == "running"
    env.server.state.throttle_bps = None
    assert term.wait() == 1  # (wait's exit status counts a paused download: README)
    screen = term.screen()
    assert sum("paused at" in line for line in screen) == 1, screen
    assert sum("done," in line for line in screen) == 1, screen


def test_the_overall_line_counts_completed_ones_and_a_true_speed(env):
    bps = 400_000
    ids = many(env, 3, size=1 * MB, bps=bps)
    env.track(int(ids[2]), size=6 * MB)  # (15 s: the pause surely comes first, under load too)
    term = Terminal(env, ["download", *ids], columns=80, rows=30)
    env.wait_for(lambda: env.part_size(ids[2]) > 100_000, timeout=30)
    assert env.run_process("pause", ids[2]).returncode == 0
    assert term.wait() == 0
    [overall] = [line for line in term.screen() if OVERALL.match(line)]
    assert overall.startswith("2 of 3 · "), overall  # the paused one is not done
    number, unit = overall.rsplit(" · ", 1)[1].removesuffix("/s").split()
    rate = float(number) * {"B": 1, "KiB": 1024, "MiB": 1024**2}[unit]
    assert 0 < rate <= 3 * bps * 1.25, overall  # no more than the server can have sent


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


# -- 5. empty ids and --json with bad ids -----------------------------------------------------
def test_an_empty_id_is_bad_input_alone_and_next_to_a_good_one(env):
    alone = env.run("download", "")
    assert alone.returncode == 2
    assert alone.stderr.startswith("halftunes: error: an empty id"), alone.stderr
    assert alone.stdout == ""
    both = env.run("download", str(T), "  ")
    assert both.returncode == 2, both.stderr  # 2 wins over 0; the good id is still fetched
    assert "an empty id" in both.stderr
    assert sha256_file(env.state_record(str(T))["path"]) == env.expected_sha(T)


def test_json_has_an_object_for_every_id_given_errors_included(env):
    result = env.run("download", "--json", str(T), "", "424242424", "banana")
    assert result.returncode == 2
    objects = json.loads(result.stdout)
    assert [o["id"] for o in objects] == [str(T), "", "424242424", "banana"]
    assert objects[0]["status"] == "completed"
    assert [o["status"] for o in objects[1:]] == ["error"] * 3
    assert "no track with id 424242424" in objects[2]["error"]
    assert "neither a track id nor a URL" in objects[3]["error"]


# -- 6. the useful part of a message is never cut ---------------------------------------------
def closed_port_url(name: str = "x.bin") -> str:
    return f"http://127.0.0.1:{free_port()}/{name}"


@pytest.mark.parametrize("columns", WIDTHS)
def test_list_wraps_a_records_message_instead_of_cutting_it(env, columns):
    url = closed_port_url("a-file-with-a-rather-long-name.bin")
    failed = env.run("download", url)
    assert failed.returncode == 1
    [record] = env.json("list")
    term = Terminal(env, ["list"], columns=columns, rows=30)
    assert term.wait() == 0
    screen = term.screen()
    start = next(n for n, line in enumerate(screen) if line.startswith(f"  {record['id']}: "))
    message = " ".join(line.strip() for line in screen[start:] if line)
    assert message.replace(" ", "") == f"{record['id']}: {record['error']}".replace(" ", "")
    assert all(len(line) <= columns for line in screen)
    assert "…" not in "".join(screen[start:])


def test_a_refused_connection_says_how_to_try_again(env):
    url = closed_port_url()
    result = env.run("download", url)
    assert result.returncode == 1
    [record] = env.json("list")
    assert "connection refused" in result.stderr
    assert f"hint: `halftunes resume {record['id']}` tries again" in result.stderr


def test_a_non_json_answer_in_another_charset_shows_no_replacement_character(env):
    env.fault(path="/search", kind="latin1")
    result = env.run("search", "jack")
    assert result.returncode == 1
    assert "not JSON" in result.stderr and "Dienst nicht verf" in result.stderr
    assert "\ufffd" not in result.stderr and "Traceback" not in result.stderr


# -- 7. the README's Quick start, verbatim, on a terminal -------------------------------------
def quick_start_lines() -> list[str]:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```\n", 2)[1]
    return [line for line in block.splitlines() if line.strip()]


def lift_throttle(tmp: Path, port: int) -> Path:
    script = tmp / "lift-throttle.py"
    script.write_text(
        "import urllib.request as u\n"
        f"u.urlopen(u.Request('http://127.0.0.1:{port}/_admin/throttle', "
        "data=b'{\"bps\": null}', method='POST')).read()\n"
    )
    return script


def quick_start_script(tmp: Path, port: int) -> Path:
    """The Quick start's lines as a person types them, each one's exit status noted; the
    installing lines are what the test environment already did. Between the catalog's line
    and the next, the script waits for the port to answer (a person's typing takes longer);
    after the pause, it lifts the catalog's throttle (the resume need not take 15 s here)."""
    out = ["set -m", f"cd {tmp}"]
    for line in quick_start_lines():
        if line.startswith(("make install", ". .venv/bin/activate")):
            continue
        out.append(line.replace("8765", str(port)))
        if line.startswith("python -m halftunes_cli.catalog"):
            out.append(
                f"python -c 'import socket,time\nwhile True:\n try: socket.create_connection((\"127.0.0.1\",{port})).close(); break\n except OSError: time.sleep(0.05)'"
            )
            continue
        out.append(f'echo "{line.split("#")[0].strip()} => $?" >> statuses')
        if line.startswith("halftunes pause"):  # (the pause shown: the rest needs no throttle)
            out.append(f"python {lift_throttle(tmp, port)}")
    out += ["kill %1", "wait"]
    script = tmp / "quick-start.sh"
    script.write_text("\n".join(out) + "\n")
    return script


def test_the_quick_start_works_as_written_at_every_width(env, tmp_path):
    """Three people, at 40, 80 and 200 columns, each with their own catalog, state and
    folder, type the Quick start at once."""
    assert quick_start_lines()[2].startswith("python -m halftunes_cli.catalog --port 8765")
    runs = {}
    for columns in WIDTHS:
        home = tmp_path / f"w{columns}"
        home.mkdir()
        port = free_port()
        extra = {
            "PATH": f"{Path(sys.executable).parent}:{env.env['PATH']}",
            "HALFTUNES_STATE_DIR": str(home / "state"),
            "HALFTUNES_DOWNLOAD_DIR": str(home / "downloads"),
        }
        script = quick_start_script(home, port)
        term = Terminal(
            env, [], columns=columns, rows=120, extra=extra, command=["bash", str(script)]
        )
        runs[columns] = (home, port, term)
    same = CatalogServer(preview_size=1_500_000)  # the same catalog: its bytes, never served
    same.httpd.server_close()
    expected = same.state
    try:
        for columns, (home, port, term) in runs.items():
            assert term.wait(timeout=120) == 0, columns
            statuses = (home / "statuses").read_text().splitlines()
            assert all(s.endswith("=> 0") for s in statuses), statuses
            assert len(statuses) == 7, statuses
            screen = term.screen()
            text = "\n".join(screen)
            assert f"http://127.0.0.1:{port}" not in text  # nothing printed over the prompt
            assert "Better Together" in text and "Traceback" not in text
            first = home / "downloads" / "Jack Johnson - Better Together.m4a"
            assert str(first) in text.replace("\n", "") or first.name in text
            assert sha256_file(first) == expected.sha256_of(T)
            paused = [line for line in screen if line.startswith(str(U)) and "paused" in line]
            assert paused, text  # `list` showed it paused
            second = home / "downloads" / "Jack Johnson - Banana Pancakes.m4a"
            assert sha256_file(second) == expected.sha256_of(U)
            assert_clean(screen, 1)
            assert all(len(line) <= columns for line in screen)
    finally:
        for _, _, term in runs.values():
            if term.proc.poll() is None:
                term.proc.kill()


# -- 9. the smaller stumbles ------------------------------------------------------------------
def test_config_show_runs_with_a_bad_value_and_says_which(env, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("retries = 'many'\nlimit = 7\n")
    result = env.run("config", "show", "--json", env={"HALFTUNES_CONFIG": str(cfg)})
    assert result.returncode == 2
    shown = json.loads(result.stdout)
    assert shown["limit"] == {"value": 7, "source": "file"}  # the good ones as they are
    assert shown["retries"]["value"] == 5 and shown["retries"]["source"] == "default"
    assert "retries has type str" in shown["retries"]["problem"]
    assert "retries has type str" in result.stderr and "Traceback" not in result.stderr
    cfg.write_text("retries = = 3\n")
    table = env.run("config", "show", env={"HALFTUNES_CONFIG": str(cfg)})
    assert table.returncode == 2 and "not valid TOML" in table.stderr
    assert "download_dir" in table.stdout
    assert env.run("list", env={"HALFTUNES_CONFIG": str(cfg)}).returncode == 2  # still refused


def test_pause_all_lists_only_what_it_stopped(env):
    assert env.run("download", str(U)).returncode == 0
    env.track(T, size=4 * MB)
    env.server.state.throttle_bps = MB
    queued = env.run("download", "-b", str(T))
    assert queued.returncode == 0, queued.stderr
    result = env.run("pause", "--all", "--json")
    assert result.returncode == 0, result.stderr
    assert [r["id"] for r in json.loads(result.stdout)] == [str(T)]
    assert env.state_record(str(T))["status"] == "paused"
    again = env.run("pause", "--all", "--json")
    assert json.loads(again.stdout) == []  # nothing left to stop


def test_json_progress_says_where_the_file_went(env):
    result = env.run_process("download", str(T), "--progress", "json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    [done] = [e for e in events if e["event"] == "completed"]
    assert done["path"] == result.stdout.strip()
    assert sha256_file(done["path"]) == env.expected_sha(T)


def test_line_progress_names_each_transfer_by_id(env):
    result = env.run_process("download", str(T), str(U), "--progress", "line")
    assert result.returncode == 0, result.stderr
    ends = [line for line in result.stderr.splitlines() if "completed" in line and ":" in line]
    assert {line.split(" ", 1)[0] for line in ends} >= {str(T), str(U)}


def test_the_catalog_prints_nothing_over_the_prompt_when_its_port_is_chosen(env):
    port = free_port()
    term = Terminal(
        env,
        [],
        command=[sys.executable, "-m", "halftunes_cli.catalog", "--port", str(port)],
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                assert time.monotonic() < deadline, term.output
                time.sleep(0.05)
        assert term.output == ""
    finally:
        term.proc.terminate()
        term.wait()
    piped = subprocess.Popen(
        [sys.executable, "-m", "halftunes_cli.catalog", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert piped.stdout.readline().startswith("http://127.0.0.1:")  # what scripts read
    finally:
        piped.terminate()
        piped.wait()
        piped.stdout.close()


def test_progress_completes_its_modes_not_file_names(env):
    result = subprocess.run(
        [HALFTUNES],
        env={
            **env.env,
            "_HALFTUNES_COMPLETE": "complete_bash",
            "COMP_WORDS": "halftunes download --progress l",
            "COMP_CWORD": "3",
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout.split() == ["line"]


def test_download_help_keeps_each_example_whole_at_80_columns(env):
    result = subprocess.run(
        [HALFTUNES, "download", "--help"],
        env={**env.env, "COLUMNS": "80"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    examples = [line.strip() for line in result.stdout.splitlines() if "halftunes " in line]
    assert "halftunes download 1000001 1000002 -o '{artist}/{title}.{ext}'" in examples
    assert all(not line.startswith("download -") for line in examples)
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    assert "relative to -P when" in " ".join(result.stdout.split())


def test_a_catalog_whose_port_is_taken_says_so_in_one_line(env):
    taken = env.server.port
    result = subprocess.run(
        [sys.executable, "-m", "halftunes_cli.catalog", "--port", str(taken)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"catalog: cannot listen on 127.0.0.1:{taken}: ")
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
