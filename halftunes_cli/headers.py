"""Pure parsing of HTTP header values that several layers read: HTTP dates and Retry-After."""

from __future__ import annotations

import time


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
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    when = http_time(value)
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when - now)
