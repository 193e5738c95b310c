"""Everything the user sees: byte sizes, tables, progress bars, JSON. It decides nothing."""

from __future__ import annotations

import json
import sys
import threading
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

    def error(self, message: str, hint: str | None = None) -> None:
        print(self._style("halftunes: error: ", "31;1") + message, file=sys.stderr, flush=True)
        if hint:
            print(self._style("  hint: ", "36") + hint, file=sys.stderr, flush=True)

    def announce(self, records: list[Any]) -> None:
        """Background transfers that finished while nobody watched (said once)."""
        if not records:
            return
        names = ", ".join(f"{r.display_name} ({r.status})" for r in records[:5])
        more = f" and {len(records) - 5} more" if len(records) > 5 else ""
        noun = "download" if len(records) == 1 else "downloads"
        self.info(f"{len(records)} background {noun} finished: {names}{more}")


class ConsoleReporter:
    """The service's messages, said on the console."""

    def __init__(self, console: Console):
        self.console = console

    def error(self, error: Any) -> None:
        self.console.error(error.message, error.hint)

    def info(self, message: str) -> None:
        self.console.info(message)

    def debug(self, message: str) -> None:
        self.console.debug(message)


def spinner(text: str, color: bool):
    """A started spinner on stderr (call .stop()); no colour codes when colour is off."""
    from rich.console import Console as RichConsole

    status = RichConsole(stderr=True, no_color=not color).status(text)
    status.start()
    return status


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


def records_table(rows: list[Any], color: bool) -> None:
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for name in ("id", "title", "status", "progress", "size", "path"):
        table.add_column(name, overflow="ellipsis", no_wrap=True,
                         max_width=40 if name in ("title", "path") else None)  # fmt: skip
    styles = {"completed": "green", "failed": "red", "paused": "yellow", "running": "cyan"}
    for r in rows:
        status = str(r.status)
        shown = f"[{styles[status]}]{status}[/]" if status in styles else status
        table.add_row(r.id, _printable(r.title or ""), shown,
                      percent(r.bytes_received, r.bytes_total),
                      human_bytes(r.bytes_total), _printable(r.path))  # fmt: skip
    rich_console(color).print(table)
    for r in rows:
        if r.error and str(r.status) in ("paused", "failed"):
            rich_console(color).print(f"  {r.id}: {_printable(r.error)}", markup=False,
                                      style="dim")  # fmt: skip


def records_lines(rows: list[Any]) -> None:
    for r in rows:
        total = "" if r.bytes_total is None else str(r.bytes_total)
        print("\t".join([r.id, str(r.status), str(r.bytes_received), total,
                         _printable(r.path)]))  # fmt: skip


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))


_BAR_KNOWN = "{desc} {bar:20} {percentage:5.1f}% of {total_h}  {rate_h}  ETA {eta_h}"
_BAR_UNKNOWN = "{desc} {n_h}  {rate_h}"
_bar_class: Any = None


def _bar_type() -> Any:
    """tqdm with byte fields in binary units (tqdm's own are decimal for rates); tqdm still
    measures elapsed time and the (smoothed) rate."""
    global _bar_class
    if _bar_class is None:
        from tqdm import tqdm

        class Bar(tqdm):
            @property
            def format_dict(self):  # type: ignore[override]
                d = super().format_dict
                rate = d.get("rate")
                if rate is None and d["elapsed"]:
                    rate = (d["n"] - d.get("initial", 0)) / d["elapsed"]
                total, n = d.get("total"), d["n"]
                d["total_h"] = human_bytes(total)
                d["n_h"] = human_bytes(n)
                d["rate_h"] = f"{human_bytes(rate or 0)}/s"
                d["eta_h"] = duration((total - n) / rate) if rate and total else "-:--"
                return d

        _bar_class = Bar
    return _bar_class


class ProgressDelegate:
    """A session delegate that draws one tqdm bar per transfer (only when enabled: a TTY).

    Progress arrives as events (bytes written or sent); tqdm computes speed and ETA from
    `update(n)`. Downloads, `wait` and uploads all draw this one style."""

    def __init__(self, enabled: bool, console: Console):
        self.enabled = enabled
        self.console = console
        self._bars: dict[Any, Any] = {}
        self._lock = threading.Lock()
        self._position = 0

    def _bar(self, key: Any, title: str, done: int, total: int | None):
        bar = self._bars.get(key)
        if bar is None:
            bar = _bar_type()(total=total, initial=done, unit="B", position=self._position,
                       leave=True, mininterval=0.25,
                       desc=_printable(title)[:32].ljust(32), file=sys.stderr,
                       bar_format=_BAR_KNOWN if total else _BAR_UNKNOWN,
                       dynamic_ncols=True)  # fmt: skip
            self._position += 1
            self._bars[key] = bar
        elif total != bar.total:
            bar.total = total  # learned (or changed, after a restart) mid-transfer
            bar.bar_format = _BAR_KNOWN if total else _BAR_UNKNOWN
        return bar

    @staticmethod
    def _title(task: Any) -> str:
        title = getattr(task, "title", None)
        if not title or "://" in title:  # a URL download is known by its file name
            destination = getattr(task, "destination", None)
            return destination.name if destination else task.url.rsplit("/", 1)[-1]
        return title

    def on_all_finished(self) -> None:
        """The session's transfers are over: end the bars before anything else is said."""
        self.close()

    def on_data_written(self, task, bytes_written, total_written, total_expected) -> None:
        if not self.enabled:
            return
        with self._lock:
            bar = self._bar(task.task_identifier, self._title(task),
                            total_written - bytes_written, total_expected)  # fmt: skip
            if total_written < bar.n:  # a restart from 0
                bar.reset(total=total_expected)
                bar.update(total_written)
            else:
                bar.update(bytes_written)

    def on_data_sent(self, task, bytes_sent, total_sent, total_expected) -> None:
        if not self.enabled:
            return
        with self._lock:
            title = task.file_path.name if hasattr(task, "file_path") else self._title(task)
            bar = self._bar(task.task_identifier, title, total_sent - bytes_sent, total_expected)
            bar.update(bytes_sent)

    def on_note(self, task, message) -> None:
        with self._lock:
            if self.enabled and task.task_identifier in self._bars:
                self._bars[task.task_identifier].write(f"  {message}", file=sys.stderr)
            else:
                self.console.info(f"{self._title(task)}: {message}")

    def on_complete(self, task, error) -> None:  # noqa: ARG002
        if not self.enabled:
            return
        with self._lock:
            self._end(task.task_identifier, str(task.state), task.bytes_received, task.bytes_total)

    def _end(self, key: Any, state: str, done: int, total: int | None) -> None:
        bar = self._bars.get(key)
        if bar is None:
            return
        if state == "completed":
            bar.update(max(0, (total or done) - bar.n))
            bar.bar_format = "{desc} {bar:20} done, " + human_bytes(total or done)
        else:
            bar.bar_format = "{desc} {bar:20} " + f"{state} at {human_bytes(done)}"
        bar.refresh()

    def on_records(self, records: list[Any]) -> None:
        """`wait`: draw records as they move (a record is keyed by its id)."""
        if not self.enabled:
            return
        with self._lock:
            for r in records:
                bar = self._bar(r.id, r.label, r.bytes_received, r.bytes_total)
                if r.bytes_received < bar.n:
                    bar.reset(total=r.bytes_total)
                bar.update(r.bytes_received - bar.n)

    def on_records_ended(self, records: list[Any]) -> None:
        if not self.enabled:
            return
        with self._lock:
            for r in records:
                self._end(r.id, str(r.status), r.bytes_received, r.bytes_total)

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()
