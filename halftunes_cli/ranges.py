"""Pure resume logic: request headers, strict Content-Range parsing, the 200/206/416 decision."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .headers import MalformedHeader, http_time, parse_content_length
from .retry import RETRYABLE_STATUSES


class Action(enum.Enum):
    APPEND = "append"  # write this body at the offset we asked for
    RESTART = "restart"  # this body is the whole resource: truncate and write it from 0
    REFETCH = "refetch"  # this body is unusable: truncate and ask again from 0
    COMPLETE = "complete"  # the partial already holds the whole resource
    RETRY = "retry"  # transient (a 5xx, a malformed answer): ask again after a back-off
    FAIL = "fail"  # final: keep the partial, report the error


@dataclass(frozen=True)
class Decision:
    action: Action
    total: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class ContentRange:
    start: int | None  # None for the unsatisfied form "bytes */TOTAL"
    end: int | None
    total: int | None  # None for "bytes 0-9/*"


_CR_RE = re.compile(r"^bytes (?:([0-9]+)-([0-9]+)|\*)/([0-9]+|\*)$")  # ASCII digits only


def parse_content_range(value: str | None) -> ContentRange | None:
    """Parse a Content-Range header strictly (RFC 9110 14.4); None when it is not valid."""
    if value is None:
        return None
    m = _CR_RE.match(value.strip())
    if not m:
        return None
    start_s, end_s, total_s = m.groups()
    if any(len(s) > 18 for s in (start_s, end_s, total_s) if s):  # past MAX_LENGTH's digits
        return None
    total = None if total_s == "*" else int(total_s)
    if start_s is None:
        if total is None:
            return None  # "bytes */*" means nothing
        return ContentRange(None, None, total)
    start, end = int(start_s), int(end_s)
    if end < start or (total is not None and end >= total):
        return None
    return ContentRange(start, end, total)


# Bytes of the partial asked for again on every resume and compared before appending: they
# catch a resource that changed under validators that did not (ETags reused, mtime kept).
OVERLAP_BYTES = 64 * 1024


def is_strong_etag(etag: str | None) -> bool:
    return etag is not None and not etag.startswith("W/") and etag.startswith('"')


def trusted_validators(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The (ETag, Last-Modified) of a full response that a later If-Range may carry.

    RFC 9110 8.8.2.2 and 13.1.5: a Last-Modified date is strong only when the response's Date
    is at least one second later; a weak ETag (W/) never goes into If-Range. When Date is within
    a second of Last-Modified, nothing is trusted, the ETag included: common servers derive
    ETags from the modification second and the size, so a same-second rewrite keeps them."""
    etag = _header(headers, "ETag")
    last_modified = _header(headers, "Last-Modified")
    modified_at = http_time(last_modified)
    date = http_time(_header(headers, "Date"))
    if modified_at is not None and date is not None and date - modified_at < 1:
        return None, None
    strong_etag = etag if is_strong_etag(etag) else None
    strong_date = last_modified if modified_at is not None and date is not None else None
    return strong_etag, strong_date


def validator_for(etag: str | None, last_modified: str | None) -> str | None:
    """What If-Range may carry: a strong ETag, else a strong Last-Modified (RFC 9110 13.1.5)."""
    if is_strong_etag(etag):
        return etag
    if last_modified:
        return last_modified
    return None


def resume_start(offset: int) -> int:
    """Where a resume asks to start: the overlap before `offset` (0 for a smaller partial)."""
    return max(0, offset - OVERLAP_BYTES)


def request_headers(offset: int, etag: str | None, last_modified: str | None) -> dict[str, str]:
    """Headers for a (re)start with `offset` bytes in hand. Without a validator we never ask
    for a range; with one we ask from `resume_start(offset)`, to compare the overlap."""
    headers = {"Accept-Encoding": "identity"}
    validator = validator_for(etag, last_modified)
    if offset > 0 and validator is not None:
        headers["Range"] = f"bytes={resume_start(offset)}-"
        headers["If-Range"] = validator
    return headers


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def content_length(headers: Mapping[str, str]) -> int | None:
    """None when absent; raises MalformedHeader when it is not a number."""
    return parse_content_length(_header(headers, "Content-Length"))


