"""What to download and under which name: targets for tracks and URLs, and where -P / -o put
them. Shared by the service (`download`) and catalog-scale jobs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .itunes import Track
from .naming import extension_from_url, fill_template, track_filename, url_filename
from .records import Target, target_for_url


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
    label = f"{maker} - {title}" if maker else title
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


def url_target(url: str, output: OutputSpec | None = None) -> Target:
    target = target_for_url(url)
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
