"""What a person sees on a real terminal (a pty) at 40, 80 and 200 columns."""

from __future__ import annotations

import json
import re

import pytest
from conftest import run_in_pty, visible_lines
from rich.cells import cell_len

WIDTHS = [40, 80, 200]


@pytest.mark.parametrize("columns", WIDTHS)
def test_search_table_keeps_ids_whole_at_every_width(env, columns):
    out = run_in_pty(env, ["search", "jack", "johnson", "--limit", "5"], columns)
    lines = [line for line in visible_lines(out, columns) if line.strip()]
    assert env.last_pty_code == 0, out
    assert all(cell_len(line) <= columns for line in lines), lines
    header, rows = lines[0], lines[1:]
    assert header.startswith("id") and "got" in header
    ids = [row.split()[0] for row in rows]
    assert ids == ["1000001", "1000002", "1000003", "1000004", "1000005"]
    if columns >= 80:
        assert "Better Together" in rows[0] and "album" in header


def test_search_marks_editions_and_what_you_have(env):
    assert env.run("download", "1500000000011").returncode == 0
    out = run_in_pty(env, ["search", "shapes", "--limit", "50"], 120)
    rows = {line.split()[0]: line for line in visible_lines(out, 120)[1:] if line.strip()}
    assert re.search(r"\bE\b", rows["1500000000011"]) and rows["1500000000011"].endswith("yes")
    assert "clean" in rows["1500000000012"]
    assert rows["1469577723"].endswith("album") and rows["909253"].endswith("artist")


@pytest.mark.parametrize("columns", WIDTHS)
def test_list_table_keeps_id_status_progress_and_size(env, columns):
    url = f"{env.server.url}/files/a%20rather%20long%20file%20name%20for%20a%20url.bin?size=5000"
    assert env.run("download", "1000001", url, "王菲" and "1000040").returncode in (0, 2)
    out = run_in_pty(env, ["list"], columns)
    lines = [line for line in visible_lines(out, columns) if line.strip()]
    assert all(cell_len(line) <= columns for line in lines), lines
    rows = lines[1:]
    for row in rows:
        _rid, status, progress, *_ = row.split()
        assert status == "completed" and progress == "100.0%"
    assert any(row.split()[0].startswith("u") and len(row.split()[0]) == 11 for row in rows)
    if columns == 200:  # wide enough: the whole path, its file name last
        assert any(row.endswith("a rather long file name for a url.bin") for row in rows)
    if columns == 80:  # a path cut in the middle keeps its file name
        assert any("…" in row and row.endswith(".bin") for row in rows)


def test_no_color_removes_every_colour_code(env):
    assert env.run("download", "1000001").returncode == 0
    for args, extra in (
        (["--no-color", "list"], {}),
        (["list"], {"NO_COLOR": "1"}),
        (["search", "jack", "--no-color"], {}),
    ):
        out = run_in_pty(env, args, 100, extra=extra)
        assert not re.search(r"\x1b\[[0-9;]*m", out), (args, out)
    colored = run_in_pty(env, ["list"], 100)
    assert "\x1b[32m" in colored  # completed is green when colours are on


@pytest.mark.parametrize("columns", [40, 80])
def test_download_bars_end_in_their_final_state(env, columns):
    env.track(1000001, size=600_000)
    out = run_in_pty(env, ["download", "1000001", "1000002", "1000003"], columns)
    assert env.last_pty_code == 0, out
    screen = "\n".join(visible_lines(out, columns))
    assert screen.count("done,") >= 3
    assert "3 ids: 3 completed" in screen


def test_config_show_fits(env):
    out = run_in_pty(env, ["config", "show"], 40)
    lines = [line for line in visible_lines(out, 40) if line.strip()]
    assert all(cell_len(line) <= 40 for line in lines), lines
    assert any(line.startswith("download_dir") and line.rstrip().endswith("env") for line in lines)


