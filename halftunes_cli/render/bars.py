"""Progress bars (tqdm): one per transfer, an overall line when several run, bars that end in
their final state (done, paused, failed), and finished bars that make way when there are
more transfers than rows. Downloads, `wait` and uploads all draw this one style."""

from __future__ import annotations

import shutil
import threading
import time
from typing import Any

from tqdm import tqdm

from ..events import EventKind, TransferEvent
from .base import Clock, Progress
from .console import Console, SideChannel
from .formats import cells, duration, fit, human_bytes, printable

# Erase to the end of the line after each drawing: a shorter line never leaves the tail of a
# longer one behind (tqdm pads only to its own last length; the code takes no width).
ERASE = "\x1b[K"
_BAR_KNOWN = (
    "{{desc}} {{bar:{graphic}}} {{percentage:5.1f}}% of {{total_h}}  {{rate_h}}  ETA {{eta_h}}"
)
_BAR_UNKNOWN = "{desc} {n_h}  {rate_h}" + ERASE
# narrow terminals (< 72 columns): no bar graphic, the figures a person acts on
_NARROW_KNOWN = "{desc} {percentage:3.0f}% {rate_h}" + ERASE
_NARROW_UNKNOWN = "{desc} {n_h}" + ERASE


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
    """Bar formats and the title width for a terminal this wide."""

    def __init__(self, columns: int):
        self.narrow = columns < 72
        # the bar graphic is 20 cells where there is room, 12 below 100 columns (the title
        # needs them more); the figures after it take 42 cells, plus one spare
        bar = 0 if self.narrow else 20 if columns >= 100 else 12
        fixed = 23 if self.narrow else bar + 43
        self.desc_width = max(8, min(32, columns - fixed))
        self.graphic = f"{{bar:{bar}}} " if bar else ""
        self._known = _NARROW_KNOWN if self.narrow else _BAR_KNOWN.format(graphic=bar) + ERASE

    def running(self, total: int | None) -> str:
        if self.narrow:
            return self._known if total else _NARROW_UNKNOWN
        return self._known if total else _BAR_UNKNOWN

    def ended(self, text: str) -> str:
        return "{desc} " + self.graphic + text.replace("{", "{{").replace("}", "}}") + ERASE


