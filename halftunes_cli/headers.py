"""Pure parsing of values that come from outside: numbers in headers, API fields, config and
ids (ASCII only), HTTP dates and Retry-After.

Every number halftunes reads from the network, a file or the user goes through
`parse_uint` / `parse_decimal`: `str.isdigit()` and `int()` also take '²', '¹' or '١'
(other scripts' digits, superscripts), which no header, JSON number or id means.
"""

from __future__ import annotations

import re
import time

_UINT = re.compile(r"[0-9]+")
# The largest length or offset there is: what a file system, SQLite (a signed 64-bit
# INTEGER) and every peer can hold. A header that says more is a malformed one.
MAX_LENGTH = 2**63 - 1
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_uint(value: object) -> int | None:
    """A non-negative integer in ASCII digits (surrounding blanks allowed), else None."""
    if not isinstance(value, str):
        return None
    text = value.strip(" \t")
    return int(text) if _UINT.fullmatch(text) else None


def parse_decimal(value: object) -> float | None:
    """A decimal number in ASCII (`12`, `-1.5`, `2e3`), else None."""
    if not isinstance(value, str):
        return None
    text = value.strip(" \t")
    return float(text) if _DECIMAL.fullmatch(text) else None


def is_ascii_number(text: str) -> bool:
    """Digits 0-9 only: a track id as a user types it."""
    return _UINT.fullmatch(text) is not None


class MalformedHeader(ValueError):
    """A header is there but its value means nothing (a server fault, not ours)."""

    def __init__(self, name: str, value: str):
        shown = value if len(value) <= 40 else value[:39] + "…"
        super().__init__(f"the server sent a malformed {name} header ({shown!r})")
        self.name = name
        self.value = value


def parse_content_length(value: str | None) -> int | None:
    """Content-Length (RFC 9110 8.6): None when absent; MalformedHeader when it is not a
    number. A list of identical values ("100, 100") is the same number."""
    if value is None:
        return None
    numbers = {parse_uint(part) for part in value.split(",")}
    if len(numbers) != 1 or None in numbers:
        raise MalformedHeader("Content-Length", value)
    (number,) = numbers
    if number is None or number > MAX_LENGTH:
        raise MalformedHeader("Content-Length", value)
    return number


def http_time(value: str | None) -> float | None:
    """An HTTP date (RFC 9110 5.6.7) as a Unix time; None when absent or malformed."""
    if not value:
        return None
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None when
    absent or malformed (the caller's own back-off then applies)."""
    if value is None:
        return None
    seconds = parse_uint(value)
    if seconds is not None:
        return float(seconds)
    when = http_time(value.strip())
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when - now)
