"""--embed-metadata and --embed-artwork: the track's details and its 600x600 artwork in the
file (MP4 atoms, ID3 for .mp3), read back with mutagen; without them the file stays the
server's, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import sha256_file

from halftunes_cli.tagging import artwork_url
from halftunes_cli.testing.catalog import artwork_bytes

mutagen = pytest.importorskip("mutagen")

T1 = 1000001  # Jack Johnson - Better Together (an .m4a preview)


def mp3_track(env) -> int:
    return next(t for t, v in env.server.state.tracks.items() if v["trackName"] == "An MP3 Song")


def test_tags_and_artwork_in_an_m4a(env):
    from mutagen.mp4 import MP4

    env.server.state.mp4_tracks.add(T1)
    env.track(T1, size=120_000)
    result = env.run("download", str(T1), "--embed-metadata", "--embed-artwork")
    assert result.returncode == 0, result.stderr
    path = result.stdout.strip()
    tags = MP4(path).tags
    track = env.server.state.tracks[T1]
    assert tags["\xa9nam"] == [track["trackName"]] and tags["\xa9ART"] == ["Jack Johnson"]
    assert tags["\xa9alb"] == [track["collectionName"]] and tags["\xa9gen"] == ["Pop"]
    assert tags["trkn"][0][0] == track["trackNumber"] and tags["\xa9day"] == [track["releaseDate"]]
    assert tags["cnID"] == [T1] and tags["plID"] == [track["collectionId"]]
    assert bytes(tags["covr"][0]) == artwork_bytes(T1, 600, 600)  # 100x100 asked as 600x600
    record = env.record(str(T1))
    assert record["bytes_total"] == record["bytes_received"] == Path(path).stat().st_size
    assert sha256_file(path) != env.expected_sha(T1)  # (tagged: not the server's bytes)
    art = env.server.state.requests_for(f"/art/{T1}/")
    assert [e["path"] for e in art] == [f"/art/{T1}/600x600bb.jpg"]


def test_an_mp3_gets_id3(env):
    from mutagen.id3 import ID3

    tid = mp3_track(env)
    env.track(tid, size=50_000)
    result = env.run("download", str(tid), "--embed-metadata")
    assert result.returncode == 0, result.stderr
    tags = ID3(result.stdout.strip())
    assert str(tags["TIT2"]) == "An MP3 Song" and str(tags["TPE1"]) == "Mp3 Band"
    assert str(tags["TXXX:iTunes trackId"]) == str(tid)
    assert "APIC:Cover" not in tags  # (no --embed-artwork)
    assert env.server.state.requests_for("/art/") == []


def test_without_the_flags_the_file_is_the_servers(env):
    env.server.state.mp4_tracks.add(T1)
    env.track(T1, size=80_000)
    result = env.run("download", str(T1))
    assert result.returncode == 0, result.stderr
    assert sha256_file(result.stdout.strip()) == env.expected_sha(T1)


def test_a_file_that_cannot_be_tagged_is_kept_and_said(env):
    env.track(T1, size=60_000)  # plain bytes, no MP4 container
    result = env.run("download", str(T1), "--embed-metadata")
    assert result.returncode == 1 and "cannot write its tags" in result.stderr
    record = env.record(str(T1))
    assert record["status"] == "completed"
    assert sha256_file(record["path"]) == env.expected_sha(T1)  # untouched, whole
    assert not any(p.name.startswith(".") for p in env.download_dir.iterdir())  # no copy left


def test_the_worker_tags_what_its_command_asked(env):
    from mutagen.mp4 import MP4

    env.server.state.mp4_tracks.add(T1)
    env.track(T1, size=90_000)
    assert env.run("download", "-b", str(T1), "--embed-artwork").returncode == 0
    assert env.run("wait", str(T1), timeout=30).returncode == 0

    def tagged():
        try:
            return "covr" in (MP4(env.record(str(T1))["path"]).tags or {})
        except (OSError, mutagen.MutagenError):  # (being replaced right now)
            return False

    env.wait_for(tagged, what="the worker's tags")
    assert "\xa9nam" not in MP4(env.record(str(T1))["path"]).tags  # artwork only


def test_artwork_addresses_are_asked_at_600():
    base = "https://is1-ssl.mzstatic.com/image/thumb/Music/v4/ab/cd/source"
    assert artwork_url(f"{base}/100x100bb.jpg") == f"{base}/600x600bb.jpg"
    assert artwork_url(f"{base}/30x30bb.png") == f"{base}/600x600bb.jpg"
    assert artwork_url("https://x/none.jpg") == "https://x/none.jpg"
