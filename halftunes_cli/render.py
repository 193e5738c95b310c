"""Everything the user sees: byte sizes, tables, progress bars, JSON. It decides nothing."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: int | float | None) -> str:
    """Binary units, as NSByteCountFormatter's binary style: 512 B, 1.2 MiB, 3.0 GiB."""
    if n is None:
        return "?"
    if n < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024.0
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    return f"{n} B"


def duration(ms_or_seconds: float | None, *, millis: bool = False) -> str:
    """m:ss (h:mm:ss past an hour)."""
    if ms_or_seconds is None:
        return "-:--"
    seconds = int(round(ms_or_seconds / 1000 if millis else ms_or_seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    sys.stdout.flush()


def percent(received: int | None, total: int | None) -> str:
    if not total:
        return "-"
    return f"{100.0 * (received or 0) / total:.1f}%"


class Console:
    """stderr messages that honour -q, -v and colour settings."""

    def __init__(self, quiet: bool = False, verbose: bool = False, color: bool = True):
        self.quiet = quiet
        self.verbose = verbose
        self.color = color and sys.stderr.isatty()

    def _style(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def info(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def debug(self, message: str) -> None:
        if self.verbose:
            print(self._style(message, "2"), file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        print(self._style("halftunes: ", "33") + message, file=sys.stderr, flush=True)

    def error(self, message: str, hint: str | None = None) -> None:
        print(self._style("halftunes: error: ", "31;1") + message, file=sys.stderr, flush=True)
        if hint:
            print(self._style("  hint: ", "36") + hint, file=sys.stderr, flush=True)


def rich_console(color: bool):
    from rich.console import Console as RichConsole

    return RichConsole(no_color=not color, highlight=False, soft_wrap=False)


def search_table(tracks: list[Any], color: bool) -> None:
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for name, kw in (("#", {"justify": "right"}), ("trackId", {}), ("title", {"max_width": 40}),
                     ("artist", {"max_width": 28}), ("album", {"max_width": 28}),
                     ("time", {"justify": "right"}), ("preview", {})):  # fmt: skip
        table.add_column(name, overflow="ellipsis", no_wrap=True, **kw)
    for i, t in enumerate(tracks, 1):
        table.add_row(str(i), str(t.trackId), _printable(t.trackName), _printable(t.artistName),
                      _printable(t.collectionName or ""),
                      duration(t.trackTimeMillis, millis=True),
                      "yes" if t.has_preview else "no")  # fmt: skip
    rich_console(color).print(table)


def search_lines(tracks: list[Any]) -> None:
    for t in tracks:
        fields = [str(t.trackId), t.trackName, t.artistName, t.collectionName or "",
                  duration(t.trackTimeMillis, millis=True), t.previewUrl or ""]  # fmt: skip
        print("\t".join(_printable(f) for f in fields))


def records_table(rows: list[dict[str, Any]], color: bool) -> None:
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for name in ("id", "title", "status", "progress", "size", "path"):
        table.add_column(name, overflow="ellipsis", no_wrap=True,
                         max_width=40 if name in ("title", "path") else None)  # fmt: skip
    styles = {"completed": "green", "failed": "red", "paused": "yellow", "running": "cyan"}
    for r in rows:
        status = r["status"]
        shown = f"[{styles[status]}]{status}[/]" if status in styles else status
        table.add_row(r["id"], _printable(r.get("title") or ""), shown,
                      percent(r["bytes_received"], r["bytes_total"]),
                      human_bytes(r["bytes_total"]), _printable(r["path"]))  # fmt: skip
    rich_console(color).print(table)
    for r in rows:
        if r.get("error") and r["status"] in ("paused", "failed"):
            rich_console(color).print(f"  {r['id']}: {_printable(r['error'])}", markup=False,
                                      style="dim")  # fmt: skip


def records_lines(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        total = "" if r["bytes_total"] is None else str(r["bytes_total"])
        print("\t".join([r["id"], r["status"], str(r["bytes_received"]), total,
                         _printable(r["path"])]))  # fmt: skip


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))


class ProgressDelegate:
    """A session delegate that draws one tqdm bar per transfer (only on a TTY)."""

    def __init__(self, enabled: bool, console: Console):
        self.enabled = enabled
        self.console = console
        self._bars: dict[int, Any] = {}
        self._last: dict[int, float] = {}
        self._lock = threading.Lock()
        self._position = 0

    def _bar(self, task: Any):
        bar = self._bars.get(task.task_identifier)
        if bar is None:
            from tqdm import tqdm

            title = getattr(task, "title", None) or task.url.rsplit("/", 1)[-1]
            bar = tqdm(total=task.bytes_total, initial=task.bytes_received - 0, unit="B",
                       unit_scale=True, unit_divisor=1024, position=self._position, leave=True,
                       desc=_printable(title)[:32].ljust(32), file=sys.stderr,
                       bar_format="{desc} {bar:20} {postfix[0]}", postfix=[""],
                       dynamic_ncols=True)  # fmt: skip
            self._position += 1
            bar.start_bytes = task.bytes_received
            bar.start_time = time.monotonic()
            self._bars[task.task_identifier] = bar
        return bar

    def on_data_written(self, task, bytes_written, total_written, total_expected) -> None:
        if not self.enabled:
            return
        with self._lock:
            bar = self._bar(task)
            now = time.monotonic()
            if now - self._last.get(task.task_identifier, 0) < 0.25 and (
                total_expected is None or total_written < total_expected
            ):
                return
            self._last[task.task_identifier] = now
            elapsed = max(now - bar.start_time, 1e-6)
            speed = (total_written - bar.start_bytes) / elapsed
            if total_expected:
                left = (total_expected - total_written) / speed if speed > 0 else None
                text = (f"{percent(total_written, total_expected):>6} of "
                        f"{human_bytes(total_expected)}  {human_bytes(speed)}/s  "
                        f"ETA {duration(left)}")  # fmt: skip
            else:
                text = f"{human_bytes(total_written)}  {human_bytes(speed)}/s"
            self._show(bar, text, total_written, total_expected)

    @staticmethod
    def _show(bar, text: str, done: int | None, total: int | None) -> None:
        bar.total = total
        bar.n = done or 0
        bar.postfix[0] = text
        bar.refresh()

    def on_note(self, task, message) -> None:
        with self._lock:
            if self.enabled and task.task_identifier in self._bars:
                self._bars[task.task_identifier].write(f"  {message}", file=sys.stderr)
            else:
                self.console.info(f"{getattr(task, 'title', task.url)}: {message}")

    def on_complete(self, task, error) -> None:
        if not self.enabled:
            return
        with self._lock:
            bar = self._bars.get(task.task_identifier)
            if bar is not None:
                state = task.state.value
                if state == "completed":
                    self._show(
                        bar,
                        f"done, {human_bytes(task.bytes_total)}",
                        task.bytes_total,
                        task.bytes_total,
                    )
                else:
                    self._show(
                        bar,
                        f"{state} at {human_bytes(task.bytes_received)}",
                        task.bytes_received,
                        task.bytes_total,
                    )

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()
