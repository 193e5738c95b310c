"""Real iTunes answer shapes, end to end: music videos, podcast episodes, audiobooks, albums,
artists, editions, quoted ids, float durations, raw UTF-8, redirects before a preview."""

from __future__ import annotations

from pathlib import Path

from conftest import sha256_file

VIDEO, EPISODE, BOOK = 1440000000001, 1000000000002, 1234567890123
EXPLICIT, CLEAN, STANDARD, QUOTED = 1500000000011, 1500000000012, 1500000000013, 1500000000014
ALBUM, ARTIST = 1469577723, 909253


def test_search_json_keeps_every_object_apple_returned(env):
    items = env.json("search", "shapes", "--limit", "50")
    kinds = {i.get("wrapperType") for i in items}
    assert {"track", "podcastEpisode", "audiobook", "collection", "artist"} <= kinds
    assert any("trackId" not in i for i in items)  # audiobook, album, artist
    assert len(items) == 9


def test_a_music_video_behind_redirects_keeps_its_extension(env):
    result = env.run("download", str(VIDEO))
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path.name == "The Shapes - Shapes in Motion (Video).m4v"
    assert sha256_file(path) == env.expected_sha(VIDEO)
    hops = [e["path"] for e in env.server.state.log if "1440000000001" in e["path"]]
    assert hops == [
        "/r/2/previews/1440000000001/video.m4v",
        "/r/1/previews/1440000000001/video.m4v",
        "/previews/1440000000001/video.m4v",
    ]


def test_a_podcast_episode_is_named_after_its_show(env):
    [record] = env.json("download", str(EPISODE))
    assert Path(record["path"]).name == "Shapes Weekly - Finneas.mp3"
    assert record["title"] == "Finneas · Shapes Weekly"
    assert sha256_file(record["path"]) == env.expected_sha(EPISODE)


def test_an_audiobook_downloads_by_its_collection_id(env):
    [record] = env.json("download", str(BOOK))
    assert record["id"] == str(BOOK) and record["status"] == "completed"
    assert Path(record["path"]).name == "Jane Reader - The Long Walk of Shapes (Unabridged).m4a"
    assert sha256_file(record["path"]) == env.expected_sha(BOOK)


def test_albums_and_artists_say_what_they_are(env):
    result = env.run("download", str(ALBUM), str(ARTIST), str(STANDARD))
    assert result.returncode == 2
    assert f"{ALBUM} is an album (Shapes (Deluxe)), not a track" in result.stderr
    assert f"{ARTIST} is an artist (The Shapes), not a track" in result.stderr
    assert "lists its songs" in result.stderr and "Traceback" not in result.stderr
    assert env.record(STANDARD)["status"] == "completed"  # the good id still downloads


def test_editions_are_told_apart_and_quoted_ids_and_float_times_work(env):
    result = env.run("search", "loud shapes")
    lines = [line.split("\t") for line in result.stdout.strip().split("\n")]
    by_id = {int(f[0]): f for f in lines}
    assert set(by_id) == {EXPLICIT, CLEAN, STANDARD}
    result = env.run("download", str(QUOTED), str(EXPLICIT), str(CLEAN))
    assert result.returncode == 0, result.stderr
    names = [Path(p).name for p in result.stdout.strip().split("\n")]
    assert names[0] == "The Shapes - Quoted Id Shapes.m4a"
    assert names[1] == "The Shapes - Loud Shapes.m4a"
    assert names[2] == f"The Shapes - Loud Shapes ({CLEAN}).m4a"  # never one file for two
    items = env.json("search", "quoted id shapes")
    assert items[0]["trackId"] == str(QUOTED) and items[0]["trackTimeMillis"] == "199999.5"


def test_raw_utf8_and_leading_blank_lines_are_read(env):
    import urllib.request

    with urllib.request.urlopen(env.server.url + "/search?term=%E7%8E%8B%E8%8F%B2") as answer:
        body = answer.read()
    assert body.startswith(b"\n\n\n{") and "红豆".encode() in body  # as Apple sends it
    items = env.json("search", "王菲")
    assert items and all(i["artistName"] == "王菲" for i in items)
    assert "红豆" in {i["trackName"] for i in items}