class BarProgress(Progress):
    """Bars by events: tqdm computes speed and ETA from `update(n)`.

    The bars own their lines: every redraw erases to the end of its line; a line the console
    says meanwhile (-v, a message) goes above them; and at the end the live bars are cleared
    and their final states printed in order, the overall line first, so nothing of an
    earlier drawing is left on the screen."""

    OVERALL_SECONDS = 0.25

    def __init__(self, console: Console | None = None, clock: Clock = time.monotonic):
        self._bars: dict[str, Bar] = {}
        self._lock = threading.RLock()
        self._free: list[int] = []  # rows of collapsed bars, reused
        self._position = 0
        self._overall: Bar | None = None
        self._ended = 0
        self._collapsed_bytes = 0  # bytes of the bars that made way (no longer in _bars)
        self._collapse = False
        size = shutil.get_terminal_size((80, 24))
        self._style = BarStyle(size.columns)
        self._rows = size.lines
        self._clock = clock
        self._overall_at = float("-inf")  # when the overall line was last drawn
        self._stream = SideChannel()
        self._console = console
        self._shown: dict[str, str] = {}  # label -> what its bar says (distinct in the batch)

    def begin(self, count: int, labels: list[str] | None = None) -> None:
        with self._lock:
            self._shown = distinct(labels or [], self._style.desc_width)
            if self._console is not None:
                self._console.sink = self.write_above
            if count < 2:
                return
            self._collapse = count > self._rows - 3
            self._overall = Bar(
                total=count,
                position=0,
                leave=False,
                file=self._stream,
                bar_format="{n} of {total} · {desc}" + ERASE,
                desc="starting",
                dynamic_ncols=True,
            )
            self._position = 1

    def write_above(self, text: str) -> None:
        """A line of text above the bars (they are drawn again under it)."""
        with self._lock:
            Bar.write(text, file=self._stream)

    def handle(self, event: TransferEvent) -> None:
        with self._lock:
            if event.kind is EventKind.ENDED:
                self._end(event)
                return
            bar = self._bar(event)
            if event.kind is EventKind.RETRY:
                wait = f"retrying in {event.retry_in_seconds or 0:.0f} s ({event.reason})"
                bar.bar_format = self._style.ended(wait)
                bar.refresh()
                return
            if "retrying" in (bar.bar_format or ""):
                bar.bar_format = self._style.running(bar.total)
            if event.bytes_done < bar.n:  # a restart from 0
                bar.reset(total=event.bytes_total)
                bar.update(event.bytes_done)
            else:
                bar.update(event.delta or event.bytes_done - bar.n)
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
            width = self._style.desc_width
            desc = fit(printable(self._shown.get(event.label, event.label)), width)
            bar = Bar(
                total=total,
                initial=event.bytes_done - event.delta,
                unit="B",
                position=position,
                leave=False,
                mininterval=0.25,
                desc=desc + " " * (width - cells(desc)),
                file=self._stream,
                bar_format=self._style.running(total),
                dynamic_ncols=True,
            )
            self._bars[event.id] = bar
        elif total != bar.total:
            bar.total = total  # learned (or changed, after a restart) mid-transfer
            bar.bar_format = self._style.running(total)
        return bar

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

    def _end(self, event: TransferEvent) -> None:
        bar = self._bars.get(event.id)
        if bar is None:
            return
        done, total = event.bytes_done, event.bytes_total
        if event.state == "completed":
            bar.update(max(0, (total or done) - bar.n))
            bar.bar_format = self._style.ended(f"done, {human_bytes(total or done)}")
        else:
            bar.bar_format = self._style.ended(f"{event.state} at {human_bytes(done)}")
        bar.refresh()
        self._tick_overall(1)
        if self._collapse:  # make way for the running ones
            self._collapsed_bytes += bar.n
            self._free.append(bar.pos if bar.pos >= 0 else -bar.pos)
            bar.close()
            del self._bars[event.id]

    def abort(self, note: str = "stopped") -> None:
        """The process ends now: the bars still moving say so (`note`) and where they were."""
        with self._lock:
            for bar in self._bars.values():
                if "done," not in (bar.bar_format or "") and " at " not in (bar.bar_format or ""):
                    bar.bar_format = self._style.ended(f"{note} at {human_bytes(bar.n)}")
            self.close()

    def close(self) -> None:
        """Clear the live bars, then print how each ended, in their order, under the
        overall line: the screen holds the final state and nothing else."""
        with self._lock:
            if self._console is not None:
                self._console.sink = None
            bars = sorted(self._bars.values(), key=lambda b: abs(b.pos))
            if self._overall is not None:
                self._tick_overall()
                bars.insert(0, self._overall)
            lines = [str(bar) for bar in bars]
            for bar in reversed(bars):
                bar.close()  # (leave=False: its line is cleared)
            self._bars.clear()
            self._overall = None
            for line in lines:
                self._stream.write(line.replace(ERASE, "") + ERASE + "\n")
            self._stream.flush()


def distinct(labels: list[str], width: int) -> dict[str, str]:
    """What each label's bar says when it is longer than the bar's room: a long beginning it
    shares with another label of the batch is cut to "…", so the part that tells them apart
    shows (the rest is cut at the end as usual)."""
    out: dict[str, str] = {}
    for label in labels:
        if cells(label) <= width:
            continue
        shared = max((_common(label, other) for other in labels if other != label), default=0)
        if shared > width // 3:
            room = width - 1  # after the "…"
            if len(label) - shared <= room - 6:  # all that differs fits: show the end whole
                out[label] = "…" + label[len(label) - room :]
            else:  # from a little before the difference (the end is cut later)
                out[label] = "…" + label[max(0, shared - 6) :]
    return out


def _common(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