def decide(
    status: int,
    headers: Mapping[str, str],
    offset: int,
    known_total: int | None,
    have: int | None = None,
    ranged: bool | None = None,
) -> Decision:
    """What to do with a response to a request that asked for bytes from `offset` on.

    `ranged` says whether a Range was sent (default: `offset` > 0); `offset` is its start.
    `known_total` is the total we saw before, if any; `have` the partial's length (default
    `offset`), which a 416 compares with the total. APPEND means: after checking the bytes
    from `offset` to `have` against the partial, write the rest at `have`.
    """
    have = offset if have is None else have
    ranged = offset > 0 if ranged is None else ranged
    if status == 200:
        try:
            total = content_length(headers)
        except MalformedHeader as exc:  # a server fault, as a 5xx is: ask again later
            return Decision(Action.RETRY, known_total, str(exc))
        if not ranged:
            return Decision(Action.APPEND, total, "")
        return Decision(
            Action.RESTART,
            total,
            "server sent the whole file (range ignored or file changed): restarting from 0",
        )
    if status == 206:
        cr = parse_content_range(_header(headers, "Content-Range"))
        if not ranged:
            if cr is not None and cr.start == 0 and cr.total is not None and cr.end == cr.total - 1:
                return Decision(Action.APPEND, cr.total, "")
            return Decision(Action.REFETCH, None, "unexpected partial answer to a full request")
        if cr is None or cr.start is None:
            return Decision(Action.REFETCH, None, "invalid Content-Range: restarting from 0")
        if cr.start != offset:
            return Decision(
                Action.REFETCH,
                None,
                f"server answered from byte {cr.start}, not {offset}: restarting from 0",
            )
        if (
            known_total is not None
            and cr.total is not None
            and cr.total != known_total
            and cr.total != have
        ):
            # (A total equal to what we hold, under a matching If-Range, says an earlier answer
            # lied about the length or ended short: the overlap check still has the last word.)
            return Decision(Action.REFETCH, None, "file size changed on the server: restarting")
        if cr.total is not None and cr.end != cr.total - 1:
            # A range that stops short: we asked for the rest, so this is not it.
            return Decision(Action.REFETCH, None, "server sent a truncated range: restarting")
        return Decision(Action.APPEND, cr.total if cr.total is not None else known_total, "")
    if status == 416:
        cr = parse_content_range(_header(headers, "Content-Range"))
        total = cr.total if cr is not None else None
        # If-Range guarantees the server compared validators first (a mismatch yields a 200),
        # so a 416 whose total equals our offset says the partial is the whole file, even if
        # an earlier answer announced a different length (a short body or a lie).
        if total is not None and have == total:
            return Decision(Action.COMPLETE, total, "")
        return Decision(Action.REFETCH, None, "range not satisfiable: restarting from 0")
    if status in RETRYABLE_STATUSES:
        return Decision(Action.RETRY, known_total, f"HTTP {status}")
    return Decision(Action.FAIL, known_total, f"HTTP {status}")


# -- one segment of a file fetched over several connections --------------------------------
def segment_headers(start: int, end: int, etag: str | None, last_modified: str | None) -> dict:
    """Headers asking for bytes [start, end] (inclusive) of a resource known by its validator:
    a segment never asks without If-Range (a changed resource must answer 200, not a splice)."""
    validator = validator_for(etag, last_modified)
    if validator is None:
        raise ValueError("a segment needs a validator")
    return {
        "Accept-Encoding": "identity",
        "Range": f"bytes={start}-{end}",
        "If-Range": validator,
    }


def decide_segment(
    status: int, headers: Mapping[str, str], start: int, end: int, total: int
) -> Decision:
    """What to do with the answer to `segment_headers(start, end, ...)` for a resource of
    `total` bytes: APPEND (206 from exactly `start`, the same total, no encoding), RESTART
    (200: If-Range did not match, the resource changed; or ranges are no longer served),
    REFETCH (any other answer that cannot be trusted for this range), RETRY, FAIL."""
    if status == 206:
        cr = parse_content_range(_header(headers, "Content-Range"))
        if cr is None or cr.start is None or cr.end is None:
            return Decision(Action.REFETCH, None, "invalid Content-Range: restarting from 0")
        if cr.start != start or cr.end > end:
            return Decision(
                Action.REFETCH,
                None,
                f"server answered bytes {cr.start}-{cr.end}, not {start}-{end}: restarting",
            )
        if cr.total != total:
            return Decision(Action.REFETCH, None, "file size changed on the server: restarting")
        encoding = (_header(headers, "Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":
            return Decision(Action.REFETCH, None, "server encoded a range: restarting")
        return Decision(Action.APPEND, total, "")
    if status == 200:
        return Decision(
            Action.RESTART,
            None,
            "server sent the whole file to a segment's request (the file changed, or it no "
            "longer serves ranges): restarting from 0",
        )
    if status == 416:
        return Decision(Action.REFETCH, None, "range not satisfiable: restarting from 0")
    if status in RETRYABLE_STATUSES:
        return Decision(Action.RETRY, total, f"HTTP {status}")
    return Decision(Action.FAIL, total, f"HTTP {status}")
