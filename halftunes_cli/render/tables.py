"""Tables for a terminal (columns that give way by importance, cut by cells, never wrap; a
record's message below its row wraps, never cut) and tab-separated lines for pipes: search
results, download records, the configuration."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from typing import Any

import click

from ..config import PRIORITIES
from .formats import cells, duration, fit, human_bytes, percent, printable, wrap


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


def layout(columns: list[Column], rows: list[list[str]], width: int) -> list[str]:
    """Header and rows as lines of at most `width` cells (two spaces between columns)."""
    natural = [max([cells(c.name)] + [cells(r[i]) for r in rows]) for i, c in enumerate(columns)]
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

    def line(values: list[str]) -> str:
        out = []
        for i in shown:
            text = fit(values[i], widths[i], columns[i].trim)
            pad = " " * (widths[i] - cells(text))
            out.append(pad + text if columns[i].right else text + pad)
        return "  ".join(out).rstrip()

    return [line([c.name for c in columns])] + [line(r) for r in rows]


def _terminal_width() -> int:
    return shutil.get_terminal_size((80, 24)).columns


def _print_table(lines: list[str], color: bool, colors: list[str | None] | None = None) -> None:
    """The header in bold, each row in its colour (by status) when colours are on."""
    print(click.style(lines[0], bold=True) if color else lines[0])
    for n, text in enumerate(lines[1:]):
        fg = colors[n] if colors and color else None
        print(click.style(text, fg=fg) if fg else text)


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
                printable(t.trackName),
                printable(t.artist_or_show),
                printable(t.collectionName or ""),
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
        print("\t".join(printable(f) for f in fields))


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
    table = [
        [
            r.id,
            str(r.status),
            percent(r.bytes_received, r.bytes_total),
            human_bytes(r.bytes_total),
            printable(r.label),
            printable(r.path),
        ]
        for r in rows
    ]
    colors = {
        "completed": "green",
        "failed": "red",
        "paused": "yellow",
        "running": "cyan",
        "waiting": "blue",
    }
    _print_table(layout(columns, table, width), color, [colors.get(str(r.status)) for r in rows])
    for r in rows:
        note = printable(r.error) if r.error and str(r.status) in ("paused", "failed") else ""
        if str(r.status) == "waiting" and r.owner:  # (in its owner's hands: connectivity)
            note = "waiting for the network, trying again now and then" + (
                f" ({printable(r.error)})" if r.error else ""
            )
        elif str(r.status) in ("queued", "waiting"):
            note = schedule_note(r.not_before if str(r.status) == "waiting" else None, r.priority)
        if note:
            for line in wrap(f"{r.id}: {note}", width, "  ", "    "):
                print(click.style(line, dim=True) if color else line)


def schedule_note(not_before: float | None, priority: float | None) -> str:
    """`starts at 2026-12-24 03:00:00 · priority high` (what is not the default)."""
    parts = []
    if not_before is not None:
        parts.append("starts at " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(not_before)))
    if priority is not None and priority != PRIORITIES["default"]:
        names = {value: name for name, value in PRIORITIES.items()}
        parts.append(f"priority {names.get(priority, f'{priority:g}')}")
    return " · ".join(parts)


def config_table(
    described: dict[str, dict[str, Any]], color: bool, width: int | None = None
) -> None:
    """key and source never shrink; a long value (a path) is cut in the middle; a setting
    whose given value was bad (said on stderr) has "(!)" after its source."""
    columns = [
        Column("key", keep=True),
        Column("value", priority=1, min_width=10, trim="middle"),
        Column("source", keep=True),
    ]
    rows = [
        [key, printable(str(info["value"])), info["source"] + (" (!)" if "problem" in info else "")]
        for key, info in described.items()
    ]
    _print_table(layout(columns, rows, width or _terminal_width()), color)


def records_lines(rows: list[Any]) -> None:
    for r in rows:
        total = "" if r.bytes_total is None else str(r.bytes_total)
        print("\t".join([r.id, str(r.status), str(r.bytes_received), total, printable(r.path)]))
