"""The iTunes Search API client: search, lookup, the `Track` model, caching and pacing.

It speaks HTTP through whatever `Fetcher` it is given (a `Session` is one), so it knows
nothing of downloads, and the session knows nothing of iTunes."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote_plus, urlencode

from .config import SessionConfiguration
from .errors import ApiError, OfflineMissError, RateLimitedError, TransferError, UsageError
from .headers import parse_decimal, parse_retry_after, parse_uint
from .retry import RetryLoop, RetryPolicy

# Apple documents roughly 20 calls a minute; a burst of 20 then one every 3 s.
RATE_CAPACITY = 20.0
RATE_PER_SECOND = 20.0 / 60.0
SEARCH_CACHE_SECONDS = 3600.0
RATE_RETRY_MAX_SECONDS = 10.0  # a rate limit that asks for longer is reported, not waited
RATE_LIMITED = RetryPolicy(retries=1)  # a rate limit with a short Retry-After: once more


def _as_id(value: Any) -> int | None:
    """An id as Apple sends it: a JSON number, or its digits quoted (ASCII only)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    return parse_uint(value)  # some answers quote their ids


MAX_MILLIS = 10**10  # 115 days: longer is no preview's track (a number gone wrong)


def _as_millis(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number: float | None = value
    else:
        number = parse_decimal(value)
    if number is None or not math.isfinite(number) or not 0 <= number <= MAX_MILLIS:
        return None
    return int(number)


def _as_text(value: Any) -> str | None:
    """A text field; anything else (a number, a list) where text belongs counts as absent."""
    return value if isinstance(value, str) else None


# What each wrapper type is, said to a user; the id a user types for each.
_NOUNS = {
    "collection": "an album",
    "artist": "an artist",
    "audiobook": "an audiobook",
    "podcast": "a podcast",
    "software": "an app",
}
_DOWNLOADABLE_WRAPPERS = ("track", "audiobook", "podcastEpisode")


@dataclass
class Track:
    """One result object of the Search or Lookup API: a song, music video, podcast episode,
    audiobook, movie, album or artist. `trackId` is the id a user types for it: the trackId,
    or for an audiobook (which has none) its collectionId; None when Apple sent neither."""

    trackId: int | None
    trackName: str
    artistName: str
    collectionName: str | None
    previewUrl: str | None
    trackTimeMillis: int | None
    wrapperType: str = "track"
    kind: str = "song"
    explicitness: str | None = None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> Track:
        wrapper = str(item.get("wrapperType") or "track")
        if wrapper == "artist":
            ident = _as_id(item.get("artistId"))
        elif wrapper in ("collection", "audiobook"):
            ident = _as_id(item.get("collectionId"))
        else:
            ident = _as_id(item.get("trackId")) or _as_id(item.get("collectionId"))
        title = item.get("trackName") or item.get("collectionName") or item.get("artistName")
        return cls(
            trackId=ident,
            trackName=str(title or ""),
            artistName=str(item.get("artistName") or ""),
            collectionName=_as_text(item.get("collectionName")),
            previewUrl=_as_text(item.get("previewUrl")) or None,
            trackTimeMillis=_as_millis(item.get("trackTimeMillis")),
            wrapperType=wrapper,
            kind=str(item.get("kind") or item.get("collectionType") or wrapper),
            explicitness=_as_text(item.get("trackExplicitness"))
            or _as_text(item.get("collectionExplicitness")),
            raw=item,
        )

    @property
    def has_preview(self) -> bool:
        return bool(self.previewUrl)

    @property
    def is_downloadable(self) -> bool:
        return self.wrapperType in _DOWNLOADABLE_WRAPPERS and self.has_preview

    @property
    def noun(self) -> str:
        """What it is, for a message: 'an album', 'an artist', 'a song', ..."""
        if self.wrapperType in _NOUNS:
            return _NOUNS[self.wrapperType]
        kind = self.kind.replace("-", " ")
        return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"

    @property
    def explicit_mark(self) -> str:
        return {"explicit": "E", "cleaned": "clean"}.get(self.explicitness or "", "")

    @property
    def artist_or_show(self) -> str:
        """Who made it; a podcast episode without an artist is named after its show."""
        return self.artistName or (self.collectionName or "" if self.trackName else "")


def encode_term(term: str) -> str:
    """Apple's rule: UTF-8, percent-encoded, spaces as '+'; & + # / survive as %XX."""
    return quote_plus(term, safe="", encoding="utf-8")


class Cache(Protocol):
    """Answers and tracks kept between commands, and the shared pacing bucket (the store)."""

    def cache_get(self, key: str) -> tuple[str, float, float] | None: ...

    def cache_put(self, key: str, body: str, max_age: float) -> None: ...

    def put_tracks(self, api: str, tracks: list[tuple[str, dict[str, Any]]]) -> None: ...

    def take_tokens(self, name: str, capacity: float, per_second: float) -> float: ...


class Fetcher(Protocol):
    configuration: SessionConfiguration

    @property
    def cache(self) -> Cache | None: ...

    def fetch(
        self, url: str, *, retry_statuses: frozenset[int] | None = None, max_bytes: int = ...
    ) -> tuple[int, bytes, Any]: ...


class ITunesClient:
    def __init__(self, session: Fetcher, api_url: str | None = None):
        self.session = session
        self.notice: str | None = None  # e.g. "showing the answer cached at ..."
        self.api_url = (api_url or session.configuration.api_url).rstrip("/")

    @property
    def _store(self) -> Cache | None:
        return self.session.cache

    def search_url(self, term: str, limit: int, country: str, media: str, entity: str) -> str:
        query = urlencode({"limit": limit, "country": country, "media": media, "entity": entity})
        return f"{self.api_url}/search?term={encode_term(term)}&{query}"

    def search(
        self,
        term: str,
        limit: int = 25,
        country: str = "US",
        media: str = "music",
        entity: str = "song",
        offline: bool = False,
    ) -> list[Track]:
        term = term.strip()
        if not term:
            raise UsageError("search term is empty", 'try: halftunes search "jack johnson"')
        if len(term) > 1000:
            raise UsageError(f"search term is too long ({len(term)} characters, at most 1000)")
        if not 1 <= limit <= 200:
            raise UsageError(f"--limit must be between 1 and 200, not {limit}")
        url = self.search_url(term, limit, country.upper(), media, entity)
        tracks = self._get_tracks(url, offline=offline)
        self._remember(tracks)
        return tracks

    def lookup(self, ids: Sequence[int | str]) -> list[Track]:
        out: list[Track] = []
        for start in range(0, len(ids), 150):
            chunk = ",".join(str(i) for i in ids[start : start + 150])
            out += self._get_tracks(f"{self.api_url}/lookup?id={chunk}", cache=False)
        self._remember(out)
        return out

    def _remember(self, tracks: list[Track]) -> None:
        """Keep the objects by the id a user types, so `download ID` needs no lookup."""
        known = [(str(t.trackId), t.raw) for t in tracks if t.trackId is not None]
        if self._store is not None and known:
            self._store.put_tracks(self.api_url, known)

    # -- transport ---------------------------------------------------------------------------
    def _get_tracks(self, url: str, offline: bool = False, cache: bool = True) -> list[Track]:
        """The answer's result objects as tracks. An answer is parsed whole before it is
        cached: one that cannot be parsed is never kept."""
        policy = self.session.configuration.cache_policy
        if offline:
            policy = "return-cache-dont-load"
        store = self._store if cache else None
        key = "GET " + url
        hit = store.cache_get(key) if store is not None else None
        if hit is not None and policy != "reload-ignoring-cache":
            fresh = (
                policy in ("return-cache-else-load", "return-cache-dont-load")
                or time.time() - hit[1] < hit[2]
            )
            if fresh:
                return self._parse(hit[0].encode())
        if policy == "return-cache-dont-load":
            raise OfflineMissError(
                "no cached answer for this search (--offline)",
                "run the same search once while online",
            )
        try:
            status, data, headers = self._fetch(url)
            if status >= 400:
                raise ApiError(f"the iTunes API answered HTTP {status} for {url}")
        except (TransferError, ApiError) as exc:
            if hit is None or isinstance(exc, RateLimitedError):
                raise
            # Unreachable or failing: an old answer is better than none, said as such.
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(hit[1]))
            self.notice = (
                f"the iTunes API could not be reached ({exc}); showing the answer cached at {when}"
            )
            return self._parse(hit[0].encode())
        tracks = self._parse(data, headers.get("Content-Type"))
        if store is not None:
            store.cache_put(key, data.decode("utf-8", "replace"), SEARCH_CACHE_SECONDS)
        return tracks

    def _fetch(self, url: str) -> tuple[int, bytes, Any]:
        """One paced call; a 403/429 with a Retry-After of at most 10 s is tried once more."""
        for attempt in RetryLoop(RATE_LIMITED, what=url):
            self._pace()
            status, data, headers = self.session.fetch(
                url, retry_statuses=frozenset({500, 502, 503, 504}), max_bytes=16 << 20
            )
            if status not in (403, 429):
                return status, data, headers
            error = RateLimitedError(
                f"the iTunes API refused the call (HTTP {status}): rate limited",
                "Apple allows about 20 calls a minute; wait a minute and try again",
            )
            wait = parse_retry_after(headers.get("Retry-After"))
            if wait is None or wait > RATE_RETRY_MAX_SECONDS or not attempt.may_retry(error):
                raise error
            attempt.failed(error, retry_after=wait)
        raise AssertionError("the retry loop ends by a return or an error")

    def _pace(self) -> None:
        store = self._store
        if store is None:
            return
        wait = store.take_tokens("itunes-rate", RATE_CAPACITY, RATE_PER_SECOND)
        if wait > 0:
            time.sleep(min(wait, 10.0))

    @staticmethod
    def _parse(body: bytes, content_type: str | None = None) -> list[Track]:
        # Apple answers text/javascript after blank lines; parse whatever the Content-Type.
        try:
            payload = json.loads(body.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError) as exc:
            text = body[:200].decode("utf-8", "ignore")  # (no U+FFFD where bytes were bad)
            shown = "".join(c if c.isprintable() else " " for c in text).split()
            start = " ".join(shown)[:60] or "nothing printable"
            raise ApiError(
                f"the iTunes API sent something that is not JSON "
                f"({content_type or 'no Content-Type'}), starting: {start}",
                "the service may be down or a proxy may be in the way; try again later",
            ) from exc
        if (
            not isinstance(payload, dict)
            or not isinstance(payload.get("results"), list)
            or not all(isinstance(i, dict) for i in payload["results"])
        ):
            raise ApiError("the iTunes API answer has an unexpected shape (no results list)")
        return [Track.from_api(item) for item in payload["results"]]
