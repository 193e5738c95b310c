"""Byte sizes, durations, percentages, and text cut, wrapped or told apart in a terminal's cells."""

from __future__ import annotations

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
    seconds = round(ms_or_seconds / 1000 if millis else ms_or_seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def percent(received: int | None, total: int | None) -> str:
    if not total:
        return "-"
    return f"{100.0 * (received or 0) / total:.1f}%"


def printable(text: object) -> str:
    """Text a terminal shows as it is: control characters become '?'."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))


def cells(text: str) -> int:
    """Terminal cells `text` takes (wide CJK and emoji count 2)."""
    from rich.cells import cell_len

    return int(cell_len(text))


def fit(text: str, width: int, trim: str = "end") -> str:
    """`text` cut to `width` terminal cells, with an ellipsis: at the end, or in the middle
    for a path (the file name stays whole as long as it can)."""
    from rich.cells import set_cell_size

    if cells(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    if trim == "middle":
        name = text.rsplit("/", 1)[-1]
        tail = min(cells(name) + (1 if "/" in text else 0), width - 2)
        tail = max(tail, width // 2)
        head = width - 1 - tail
        right = text
        while cells(right) > tail:
            right = right[1:]
        return str(set_cell_size(text, head)).rstrip() + "…" + right
    return str(set_cell_size(text, width - 1)).rstrip() + "…"


def wrap(text: str, width: int, indent: str = "", more: str = "") -> list[str]:
    """`text` as lines of at most `width` cells, broken between words (a word longer than a
    line is broken by cells); the first line starts with `indent`, the others with `more`."""
    from rich.cells import set_cell_size

    lines: list[str] = []
    line = indent
    fresh = True  # nothing but the indent on this line yet
    for word in text.split():
        gap = "" if fresh else " "
        if cells(line) + len(gap) + cells(word) <= width:
            line += gap + word
            fresh = False
            continue
        if not fresh:
            lines.append(line)
            line, fresh = more, True
        while cells(line) + cells(word) > width and width > cells(line):
            head = str(set_cell_size(word, width - cells(line))).rstrip()
            if not head:
                break
            lines.append(line + head)
            word = word[len(head) :]
            line = more
        line += word
        fresh = not word
    if not fresh or not lines:
        lines.append(line)
    return lines


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
                start = len(label) - room
                space = label.find(" ", start, shared)
                start = space + 1 if space != -1 else start  # from a word's start, if one is
            else:  # from the word where they part (the end is cut later)
                word = label.rfind(" ", 0, shared) + 1
                start = word if shared - word <= 12 else max(0, shared - 6)
            out[label] = "…" + label[start:]
    return out


def _common(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
