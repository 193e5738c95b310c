"""Progress bars (tqdm): one per transfer, an overall line when several run, bars that end in
their final state (done, paused, failed), and finished bars that make way when there are
more transfers than rows. Downloads, `wait` and uploads all draw this one style."""

from __future__ import annotations

import collections
import shutil
import threading
import time
from typing import Any

from tqdm import tqdm

from ..events import EventKind, TransferEvent
from .base import Clock, Progress
from .console import Console, SideChannel
from .formats import cells, distinct, duration, fit, human_bytes, printable

# Every drawing starts by erasing its whole line: a shorter line never leaves the tail of a
# longer one (tqdm pads only to its own last length), and tqdm's trim to the line's width
# (ncols) can never cut the erase off, as it could one at the end.
ERASE = "\x1b[2K"
# The figures after a bar, at their widest ("100.0% of 1023.9 KiB  1023.9 KiB/s  ETA 9:59:59"):
# a label gets what a line leaves, and no line ever reaches the last two cells (where the
# terminal echoes ^C: a line that wraps would push every redraw one row down).
_WIDE_KNOWN = "{desc} {bar:20} {percentage:5.1f}% of {total_h}  {rate_h}  ETA {eta_h}"
_WIDE_FIGURES = 1 + 20 + 1 + 6 + 4 + 10 + 14 + 13
_MID_KNOWN = "{desc} {bar:10} {percentage:3.0f}% of {total_h} {rate_h} ETA {eta_h}"
_MID_FIGURES = 1 + 10 + 1 + 4 + 4 + 10 + 13 + 12
_UNKNOWN = "{desc} {n_h}  {rate_h}"
# narrow terminals (< 72 columns): no bar graphic, the figures a person acts on
_NARROW_KNOWN = "{desc} {percentage:3.0f}% {rate_h}"
_NARROW_UNKNOWN = "{desc} {n_h}"
_NARROW_FIGURES = 1 + 4 + 1 + 12
SPARE = 2


class Bar(tqdm):  # (tqdm has no type information: it is Any here)
    """tqdm with byte fields in binary units (tqdm's own are decimal for rates); tqdm still
    measures elapsed time and the (smoothed) rate."""

    @property
    def format_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = super().format_dict
        rate = d.get("rate")
        if rate is None and d["elapsed"]:
            rate = (d["n"] - d.get("initial", 0)) / d["elapsed"]
        total, n = d.get("total"), d["n"]
        d["total_h"] = human_bytes(total)
        d["n_h"] = human_bytes(n)
        d["rate_h"] = f"{human_bytes(rate or 0)}/s"
        d["eta_h"] = duration((total - n) / rate) if rate and total else "-:--"
        return d


class BarStyle:
    """Bar formats and the label width for a terminal this wide."""

    def __init__(self, columns: int):
        self.columns = columns
        self.ncols = max(10, columns - SPARE)  # what tqdm trims every line to
        if columns < 72:
            known, figures, graphic = _NARROW_KNOWN, _NARROW_FIGURES, ""
        elif columns < 100:
            known, figures, graphic = _MID_KNOWN, _MID_FIGURES, "{bar:10} "
        else:
            known, figures, graphic = _WIDE_KNOWN, _WIDE_FIGURES, "{bar:20} "
        self.desc_width = max(8, min(48, self.ncols - figures))
        self.graphic = graphic
        self._known = ERASE + known
        self._unknown = ERASE + (_NARROW_UNKNOWN if columns < 72 else _UNKNOWN)

    def running(self, total: int | None) -> str:
        return self._known if total else self._unknown

    def ended(self, text: str) -> str:
        return ERASE + "{desc} " + self.graphic + text.replace("{", "{{").replace("}", "}}")

    def ended_desc(self, label: str, text: str, width: int | None = None) -> str:
        """The label of a bar that ends with `text`, shortened if the line needs its room
        (the final word, `still running at 307.0 KiB`, is what must be read whole)."""
        graphic = 11 if "bar:10" in self.graphic else 21 if self.graphic else 0
        room = self.ncols - 1 - graphic - cells(text)
        width = max(4, min(width or self.desc_width, room))
        desc = fit(label, width)
        return desc + " " * (width - cells(desc))


