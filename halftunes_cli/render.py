"""Everything the user sees: byte sizes, tables, progress bars, JSON. It decides nothing."""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass
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


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal (False when it is closed, or gone)."""
    try:
        return sys.stderr is not None and bool(sys.stderr.isatty())
    except (OSError, ValueError):
        return False


class SideChannel:
    """stderr as progress and messages use it: a side channel. A write that fails (the
    reader went away, EPIPE; a full disk under a redirect) turns this channel off and is
    logged once; it never raises into the code that had something to say (a transfer)."""

    def __init__(self) -> None:
        self.is_broken = False

    @property
    def target(self) -> Any:
        return sys.stderr  # looked up at each write: a test runner may swap it

    def write(self, text: str) -> int:
        target = self.target
        if not self.is_broken and target is not None:  # (None: started with stderr closed)
            try:
                return int(target.write(text))
            except (OSError, ValueError) as exc:  # ValueError: the stream was closed
                self._broke(exc)
        return len(text)

    def flush(self) -> None:
        target = self.target
        if not self.is_broken and target is not None:
            try:
                target.flush()
            except (OSError, ValueError) as exc:
                self._broke(exc)

    def _broke(self, exc: BaseException) -> None:
        import logging

        self.is_broken = True
        logging.getLogger(__name__).warning(
            "stderr cannot be written (%s): progress and messages are off", exc
        )

    def isatty(self) -> bool:
        return stderr_is_terminal()

    def fileno(self) -> int:
        return int(self.target.fileno())

    @property
    def encoding(self) -> str:
        return getattr(self.target, "encoding", None) or "utf-8"


class Console:
    """stderr messages that honour -q, -v and colour settings."""

    def __init__(self, quiet: bool = False, verbose: bool = False, color: bool = True):
        self.quiet = quiet
        self.verbose = verbose
        self.stream = SideChannel()
        self.color = color and self.stream.isatty()

    def _style(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            self._say(message)

    def debug(self, message: str) -> None:
        if self.verbose:
            self._say(self._style(message, "2"))

    def error(self, message: str, hint: str | None = None) -> None:
        self._say(self._style("halftunes: error: ", "31;1") + message)
        if hint:
            self._say(self._style("  hint: ", "36") + hint)

    def announce(self, records: list[Any]) -> None:
        """Background transfers that finished while nobody watched (said once)."""
        if not records:
            return
        names = ", ".join(f"{r.display_name} ({r.status})" for r in records[:5])
        more = f" and {len(records) - 5} more" if len(records) > 5 else ""
        noun = "download" if len(records) == 1 else "downloads"
        self.info(f"{len(records)} background {noun} finished: {names}{more}")


class JobProgress:
    """One overall bar for a job: shards, items, files/s, MB/s, failures (on a terminal);
    a line per shard otherwise (for logs)."""

    def __init__(self, console: Console, is_tty: bool):
        import time

        self.console = console
        self.is_tty = is_tty and not console.quiet
        self._clock = time.monotonic
        self._began = self._clock()
        self._bar: Any = None
        self.items = self.failed = self.nbytes = 0

    def shard(self, k: int, counts: dict[str, int], shards: int) -> None:
        if "skipped_shard" in counts:
            return
        self.items += counts.get("completed", 0) + counts.get("failed", 0)
        self.failed += counts.get("failed", 0)
        self.nbytes += counts.get("bytes", 0)
        elapsed = max(self._clock() - self._began, 1e-6)
        figures = (
            f"{self.items} items · {self.items / elapsed:.0f} files/s · "
            f"{human_bytes(self.nbytes / elapsed)}/s · {self.failed} failed"
        )
        if not self.is_tty:
            if not self.console.quiet:
                self.console.info(f"shard {k} done: {figures}")
            return
        if self._bar is None:
            self._bar = _bar_type()(
                total=shards,
                file=SideChannel(),
                leave=True,
                unit="shard",
                bar_format="{n}/{total} shards {bar:20} {desc}",
            )
        self._bar.set_description_str(figures, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def summary(given: int, statuses: list[str], elapsed_seconds: float) -> str:
    """`35 ids: 33 completed, 1 skipped, 1 failed in 0:42`: every id given is counted once
    (an id that never reached a transfer, bad input, counts as failed)."""
    counts = {s: statuses.count(s) for s in ("completed", "skipped", "paused", "cancelled")}
    counts["failed"] = given - sum(counts.values())
    parts = [f"{n} {name}" for name, n in counts.items() if n or name == "completed"]
    return f"{given} ids: {', '.join(parts)} in {duration(elapsed_seconds)}"


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


@dataclass
class Column:
    """A table column. `keep` columns (ids, status, progress) never shrink or vanish;
    the others give way by `priority` (lower goes first) and are cut at the end, or in the
    middle for paths (the file name stays)."""

    name: str
    keep: bool = False
    priority: int = 0
    min_width: int = 6
    trim: str = "end"  # end | middle
    right: bool = False


def _cells(text: str) -> int:
    from rich.cells import cell_len

    return cell_len(text)


def fit(text: str, width: int, trim: str = "end") -> str:
    """`text` cut to `width` terminal cells (wide CJK and emoji count 2), with an ellipsis."""
    from rich.cells import set_cell_size

    if _cells(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    if trim == "middle":  # a path: the file name stays whole as long as it can
        name = text.rsplit("/", 1)[-1]
        tail = min(_cells(name) + (1 if "/" in text else 0), width - 2)
        tail = max(tail, width // 2)
        head = width - 1 - tail
        right = text
        while _cells(right) > tail:
            right = right[1:]
        return set_cell_size(text, head).rstrip() + "…" + right
    return set_cell_size(text, width - 1).rstrip() + "…"


def layout(columns: list[Column], rows: list[list[str]], width: int) -> list[str]:
    """Header and rows as lines of at most `width` cells (two spaces between columns)."""
    natural = [max([_cells(c.name)] + [_cells(r[i]) for r in rows]) for i, c in enumerate(columns)]
    shown = list(range(len(columns)))

    def needed(indexes: list[int]) -> int:
        fixed = sum(natural[i] for i in indexes if columns[i].keep)
        flexible = sum(
            min(natural[i], columns[i].min_width) for i in indexes if not columns[i].keep
        )
        return fixed + flexible + 2 * (len(indexes) - 1)

    # narrow terminals: drop the least important flexible columns until the rest fit
    for i in sorted((i for i in shown if not columns[i].keep), key=lambda i: columns[i].priority):
        if needed(shown) <= width:
            break
        shown.remove(i)
    widths = {i: natural[i] for i in shown}
    flexible = [i for i in shown if not columns[i].keep]
    room = width - sum(natural[i] for i in shown if columns[i].keep) - 2 * (len(shown) - 1)
    wanted = sum(natural[i] for i in flexible)
    if flexible and wanted > room:
        # share the room by what each column would like times its importance, none below its
        # minimum; what is left over goes to the most important ones
        weight = {i: min(natural[i], 24) * (1 + columns[i].priority) for i in flexible}
        total_weight = sum(weight.values())
        for i in flexible:
            floor = min(natural[i], columns[i].min_width)
            widths[i] = min(natural[i], max(floor, room * weight[i] // total_weight))
        spare = room - sum(widths[i] for i in flexible)
        for i in sorted(flexible, key=lambda i: -columns[i].priority):  # leftovers, best first
            give = min(spare, natural[i] - widths[i]) if spare > 0 else 0
            widths[i] += give
            spare -= give
        excess = sum(widths[i] for i in flexible) - room
        for i in sorted(flexible, key=lambda i: columns[i].priority):
            if excess <= 0:
                break
            give = min(excess, widths[i] - min(natural[i], columns[i].min_width))
            widths[i] -= give
            excess -= give

    def line(cells: list[str]) -> str:
        out = []
        for i in shown:
            text = fit(cells[i], widths[i], columns[i].trim)
            pad = " " * (widths[i] - _cells(text))
            out.append(pad + text if columns[i].right else text + pad)
        return "  ".join(out).rstrip()

    return [line([c.name for c in columns])] + [line(r) for r in rows]


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((80, 24)).columns


def _print_table(lines: list[str], color: bool, styles: list[str | None] | None = None) -> None:
    bold, reset = ("\x1b[1m", "\x1b[0m") if color else ("", "")
    print(f"{bold}{lines[0]}{reset}")
    for n, text in enumerate(lines[1:]):
        style = styles[n] if styles and color else None
        print(f"\x1b[{style}m{text}{reset}" if style else text)


def search_table(
    tracks: list[Any], color: bool, downloaded: set[str] | None = None, width: int | None = None
) -> None:
    """id, E (explicit / clean), title, artist, album, time, and whether it is here (got) or
    can be downloaded at all (no preview, album, artist ...)."""
    downloaded = downloaded or set()
    columns = [
        Column("id", keep=True),
        Column("E", keep=True),
        Column("title", priority=4, min_width=12),
        Column("artist", priority=3),
        Column("album", priority=1),
        Column("time", priority=2, right=True),
        Column("got", keep=True),
    ]
    rows = []
    for t in tracks:
        ident = str(t.trackId) if t.trackId is not None else "-"
        if ident in downloaded:
            got = "yes"
        elif t.is_downloadable:
            got = ""
        else:
            got = "no preview" if t.wrapperType == "track" else t.noun.split(" ", 1)[-1]
        rows.append(
            [
                ident,
                t.explicit_mark,
                _printable(t.trackName),
                _printable(t.artist_or_show),
                _printable(t.collectionName or ""),
                duration(t.trackTimeMillis, millis=True) if t.trackTimeMillis else "",
                got,
            ]
        )
    _print_table(layout(columns, rows, width or _terminal_width()), color)


def search_lines(tracks: list[Any]) -> None:
    for t in tracks:
        ident = str(t.trackId) if t.trackId is not None else "-"
        fields = [
            ident,
            t.trackName,
            t.artist_or_show,
            t.collectionName or "",
            duration(t.trackTimeMillis, millis=True),
            t.previewUrl or "",
        ]
        print("\t".join(_printable(f) for f in fields))


def records_table(rows: list[Any], color: bool, width: int | None = None) -> None:
    """id, status, progress and size never shrink; title then path give way (the path is cut
    in the middle, so the file name stays)."""
    width = width or _terminal_width()
    columns = [
        Column("id", keep=True),
        Column("status", keep=True),
        Column("progress", keep=True, right=True),
        Column("size", priority=7, min_width=9, right=True),  # whole, or gone (narrow)
        Column("title", priority=4, min_width=10),
        Column("path", priority=5, min_width=12, trim="middle"),
    ]
    cells = [
        [
            r.id,
            str(r.status),
            percent(r.bytes_received, r.bytes_total),
            human_bytes(r.bytes_total),
            _printable(r.label),
            _printable(r.path),
        ]
        for r in rows
    ]
    styles = {"completed": "32", "failed": "31", "paused": "33", "running": "36"}
    _print_table(layout(columns, cells, width), color, [styles.get(str(r.status)) for r in rows])
    dim, reset = ("\x1b[2m", "\x1b[0m") if color else ("", "")
    for r in rows:
        if r.error and str(r.status) in ("paused", "failed"):
            print(f"{dim}{fit(f'  {r.id}: {_printable(r.error)}', width)}{reset}")


def config_table(
    described: dict[str, dict[str, Any]], color: bool, width: int | None = None
) -> None:
    """key and source never shrink; a long value (a path) is cut in the middle."""
    columns = [
        Column("key", keep=True),
        Column("value", priority=1, min_width=10, trim="middle"),
        Column("source", keep=True),
    ]
    rows = [
        [key, _printable(str(info["value"])), info["source"]] for key, info in described.items()
    ]
    _print_table(layout(columns, rows, width or _terminal_width()), color)


def records_lines(rows: list[Any]) -> None:
    for r in rows:
        total = "" if r.bytes_total is None else str(r.bytes_total)
        print("\t".join([r.id, str(r.status), str(r.bytes_received), total, _printable(r.path)]))


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))


_BAR_KNOWN = "{desc} {bar:20} {percentage:5.1f}% of {total_h}  {rate_h}  ETA {eta_h}"
_BAR_UNKNOWN = "{desc} {n_h}  {rate_h}"
# narrow terminals (< 72 columns): no bar graphic, the figures a person acts on
_NARROW_KNOWN = "{desc} {percentage:3.0f}% {rate_h}"
_NARROW_UNKNOWN = "{desc} {n_h}"


class _Style:
    """Bar formats and the title width for a terminal this wide."""

    def __init__(self, columns: int):
        self.narrow = columns < 72
        self.desc_width = max(8, min(32, columns - (23 if self.narrow else 63)))  # 1 spare
        self.graphic = "" if self.narrow else "{bar:20} "

    def running(self, total: int | None) -> str:
        if self.narrow:
            return _NARROW_KNOWN if total else _NARROW_UNKNOWN
        return _BAR_KNOWN if total else _BAR_UNKNOWN

    def ended(self, text: str) -> str:
        return "{desc} " + self.graphic + text.replace("{", "{{").replace("}", "}}")


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


PROGRESS_MODES = ("auto", "bar", "line", "json", "none")


def _event_id(task: Any) -> str:
    return str(
        getattr(task, "record_id", None) or getattr(task, "id", None) or task.task_identifier
    )


def _label(task: Any) -> str:
    title = getattr(task, "title", None) or getattr(task, "label", None)
    if not title or "://" in title:  # a URL download is known by its file name
        for attr in ("destination", "file_path"):
            where = getattr(task, attr, None)
            if where:
                return where.name
        return task.url.rsplit("/", 1)[-1]
    return title


class Progress:
    """A session delegate that shows nothing: the base of every progress style.

    Events: bytes written (downloads) or sent (uploads), a retry, a transfer's end, and for
    `wait` the records it polls. Subclasses draw bars, log lines or JSON Lines."""

    def on_transfers(self, count: int) -> None:
        """How many transfers this command runs (for an overall line)."""

    def on_data_written(self, task, bytes_written, total_written, total_expected) -> None:
        pass

    def on_data_sent(self, task, bytes_sent, total_sent, total_expected) -> None:
        self.on_data_written(task, bytes_sent, total_sent, total_expected)

    def on_retry(self, task, wait_seconds, reason) -> None:
        pass

    def on_complete(self, task, error) -> None:
        pass

    def on_records(self, records: list[Any]) -> None:
        pass

    def on_records_ended(self, records: list[Any]) -> None:
        pass

    def on_all_finished(self) -> None:
        self.close()

    def close(self) -> None:
        pass


def make_progress(mode: str, console: Console, is_tty: bool) -> Progress:
    """auto = bars on a terminal, nothing otherwise; line = plain lines for logs; json = JSON
    Lines events on stderr for scripts; none = nothing."""
    if mode == "auto":
        mode = "bar" if is_tty and not console.quiet else "none"
    if mode == "bar":
        return ProgressDelegate(True, console)
    if mode == "line":
        return LineProgress()
    if mode == "json":
        return JsonProgress()
    return Progress()


class LineProgress(Progress):
    """One plain line per transfer every few seconds, and one at its end (for logs)."""

    EVERY_SECONDS = 3.0

    def __init__(self, clock: Any = None) -> None:
        import time

        self._clock = clock or time.monotonic
        self._seen: dict[str, tuple[float, int, float]] = {}  # id -> (start, bytes0, last)
        self._lock = threading.Lock()
        self._stream = SideChannel()

    def _say(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def on_data_written(self, task, bytes_written, total_written, total_expected) -> None:
        key, now = _event_id(task), self._clock()
        with self._lock:
            start, first, last = self._seen.setdefault(
                key, (now, total_written - bytes_written, now)
            )
            if now - last < self.EVERY_SECONDS:
                return
            self._seen[key] = (start, first, now)
        rate = (total_written - first) / max(now - start, 1e-6)
        of = (
            f"{percent(total_written, total_expected)} of {human_bytes(total_expected)}"
            if total_expected
            else human_bytes(total_written)
        )
        self._say(f"{_label(task)}: {of}, {human_bytes(rate)}/s")

    def on_retry(self, task, wait_seconds, reason) -> None:
        self._say(f"{_label(task)}: retrying in {wait_seconds:.0f} s ({reason})")

    def on_complete(self, task, error) -> None:
        state = str(task.state)
        tail = f": {error}" if state == "failed" and error is not None else ""
        size = getattr(task, "bytes_total", None) or getattr(task, "bytes_sent", None)
        self._say(f"{_label(task)}: {state}" + (f" ({human_bytes(size)})" if size else "") + tail)

    def on_records_ended(self, records: list[Any]) -> None:
        for r in records:
            self._say(f"{r.label}: {r.status}" + (f": {r.error}" if r.error else ""))


class JsonProgress(Progress):
    """JSON Lines on stderr: {"id", "event", "bytes_received", "bytes_total", ...}; progress
    events at most twice a second per transfer."""

    EVERY_SECONDS = 0.5

    def __init__(self, clock: Any = None) -> None:
        import time

        self._clock = clock or time.monotonic
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stream = SideChannel()

    def _emit(self, **event: Any) -> None:
        line = json.dumps(event, ensure_ascii=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def on_data_written(self, task, bytes_written, total_written, total_expected) -> None:
        key, now = _event_id(task), self._clock()
        with self._lock:
            if now - self._last.get(key, -1e9) < self.EVERY_SECONDS and (
                total_expected is None or total_written < total_expected
            ):
                return
            self._last[key] = now
        self._emit(
            id=key, event="progress", bytes_received=total_written, bytes_total=total_expected
        )

    def on_retry(self, task, wait_seconds, reason) -> None:
        self._emit(
            id=_event_id(task),
            event="retry",
            bytes_received=task.bytes_received if hasattr(task, "bytes_received") else None,
            bytes_total=getattr(task, "bytes_total", None),
            retry_in_seconds=round(wait_seconds, 3),
            reason=reason,
        )

    def on_complete(self, task, error) -> None:
        state = str(task.state)
        event: dict[str, Any] = {
            "id": _event_id(task),
            "event": state,
            "bytes_received": getattr(task, "bytes_received", None),
            "bytes_total": getattr(task, "bytes_total", None),
        }
        if error is not None and state == "failed":
            event["error"] = str(error)
        self._emit(**event)

    def on_records(self, records: list[Any]) -> None:
        for r in records:
            self.on_data_written(_RecordTask(r), 0, r.bytes_received, r.bytes_total)

    def on_records_ended(self, records: list[Any]) -> None:
        for r in records:
            event = {
                "id": r.id,
                "event": str(r.status),
                "bytes_received": r.bytes_received,
                "bytes_total": r.bytes_total,
            }
            if r.error:
                event["error"] = r.error
            self._emit(**event)


class _RecordTask:
    def __init__(self, record: Any) -> None:
        self.id = record.id
        self.task_identifier = record.id
        self.title = record.label
        self.url = record.url


class ProgressDelegate(Progress):
    """One tqdm bar per transfer (when enabled), an overall line when several run, and bars
    that end in their final state (done, paused, failed).

    Progress arrives as events (bytes written or sent); tqdm computes speed and ETA from
    `update(n)`. Downloads, `wait` and uploads all draw this one style. When there are more
    transfers than the terminal has rows, finished bars make way for running ones."""

    OVERALL_SECONDS = 0.25

    def __init__(self, enabled: bool, console: Console, clock: Any = None):
        import time

        self.enabled = enabled
        self.console = console
        self._bars: dict[Any, Any] = {}
        self._lock = threading.Lock()
        self._free: list[int] = []  # rows of collapsed bars, reused
        self._position = 0
        self._overall: Any = None
        self._ended = 0
        self._collapsed_bytes = 0  # bytes of the bars that made way (no longer in _bars)
        self._collapse = False
        self._style = _Style(_terminal_width())
        self._clock = clock or time.monotonic
        self._overall_at = float("-inf")  # when the overall line was last drawn
        self._stream = SideChannel()

    def on_transfers(self, count: int) -> None:
        if not self.enabled or count < 2:
            return
        import shutil

        with self._lock:
            self._collapse = count > shutil.get_terminal_size((80, 24)).lines - 3
            self._overall = _bar_type()(
                total=count,
                position=0,
                leave=True,
                file=self._stream,
                bar_format="{n} of {total} · {desc}",
                desc="starting",
                dynamic_ncols=True,
            )
            self._position = 1

    def _tick_overall(self, ended: int = 0) -> None:
        """Redraw the overall line: at every transfer's end, else at most every
        OVERALL_SECONDS (progress events come with every read of every transfer)."""
        if self._overall is None:
            return
        now = self._clock()
        if not ended and now - self._overall_at < self.OVERALL_SECONDS:
            return
        self._overall_at = now
        self._ended += ended
        done = self._collapsed_bytes + sum(b.n for b in self._bars.values())
        rate = sum((b.format_dict.get("rate") or 0) for b in self._bars.values())
        self._overall.n = self._ended
        self._overall.set_description_str(
            f"{human_bytes(done)} · {human_bytes(rate)}/s", refresh=True
        )

    def _bar(self, key: Any, title: str, done: int, total: int | None):
        bar = self._bars.get(key)
        if bar is None:
            if self._free:
                position = self._free.pop(0)
            else:
                position = self._position
                self._position += 1
            width = self._style.desc_width
            desc = fit(_printable(title), width)
            bar = _bar_type()(
                total=total,
                initial=done,
                unit="B",
                position=position,
                leave=not self._collapse,
                mininterval=0.25,
                desc=desc + " " * (width - _cells(desc)),
                file=self._stream,
                bar_format=self._style.running(total),
                dynamic_ncols=True,
            )
            self._bars[key] = bar
        elif total != bar.total:
            bar.total = total  # learned (or changed, after a restart) mid-transfer
            bar.bar_format = self._style.running(total)
        return bar

    def on_retry(self, task, wait_seconds, reason) -> None:
        if not self.enabled:
            return
        with self._lock:
            bar = self._bar(
                task.task_identifier,
                _label(task),
                getattr(task, "bytes_received", 0) or 0,
                getattr(task, "bytes_total", None),
            )
            bar.bar_format = self._style.ended(f"retrying in {wait_seconds:.0f} s ({reason})")
            bar.refresh()

    def on_data_written(self, task, bytes_written, total_written, total_expected) -> None:
        if not self.enabled:
            return
        with self._lock:
            bar = self._bar(
                task.task_identifier, _label(task), total_written - bytes_written, total_expected
            )
            if "retrying" in (bar.bar_format or ""):
                bar.bar_format = self._style.running(bar.total)
            if total_written < bar.n:  # a restart from 0
                bar.reset(total=total_expected)
                bar.update(total_written)
            else:
                bar.update(bytes_written)
            self._tick_overall()

    def on_data_sent(self, task, bytes_sent, total_sent, total_expected) -> None:
        if not self.enabled:
            return
        with self._lock:
            bar = self._bar(
                task.task_identifier, _label(task), total_sent - bytes_sent, total_expected
            )
            bar.update(bytes_sent)

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
            bar.bar_format = self._style.ended(f"done, {human_bytes(total or done)}")
        else:
            bar.bar_format = self._style.ended(f"{state} at {human_bytes(done)}")
        bar.refresh()
        self._tick_overall(1)
        if self._collapse:  # make way for the running ones
            self._collapsed_bytes += bar.n
            self._free.append(bar.pos if bar.pos >= 0 else -bar.pos)
            bar.close()
            del self._bars[key]

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
            if self._overall is not None:
                self._overall.close()
                self._overall = None
