"""Tags and artwork in a finished preview (`--embed-metadata`, `--embed-artwork`), written the
way a file is made: into a copy, made durable, renamed over the file. MP4 atoms for .m4a,
.m4v, .mp4 and .m4b, ID3v2 for .mp3 (mutagen, the `tags` extra)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

from .errors import HalftunesError, UsageError

MP4_SUFFIXES = (".m4a", ".m4v", ".mp4", ".m4b")
ARTWORK_SIZE = 600


class TagError(HalftunesError):
    """The file was downloaded whole, but its tags could not be written (it is kept)."""


def check_available() -> None:
    """Say at once (exit 2), before any download, when mutagen is not installed."""
    try:
        import mutagen  # noqa: F401 - only asked whether it is there
    except ImportError:
        raise UsageError(
            "--embed-metadata and --embed-artwork need mutagen",
            "install the tags extra: pip install 'halftunes[tags]'",
        ) from None


def artwork_url(url: str, size: int = ARTWORK_SIZE) -> str:
    """Apple's artwork address at another size: `.../100x100bb.jpg` -> `.../600x600bb.jpg`."""
    return re.sub(r"/\d+x\d+(bb)?\.(jpg|png)$", f"/{size}x{size}bb.jpg", url)


def embed(
    path: Path, track: dict[str, Any], artwork: bytes | None, *, metadata: bool, durable: bool
) -> int:
    """Write the track's details (and `artwork`, a JPEG or PNG) into the file at `path`;
    returns its new size. The file is replaced whole or not at all."""
    suffix = path.suffix.lower()
    if suffix not in (*MP4_SUFFIXES, ".mp3"):
        raise TagError(f"{path.name}: halftunes tags .m4a, .m4v, .mp4 and .mp3 files only")
    copy = path.with_name(f".{path.name}.tagging-{os.getpid()}")
    try:
        shutil.copyfile(path, copy)
        if suffix == ".mp3":
            _id3(copy, track, artwork, metadata)
        else:
            _mp4(copy, track, artwork, metadata)
        if durable:
            with open(copy, "rb") as f:
                os.fsync(f.fileno())
        size = copy.stat().st_size
        os.replace(copy, path)
        return size
    except OSError as exc:
        raise TagError(f"{path.name}: cannot write its tags: {exc.strerror or exc}") from exc
    except Exception as exc:
        raise TagError(f"{path.name}: cannot write its tags: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            copy.unlink()


def _number(track: dict[str, Any], key: str) -> int:
    value = track.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _text(track: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = track.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _mp4(path: Path, track: dict[str, Any], artwork: bytes | None, metadata: bool) -> None:
    from mutagen.mp4 import MP4, MP4Cover

    audio = MP4(path)
    if audio.tags is None:
        audio.add_tags()
    tags = audio.tags
    assert tags is not None
    if metadata:
        for key, value in (
            ("\xa9nam", _text(track, "trackName", "collectionName")),
            ("\xa9ART", _text(track, "artistName")),
            ("\xa9alb", _text(track, "collectionName")),
            ("aART", _text(track, "collectionArtistName", "artistName")),
            ("\xa9gen", _text(track, "primaryGenreName")),
            ("\xa9day", _text(track, "releaseDate")),
        ):
            if value is not None:
                tags[key] = [value]
        if _number(track, "trackNumber"):
            tags["trkn"] = [(_number(track, "trackNumber"), _number(track, "trackCount"))]
        if _number(track, "discNumber"):
            tags["disk"] = [(_number(track, "discNumber"), _number(track, "discCount"))]
        for key, field in (("cnID", "trackId"), ("plID", "collectionId"), ("atID", "artistId")):
            if _number(track, field):
                tags[key] = [_number(track, field)]
    if artwork is not None:
        kind = MP4Cover.FORMAT_PNG if artwork.startswith(b"\x89PNG") else MP4Cover.FORMAT_JPEG
        tags["covr"] = [MP4Cover(artwork, imageformat=kind)]
    audio.save()


def _id3(path: Path, track: dict[str, Any], artwork: bytes | None, metadata: bool) -> None:
    from mutagen.id3 import (
        APIC,
        ID3,
        TALB,
        TCON,
        TDRC,
        TIT2,
        TPE1,
        TPE2,
        TPOS,
        TRCK,
        TXXX,
        ID3NoHeaderError,
    )

    try:
        tags = ID3(path)
    except ID3NoHeaderError:
        tags = ID3()
    if metadata:
        for frame, value in (
            (TIT2, _text(track, "trackName", "collectionName")),
            (TPE1, _text(track, "artistName")),
            (TALB, _text(track, "collectionName")),
            (TPE2, _text(track, "collectionArtistName", "artistName")),
            (TCON, _text(track, "primaryGenreName")),
            (TDRC, (_text(track, "releaseDate") or "")[:10] or None),
        ):
            if value is not None:
                tags.add(frame(encoding=3, text=[value]))
        for position, number, count in (
            (TRCK, "trackNumber", "trackCount"),
            (TPOS, "discNumber", "discCount"),
        ):
            if _number(track, number):
                total = f"/{_number(track, count)}" if _number(track, count) else ""
                tags.add(position(encoding=3, text=[f"{_number(track, number)}{total}"]))
        for field in ("trackId", "collectionId", "artistId"):
            if _number(track, field):
                tags.add(TXXX(encoding=3, desc=f"iTunes {field}", text=[str(track[field])]))
    if artwork is not None:
        mime = "image/png" if artwork.startswith(b"\x89PNG") else "image/jpeg"
        tags.add(APIC(encoding=3, mime=mime, type=3, desc="Cover", data=artwork))
    tags.save(path)