class BarProgress(Progress):
    """Bars by events: tqdm computes speed and ETA from `update(n)`.

    The bars own their lines: every redraw erases to the end of its line; a line the console
    says meanwhile (-v, a message) goes above them; and at the end the live bars are cleared
    and their final states printed in order, the overall line first, so nothing of an
    earlier drawing is left on the screen."""

    OVERALL_SECONDS = 0.25
    RATE_WINDOW_SECONDS = 3.0  # the overall speed is measured over this much time

    def __init__(self, console: Console | None = None, clock: Clock = time.monotonic):
        self._bars: dict[str, Bar] = {}
        self._lock = threading.RLock()
        self._free: list[int] = []  # rows of collapsed bars, reused
        self._position = 0
        self._overall: Bar | None = None
        self._ended = 0
        self._collapsed_bytes = 0  # bytes of the bars that made way (no longer in _bars)
        self._collapse = False
        self._closed = False  # the final lines are out: nothing is drawn after them
        size = shutil.get_terminal_size((80, 24))
        self._style = BarStyle(size.columns)
        self._rows = size.lines
        self._clock = clock
        self._overall_at = float("-inf")  # when the overall line was last drawn
        self._stream = SideChannel()
        self._console = console
        self._shown: dict[str, str] = {}  # label -> what its bar says (distinct in the batch)
        self._labels: dict[str, str] = {}  # id -> what its bar says, unpadded
        self._width = self._style.desc_width  # of the labels (the longest one's, if known)
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._moved = 0  # bytes that moved while we watched (not what partials had before)
        self._began = 0.0

    def begin(self, count: int, labels: list[str] | None = None) -> None:
        with self._lock:
            self._closed = False  # (a command's second round: a refreshed address)
            self._shown = distinct(labels or [], self._style.desc_width)
            if labels:  # as wide as the longest label needs (aligned, without a wide gap)
                shown = [cells(printable(self._shown.get(x, x))) for x in labels]
                self._width = max(8, min(self._style.desc_width, max(shown)))
            if self._console is not None:
                self._console.sink = self.write_above
            if count < 2:
                return
            self._collapse = count > self._rows - 3
            self._began = self._clock()
            self._samples.append((self._began, 0))
            self._overall = Bar(
                total=count,
                position=0,
                leave=False,
                file=self._stream,
                bar_format=ERASE + "{n} of {total} · {desc}",
                desc="starting",
                ncols=self._style.ncols,
            )
            self._position = 1

    def write_above(self, text: str) -> None:
        """A line of text above the bars (they are drawn again under it)."""
        with self._lock:
            Bar.write(text, file=self._stream)

    def handle(self, event: TransferEvent) -> None:
        with self._lock:
            if self._closed:  # (an event that raced the end: a bar now would be stale)
                return
            if event.kind is EventKind.ENDED:
                self._end(event)
                return
            bar = self._bar(event)
            if event.kind is EventKind.RETRY:
                wait = f"retrying in {event.retry_in_seconds or 0:.0f} s ({event.reason})"
                self._say(bar, event.id, wait)
                return
            if "retrying" in (bar.bar_format or ""):
                bar.bar_format = self._style.running(bar.total)
                bar.desc = self._padded(self._labels[event.id])
            if event.bytes_done < bar.n:  # a restart from 0
                bar.reset(total=event.bytes_total)
                bar.update(event.bytes_done)
                self._moved += event.bytes_done
            else:
                moved = event.delta or event.bytes_done - bar.n
                bar.update(moved)
                self._moved += moved
            self._tick_overall()

    def _bar(self, event: TransferEvent) -> Bar:
        bar = self._bars.get(event.id)
        total = event.bytes_total
        if bar is None:
            if self._free:
                position = self._free.pop(0)
            else:
                position = self._position
                self._position += 1
            label = printable(self._shown.get(event.label, event.label))
            bar = Bar(
                total=total,
                initial=event.bytes_done - event.delta,
                unit="B",
                position=position,
                leave=False,
                mininterval=0.25,
                desc=self._padded(label),
                file=self._stream,
                bar_format=self._style.running(total),
                ncols=self._style.ncols,
            )
            self._bars[event.id] = bar
            self._labels[event.id] = label
        elif total != bar.total:
            bar.total = total  # learned (or changed, after a restart) mid-transfer
            bar.bar_format = self._style.running(total)
        return bar

    def _padded(self, label: str) -> str:
        width = self._width
        desc = fit(label, width)
        return desc + " " * (width - cells(desc))

    def _say(self, bar: Bar, rid: str, text: str) -> None:
        """Show `text` in place of the bar's figures (the label gives way if it must)."""
        label = self._labels.get(rid, bar.desc.rstrip())
        bar.desc = self._style.ended_desc(label, text, self._width)
        bar.bar_format = self._style.ended(text)
        bar.refresh()

    def _tick_overall(self, completed: int = 0, force: bool = False, final: bool = False) -> None:
        """Redraw the overall line (how many completed, bytes, the speed over the last few
        seconds, or over the whole run at the end): at every transfer's end, else at most
        every OVERALL_SECONDS (progress events come with every read of every transfer)."""
        if self._overall is None:
            return
        now = self._clock()
        if not (completed or force) and now - self._overall_at < self.OVERALL_SECONDS:
            return
        self._overall_at = now
        self._ended += completed
        done = self._collapsed_bytes + sum(b.n for b in self._bars.values())
        self._samples.append((now, self._moved))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.RATE_WINDOW_SECONDS:
            self._samples.popleft()
        first_at, first_moved = (self._began, 0) if final else self._samples[0]
        rate = (self._moved - first_moved) / (now - first_at) if now > first_at else 0.0
        self._overall.n = self._ended
        self._overall.set_description_str(
            f"{human_bytes(done)} · {human_bytes(rate)}/s", refresh=True
        )

    def _end(self, event: TransferEvent) -> None:
        bar = self._bars.get(event.id)
        if bar is None:
            return
        done, total = event.bytes_done, event.bytes_total
        if event.state == "completed":
            bar.update(max(0, (total or done) - bar.n))
            self._say(bar, event.id, f"done, {human_bytes(total or done)}")
        else:
            self._say(bar, event.id, f"{event.state} at {human_bytes(done)}")
        self._tick_overall(1 if event.state == "completed" else 0, force=True)
        if self._collapse:  # make way for the running ones
            self._collapsed_bytes += bar.n
            self._free.append(bar.pos if bar.pos >= 0 else -bar.pos)
            bar.close()
            del self._bars[event.id]

    def abort(self, note: str = "stopped") -> None:
        """The process ends now: the bars still moving say so (`note`) and where they were."""
        with self._lock:
            for rid, bar in self._bars.items():
                if "done," not in (bar.bar_format or "") and " at " not in (bar.bar_format or ""):
                    self._say(bar, rid, f"{note} at {human_bytes(bar.n)}")
            self.close()

    def close(self) -> None:
        """Clear the live bars, then print how each ended, in their order, under the
        overall line: the screen holds the final state and nothing else."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._console is not None:
                self._console.sink = None
            bars = sorted(self._bars.values(), key=lambda b: abs(b.pos))
            if self._overall is not None:
                self._tick_overall(force=True, final=True)
                bars.insert(0, self._overall)
            lines = [str(bar) for bar in bars]
            for bar in reversed(bars):
                bar.close()  # (leave=False: its line is cleared)
            self._bars.clear()
            self._overall = None
            for line in lines:
                self._stream.write(ERASE + line.replace(ERASE, "") + "\n")
            self._stream.flush()