def test_progress_json_events_for_scripts(env):
    env.track(1000001, size=400_000)
    env.fault(path="/previews/1000001/", kind="status", status=503, retry_after=1)
    result = env.run("download", "1000001", "--progress", "json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert {"id", "event", "bytes_received", "bytes_total"} <= set(events[0])
    kinds = [e["event"] for e in events]
    assert kinds[0] == "retry" and kinds[-1] == "completed" and "progress" in kinds
    assert events[0]["reason"] == "HTTP 503" and events[0]["retry_in_seconds"] == 1
    assert events[-1] == {
        "id": "1000001",
        "event": "completed",
        "bytes_received": 400_000,
        "bytes_total": 400_000,
        "path": str(env.download_dir / "Jack Johnson - Better Together.m4a"),
    }


def test_progress_lines_for_logs(env):
    result = env.run("download", "1000001", "1000002", "--progress", "line")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "1000001 Better Together · Jack Johnson: completed (66.3 KiB)" in lines
    assert lines[-1].startswith("2 ids: 2 completed in ")


def test_wait_progress_json(env):
    assert env.run("download", "-b", "1000001").returncode == 0
    result = env.run("wait", "--progress", "json", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert events[-1]["event"] == "completed" and events[-1]["id"] == "1000001"
    assert events[-1]["path"] == env.record(1000001)["path"]  # wait's events say it too


def test_a_retry_shows_on_the_bar(env):
    env.fault(path="/previews/1000001/", kind="status", status=503, retry_after=1)
    out = run_in_pty(env, ["download", "1000001"], 100)
    assert "retrying in 1 s (HTTP 503)" in out
    assert "done," in "\n".join(visible_lines(out, 100))


def test_finished_bars_make_way_when_rows_run_out(env):
    ids = [str(t["trackId"]) for t in env.json("search", "artist", "--limit", "12")]
    assert len(ids) == 12
    out = run_in_pty(env, ["download", *ids], 100, rows=8)  # 12 transfers, 8 rows
    assert env.last_pty_code == 0
    # Read through a tall emulator, nothing scrolls away: the bars that made way are gone.
    screen = "\n".join(visible_lines(out, 100, rows=200))
    assert "12 ids: 12 completed" in screen
    assert screen.count("done,") < 12
    tall = "\n".join(visible_lines(run_in_pty(env, ["download", "--force", *ids], 100), 100))
    assert tall.count("done,") >= 12  # with rows enough, every bar stays


def test_the_summary_counts_every_id_given(env):
    result = env.run("download", "1000001", "999", "abc", "1000002")
    assert result.returncode == 2
    assert "4 ids: 2 completed, 2 failed in " in result.stderr


def test_the_overall_line_is_redrawn_at_most_four_times_a_second():
    # Progress events come with every read of every transfer (thousands a second at
    # loopback speed); the bars throttle themselves, the overall line must too.
    from halftunes_cli.events import EventKind, TransferEvent
    from halftunes_cli.render.bars import BarProgress

    now = [100.0]
    bars = BarProgress(clock=lambda: now[0])
    bars.begin(2)

    def moved(total: int) -> TransferEvent:
        return TransferEvent(EventKind.PROGRESS, "1", "a song", total, 1 << 30, delta=1 << 20)

    bars.handle(moved(1 << 20))
    first = bars._overall.desc
    assert first.startswith("1.0 MiB")
    for i in range(2, 50):  # 48 MiB more within the same instant: no redraw
        bars.handle(moved(i << 20))
    assert bars._overall.desc == first
    now[0] += BarProgress.OVERALL_SECONDS
    bars.handle(moved(50 << 20))
    assert bars._overall.desc.startswith("50.0 MiB")
    bars.close()


@pytest.mark.parametrize("columns", [40, 60, 72, 80, 99, 100, 120, 200])
def test_a_bar_at_its_widest_leaves_the_last_two_cells_free(columns):
    """The widest figures a bar can show still leave room for the terminal's ^C echo, and
    the label keeps what is left (at least 15 cells from 72 columns on)."""
    from halftunes_cli.render.bars import BarStyle
    from halftunes_cli.render.formats import cells

    style = BarStyle(columns)
    worst = {
        "desc": "x" * style.desc_width,
        "bar": "#",
        "percentage": 100.0,
        "total_h": "1023.9 KiB",
        "rate_h": "1023.9 KiB/s",
        "eta_h": "9:59:59",
        "n_h": "1023.9 KiB",
    }
    for fmt in (style.running(100), style.running(None)):
        line = fmt.replace("\x1b[2K", "").format(**worst)
        assert cells(line) <= columns - 2, (columns, line)
    end = "still running at 1023.9 KiB"
    desc = style.ended_desc("a long title · an artist with a long name", end)
    line = style.ended(end).replace("\x1b[2K", "").format(desc=desc, bar="#")
    assert cells(line) <= columns - 2 and line.endswith(end), (columns, line)
    if columns >= 72:
        assert style.desc_width >= 15


def test_an_event_after_the_bars_ended_draws_nothing(capfd):
    """`wait` polls on another thread than the one Ctrl-C ends it on: an event that arrives
    after the final lines must not draw a fresh bar under them (seen as a stale 0% line)."""
    from halftunes_cli.events import EventKind, TransferEvent
    from halftunes_cli.render.bars import BarProgress

    bars = BarProgress()
    bars.begin(2)
    bars.handle(TransferEvent(EventKind.PROGRESS, "1", "one", 10, 100, delta=10))
    bars.abort("still running")
    capfd.readouterr()
    bars.handle(TransferEvent(EventKind.PROGRESS, "2", "two", 0, 100))
    assert capfd.readouterr().err == ""
    bars.begin(1)  # (a command's second round draws again)
    bars.handle(TransferEvent(EventKind.PROGRESS, "3", "three", 5, 100, delta=5))
    bars.close()
    assert "three" in capfd.readouterr().err
