"""File names stay safe on Linux, macOS and Windows whatever the catalog says."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halftunes_cli.naming import (
    _WINDOWS_RESERVED,
    MAX_NAME_BYTES,
    safe_filename,
    track_filename,
    url_filename,
)

BAD_CHARS = set('<>:"/\\|?*') | {chr(c) for c in range(32)} | {"\x7f"}


@pytest.mark.parametrize(
    "artist, title, url, expected",
    [
        (
            "Jack Johnson",
            "Better Together",
            "https://x/p/a.m4a",
            "Jack Johnson - Better Together.m4a",
        ),
        ("AC/DC", "Back\\Slash", "https://x/p/a.m4a", "AC_DC - Back_Slash.m4a"),
        ("Unknown", "../../etc/passwd", "https://x/p/a.m4a", "Unknown - __.._etc_passwd.m4a"),
        ("", "CON", "https://x/p/a.m4a", "_CON.m4a"),
        ("", "nul.txt", "https://x/p/a.mp3", "_nul.txt.mp3"),
        ("..", "..", "https://x/p/a.m4a", "_ - _.m4a"),
        ("Dots...", "Trailing dots...", "https://x/p/a.m4a", "Dots - Trailing dots.m4a"),
        ("王菲", "红豆", "https://x/p/a.m4a", "王菲 - 红豆.m4a"),
        ("X", "evil\u202egpj.exe", "https://x/p/a.m4a", "X - evil gpj.exe.m4a"),
        ("X", "a", "https://x/p/..%2F..%2Fescape.m4a", "X - a.m4a"),
        ("X", "a", "https://x/p/noext", "X - a.m4a"),
    ],
)
def test_track_filename(artist, title, url, expected):
    assert track_filename(artist, title, url) == expected


@pytest.mark.parametrize(
    "stem",
    [
        "L" * 300,
        "é" * 300,
        "🎸" * 100,
        "a\x00b\x1fc",
        " ..hidden",
        "...",
        "",
        "CON",
        "com1",
        "Bell\x07Tab\tNew\nLine",
        "a" * 199 + "é",
    ],
)
def test_safe_filename_invariants(stem):
    name = safe_filename(stem, ".m4a", " (123)")
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert not BAD_CHARS & set(name)
    assert name.endswith(" (123).m4a")
    assert not name.startswith(".")
    base = name.split(".")[0].split(" ")[0].upper()
    assert base not in {"CON", "PRN", "AUX", "NUL", "COM1", "LPT1"}
    assert name not in (".", "..")


def test_url_filename():
    assert url_filename("https://h/a/b/song.mp3?x=1") == "song.mp3"
    assert url_filename("https://h/a/..%2F..%2Fx") == "x"
    assert url_filename("https://h/a/..") == "_"
    assert url_filename("https://host.example/") == "host.example"
    assert url_filename("https://h/a/b.mp3", suffix=" (u1)") == "b (u1).mp3"


# -- properties (hypothesis): whatever the metadata, the name is safe ------------------------


FORBIDDEN = set('<>:"/\\|?*') | {chr(c) for c in range(32)} | {"\x7f"}


@settings(max_examples=300, deadline=None)
@given(artist=st.text(), title=st.text(), suffix=st.sampled_from(["", " (1234567)"]))
def test_any_track_name_is_safe_everywhere(artist, title, suffix):
    name = track_filename(artist, title, "https://a/p.m4a", suffix)
    assert name and len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert not FORBIDDEN & set(name)
    assert not name.startswith(".") and not name.endswith((".", " "))
    assert name not in (".", "..")
    assert name.split(".")[0].strip().upper() not in _WINDOWS_RESERVED
    assert name.endswith(suffix + ".m4a")


@settings(max_examples=200, deadline=None)
@given(url=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=300))
def test_any_url_gives_a_safe_name(url):
    name = url_filename("https://host.example/" + url)
    assert name and len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert not FORBIDDEN & set(name) and not name.startswith(".")
