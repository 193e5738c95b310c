"""The resume decision as a table: (status, headers, offset, known total) -> action."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from halftunes_cli.headers import (
    MAX_LENGTH,
    MalformedHeader,
    parse_content_length,
    parse_decimal,
    parse_uint,
)
from halftunes_cli.itunes import Track
from halftunes_cli.ranges import (
    Action,
    ContentRange,
    decide,
    parse_content_range,
    request_headers,
)
from halftunes_cli.retry import parse_retry_after


@pytest.mark.parametrize(
    "value, expected",
    [
        ("bytes 0-9/10", ContentRange(0, 9, 10)),
        ("bytes 100-199/*", ContentRange(100, 199, None)),
        ("bytes */500", ContentRange(None, None, 500)),
        ("bytes 5-4/10", None),  # end before start
        ("bytes 0-10/10", None),  # end past total
        ("bytes */*", None),
        ("bytes=0-9/10", None),
        ("items 0-9/10", None),
        ("bytes 0-9", None),
        ("", None),
        (None, None),
        ("bytes -1-9/10", None),
    ],
)
def test_parse_content_range(value, expected):
    assert parse_content_range(value) == expected


@pytest.mark.parametrize(
    "offset, etag, last_modified, expected",
    [
        (0, '"abc"', None, {"Accept-Encoding": "identity"}),
        # the overlap: 64 KiB before the offset, or the whole of a smaller partial
        (
            100,
            '"abc"',
            "Wed, 10 Nov 2004 11:33:20 GMT",
            {"Accept-Encoding": "identity", "Range": "bytes=0-", "If-Range": '"abc"'},
        ),
        (
            100_000,
            '"abc"',
            None,
            {"Accept-Encoding": "identity", "Range": "bytes=34464-", "If-Range": '"abc"'},
        ),
        (
            100,
            'W/"weak"',
            "Wed, 10 Nov 2004 11:33:20 GMT",
            {
                "Accept-Encoding": "identity",
                "Range": "bytes=0-",
                "If-Range": "Wed, 10 Nov 2004 11:33:20 GMT",
            },
        ),
        (100, 'W/"weak"', None, {"Accept-Encoding": "identity"}),  # never append blindly
        (100, None, None, {"Accept-Encoding": "identity"}),
    ],
)
def test_request_headers(offset, etag, last_modified, expected):
    assert request_headers(offset, etag, last_modified) == expected


CR = "Content-Range"
CL = "Content-Length"


@pytest.mark.parametrize(
    "status, headers, offset, known_total, action, total",
    [
        (200, {CL: "1000"}, 0, None, Action.APPEND, 1000),
        (200, {}, 0, None, Action.APPEND, None),
        (200, {CL: "1000"}, 400, 1000, Action.RESTART, 1000),  # range ignored / file changed
        (206, {CR: "bytes 400-999/1000"}, 400, 1000, Action.APPEND, 1000),
        (206, {CR: "bytes 400-999/1000"}, 400, None, Action.APPEND, 1000),
        (206, {CR: "bytes 300-999/1000"}, 400, 1000, Action.REFETCH, None),  # wrong start
        (206, {CR: "bytes 400-1199/1200"}, 400, 1000, Action.REFETCH, None),  # other total
        (206, {CR: "bytes 400-499/1000"}, 400, 1000, Action.REFETCH, None),  # stops short
        (206, {}, 400, 1000, Action.REFETCH, None),  # no Content-Range
        (206, {CR: "garbage"}, 400, 1000, Action.REFETCH, None),
        (206, {CR: "bytes 0-999/1000"}, 0, None, Action.APPEND, 1000),
        (416, {CR: "bytes */1000"}, 1000, 1000, Action.COMPLETE, 1000),
        (416, {CR: "bytes */1000"}, 1000, None, Action.COMPLETE, 1000),
        (416, {CR: "bytes */1200"}, 1000, 1000, Action.REFETCH, None),
        (416, {CR: "bytes */1000"}, 1000, 10**10, Action.COMPLETE, 1000),  # after a length lie
        (416, {}, 1000, 1000, Action.REFETCH, None),
        (503, {}, 400, 1000, Action.RETRY, 1000),
        (500, {}, 400, 1000, Action.RETRY, 1000),
        (429, {}, 400, 1000, Action.RETRY, 1000),
        (408, {}, 0, None, Action.RETRY, None),
        (404, {}, 400, 1000, Action.FAIL, 1000),
        (403, {}, 0, None, Action.FAIL, None),
        (410, {}, 0, None, Action.FAIL, None),
    ],
)
def test_decide(status, headers, offset, known_total, action, total):
    decision = decide(status, headers, offset, known_total)
    assert decision.action is action
    assert decision.total == total


def test_restart_and_refetch_explain_themselves():
    assert "restarting" in decide(200, {CL: "5"}, 3, 5).reason
    assert "restarting" in decide(206, {CR: "bytes 1-4/5"}, 3, 5).reason


@pytest.mark.parametrize(
    "value, expected",
    [("3", 3.0), ("0", 0.0), (None, None), ("soon", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)
def test_retry_after(value, expected):
    assert parse_retry_after(value, now=1e10) == expected


# -- properties (hypothesis): the parser accepts exactly the valid forms ---------------------


@given(start=st.integers(0, 2**53), length=st.integers(1, 2**40), extra=st.integers(0, 2**40))
def test_valid_content_ranges_round_trip(start, length, extra):
    end = start + length - 1
    total = end + 1 + extra
    assert parse_content_range(f"bytes {start}-{end}/{total}") == ContentRange(start, end, total)
    assert parse_content_range(f"bytes {start}-{end}/*") == ContentRange(start, end, None)


@given(start=st.integers(0, 2**40), back=st.integers(1, 2**20))
def test_an_end_before_the_start_or_past_the_total_is_refused(start, back):
    assert parse_content_range(f"bytes {start + back}-{start}/{start + back + 1}") is None
    assert parse_content_range(f"bytes {start}-{start + back}/{start + back}") is None


@given(st.text())
def test_the_parser_never_raises(text):
    result = parse_content_range(text)
    assert result is None or isinstance(result, ContentRange)


# -- numbers from outside: ASCII digits only, whatever else Unicode calls a digit ------------

ASCII_DIGITS = set("0123456789")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0", 0),
        (" 42\t", 42),
        ("007", 7),
        ("²", None),
        ("¹", None),
        ("١٢", None),
        ("٣", None),
        ("-1", None),
        ("+1", None),
        ("1.0", None),
        ("1 2", None),
        ("", None),
        ("1_000", None),
    ],
)
def test_parse_uint_takes_ascii_digits_only(text, expected):
    assert parse_uint(text) == expected


@given(st.text())
def test_parse_uint_never_raises_and_never_reads_another_script(text):
    value = parse_uint(text)
    stripped = text.strip(" \t")
    if value is None:
        assert not stripped or not set(stripped) <= ASCII_DIGITS
    else:
        assert set(stripped) <= ASCII_DIGITS and value == int(stripped)


@given(st.text())
def test_parse_decimal_never_raises(text):
    value = parse_decimal(text)
    assert value is None or (isinstance(value, float) and text.strip(" \t").isascii())


@given(st.text())
def test_content_length_is_a_number_or_malformed(text):
    try:
        value = parse_content_length(text)
    except MalformedHeader:
        return
    assert value is not None and 0 <= value <= MAX_LENGTH


@given(st.text())
def test_retry_after_never_raises(text):
    value = parse_retry_after(text, now=1e9)
    assert value is None or value >= 0


@given(st.text(), st.sampled_from([200, 206, 416, 503]))
def test_decide_never_raises_whatever_the_headers(text, status):
    headers = {CL: text, CR: text}
    assert decide(status, headers, 100, None, ranged=True).action in set(Action)
    assert decide(status, headers, 0, None, ranged=False).action in set(Action)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "trackId",
                "collectionId",
                "artistId",
                "wrapperType",
                "trackTimeMillis",
                "previewUrl",
                "collectionName",
                "trackExplicitness",
                "kind",
            ]
        ),
        st.one_of(
            st.text(),
            st.integers(),
            st.floats(),
            st.booleans(),
            st.none(),
            st.lists(st.integers(), max_size=2),
        ),
    )
)
def test_any_api_object_becomes_a_track(item):
    track = Track.from_api(item)
    assert track.trackId is None or (isinstance(track.trackId, int) and track.trackId >= 0)
    assert track.trackTimeMillis is None or track.trackTimeMillis >= 0
    assert track.previewUrl is None or isinstance(track.previewUrl, str)
