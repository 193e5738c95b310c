"""What to download and where: `Target` (a track's preview or a URL, with how to name it),
the one factory each for tracks and URLs, where -P / -o put them, and the download folder's
check. Shared by the service (`download`), the background session and catalog-scale jobs;
records take targets to create their rows."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import DiskError, UsageError
from .itunes import Track
from .naming import extension_from_url, fill_template, safe_filename, track_filename, url_filename


@dataclass
class Target:
    """Something to download that may not have a record yet: a track's preview or a URL."""

    id: str
    url: str
    title: str
    namer: Callable[[str], str]  # suffix -> safe file name

    @property
    def filename(self) -> str:
        return self.namer("")

    def place(self, folder: Path, suffix: str = "") -> Path:
        """Where this target's file goes in `folder` (absolute): its name, or with `suffix`
        before the extension; normalised, so `-o ../x` reads as the folder it names."""
        return Path(os.path.normpath(folder / self.namer(suffix)))


def is_url_record_id(record_id: str) -> bool:
    """A URL download's id (`u` and hex digits); a track's is a number."""
    return record_id.startswith("u")


def url_record_id(url: str) -> str:
    """A URL download's id: stable, short, and never a number (numbers are track ids)."""
    return "u" + hashlib.sha256(url.encode()).hexdigest()[:10]


@dataclass
class OutputSpec:
    """Where files go: an absolute folder, and a -o name or template relative to it (or
    absolute)."""

    folder: Path
    template: str | None = None

    def apply(self, target: Target, fields: dict[str, str]) -> Target:
        if self.template is not None:
            template = self.template
            target.namer = lambda suffix: fill_template(template, fields, suffix)
        return target


def target_for_track(track: Track, output: OutputSpec | None = None) -> Target:
    """A downloadable result object (song, music video, podcast episode, audiobook) as a
    target; anything else is bad input that says what it is."""
    ident = str(track.trackId)
    title = track.trackName or "?"
    if not track.is_downloadable:
        if track.wrapperType in ("collection", "artist", "podcast", "software"):
            raise UsageError(
                f"{ident} is {track.noun} ({title}), not a track",
                f"`halftunes search {title!r}` lists its songs",
            )
        raise UsageError(
            f"track {ident} ({track.artist_or_show or '?'} - {title}) has no preview to download"
        )
    preview = track.previewUrl
    assert preview is not None
    maker = track.artist_or_show
    label = f"{title} · {maker}" if maker else title  # the title first: the artist gives way
    target = Target(
        ident, preview, label, lambda suffix: track_filename(maker, title, preview, suffix)
    )
    if output is None:
        return target
    album = track.collectionName or ""
    ext = (extension_from_url(preview) or ".m4a").lstrip(".")
    fields = {
        "artist": maker,
        "title": title,
        "album": album,
        "collection": album,
        "id": ident,
        "ext": ext,
    }
    return output.apply(target, fields)


def url_target(
    url: str,
    output: OutputSpec | None = None,
    *,
    record_id: str | None = None,
    filename: str | None = None,
) -> Target:
    """A URL download, named after the URL's last path segment (or `filename`), placed by
    `output` (-P / -o) when given."""
    if filename:
        stem, ext = os.path.splitext(filename)
        target = Target(
            record_id or url_record_id(url),
            url,
            url,
            lambda suffix: safe_filename(stem, ext, suffix),
        )
    else:
        target = Target(
            record_id or url_record_id(url), url, url, lambda suffix: url_filename(url, suffix)
        )
    if output is None:
        return target
    stem, ext = os.path.splitext(url_filename(url))
    fields = {
        "artist": "",
        "title": stem,
        "album": "",
        "collection": "",
        "id": target.id,
        "ext": ext.lstrip("."),
    }
    return output.apply(target, fields)


def check_download_dir(path: Path) -> Path:
    """Create a missing download dir (as wget -P does); refuse one we cannot write a file in
    (found by writing one: permissions alone do not tell, e.g. /proc for root)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DiskError(f"download dir {path} exists and is not a directory") from None
    except OSError as exc:
        raise DiskError(
            f"cannot create download dir {path}: {exc.strerror}",
            "choose another folder with -P DIR",
        ) from exc
    if not path.is_dir():
        raise DiskError(f"download dir {path} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".halftunes-probe-", dir=path)
    except OSError as exc:
        raise DiskError(
            f"download dir {path} is not writable ({exc.strerror})",
            "choose another folder with -P DIR",
        ) from exc
    os.close(fd)
    os.unlink(probe)
    return path
