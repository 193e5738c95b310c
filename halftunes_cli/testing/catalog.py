"""An offline, iTunes-compatible catalog server (loopback only) that can misbehave on request.

    python -m halftunes_cli.catalog --port 0      # prints its base URL, serves until killed

Serves /search and /lookup like itunes.apple.com, /previews/<id>/<name> and /files/<name>
with real Range / If-Range / ETag / 416 / HEAD semantics, /upload/<name> (records the
sha256 of what arrived), and /_admin/* to inject faults and read the request log.
It plays the other side of the wire and shares no code with the client on purpose.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import hashlib
import json
import random
import re
import select
import socket
import struct
import sys
import threading
import time
import zlib
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

_BLOCK_LEN = 1_048_573  # prime, so a misplaced chunk can never line up with the pattern
_BLOCKS: dict[int, bytes] = {}
_BLOCKS_LOCK = threading.Lock()


def _block(seed: int) -> bytes:
    with _BLOCKS_LOCK:
        if seed not in _BLOCKS:
            if len(_BLOCKS) > 64:
                _BLOCKS.clear()
            _BLOCKS[seed] = random.Random(seed).randbytes(_BLOCK_LEN)
        return _BLOCKS[seed]


def body_slice(seed: int, start: int, end: int) -> bytes:
    """Bytes [start, end) of the deterministic body for `seed` (any length)."""
    block = _block(seed)
    shift = seed % _BLOCK_LEN
    out = bytearray()
    pos = start
    while pos < end:
        i = (pos + shift) % _BLOCK_LEN
        take = min(end - pos, _BLOCK_LEN - i)
        out += block[i : i + take]
        pos += take
    return bytes(out)


def body_sha256(seed: int, size: int) -> str:
    digest = hashlib.sha256()
    for start in range(0, size, 4 << 20):
        digest.update(body_slice(seed, start, min(size, start + (4 << 20))))
    return digest.hexdigest()


MODIFIED_NOW = -1.0  # a `CatalogState.mtimes` value: the file changes every second

# -- the catalog -------------------------------------------------------------------------------

_ARTISTS = {
    "Jack Johnson": (
        "In Between Dreams",
        [
            "Better Together",
            "Banana Pancakes",
            "Upside Down",
            "Sitting, Waiting, Wishing",
            "Good People",
            "Do You Remember",
            "Constellations",
            "Never Know",
            "Breakdown",
            "Taylor",
            "Flake",
            "Bubble Toes",
            "Times Like These",
            "If I Had Eyes",
        ],
    ),
    "Ocean Parade": ("Salt & Light", ["Tide Pools", "Harbour Lights", "Rope Swing", "Undertow"]),
    "The Quiet Foxes": ("Paper Lanterns", ["Ember", "Northbound", "Sleepwalker", "Paper Moon"]),
    "王菲": ("菲靡靡之音", ["红豆", "容易受伤的女人", "但愿人长久"]),
    "Los Días Claros": ("Canciones de Ayer", ["Mañana", "Corazón Partido", "Año Nuevo"]),
    "DJ 🎧 Emoji": ("🔥 Hits 🔥", ["🎸 Guitar Hero", "Dance 💃 Floor", "🌙 Night Drive"]),
    'Quote "Band"': ('It\'s "Fine"', ['She Said "Hi"', "Don't Stop", "Rock 'n' Roll"]),
    "AC/DC Tribute": ("Either/Or", ["Highway/Heaven", "Back\\Slash", "A:B|C?"]),
    "Plus & Hash": ("C# Major + More", ["Rock & Roll #1", "1+1=2", "50% Off"]),
}

_HOSTILE = [
    ("..", ".."),
    ("Unknown", "../../etc/passwd"),
    ("CON", "CON"),
    ("NUL", "nul.txt"),
    ("Long", "L" * 300),
    ("Ctrl", "Bell\x07Tab\tNew\nLine"),
    ("RTL", "evil\u202egpj.exe"),
    ("Dots...", "Trailing dots..."),
    ("Space ", " Spaces "),
    ("com1", "com1.mp3"),
    ("Jack Johnson", "BETTER TOGETHER"),
]


def build_shapes(base_url: str) -> tuple[dict[int, dict], list[dict]]:
    """The other shapes real iTunes answers have, all found by `search shapes`: downloadable
    ones (music video, podcast episode, audiobook, explicit / clean / standard editions, a
    quoted id) by id, and albums and artists, which are not downloadable."""
    b = base_url
    song = {
        "wrapperType": "track",
        "kind": "song",
        "artistName": "The Shapes",
        "collectionName": "Shapes",
        "country": "USA",
        "currency": "USD",
    }
    downloadable: list[dict[str, Any]] = [
        {
            **song,
            "kind": "music-video",
            "trackId": 1440000000001,
            "trackName": "Shapes in Motion (Video)",
            "trackTimeMillis": 245123.0,
            "trackExplicitness": "notExplicit",
            "previewUrl": f"{b}/r/2/previews/1440000000001/video.m4v",
        },
        {
            "wrapperType": "podcastEpisode",
            "kind": "podcast-episode",
            "trackId": 1000000000002,
            "collectionName": "Shapes Weekly",
            "trackName": "Finneas",
            "trackTimeMillis": 1800000,
            "previewUrl": f"{b}/previews/1000000000002/episode.mp3",
        },
        {
            "wrapperType": "audiobook",
            "collectionId": 1234567890123,
            "artistName": "Jane Reader",
            "collectionName": "The Long Walk of Shapes (Unabridged)",
            "previewUrl": f"{b}/previews/1234567890123/sample.m4a",
        },
        {
            **song,
            "trackId": 1500000000011,
            "trackName": "Loud Shapes",
            "collectionName": "Shapes (Deluxe)",
            "trackExplicitness": "explicit",
            "previewUrl": f"{b}/previews/1500000000011/preview.m4a",
        },
        {
            **song,
            "trackId": 1500000000012,
            "trackName": "Loud Shapes",
            "collectionName": "Shapes (Clean)",
            "trackExplicitness": "cleaned",
            "previewUrl": f"{b}/previews/1500000000012/preview.m4a",
        },
        {
            **song,
            "trackId": 1500000000013,
            "trackName": "Loud Shapes",
            "collectionName": "Shapes",
            "trackExplicitness": "notExplicit",
            "previewUrl": f"{b}/previews/1500000000013/preview.m4a",
        },
        {
            **song,
            "trackId": "1500000000014",
            "trackName": "Quoted Id Shapes",
            "trackTimeMillis": "199999.5",
            "previewUrl": f"{b}/previews/1500000000014/preview.m4a",
        },
    ]
    others: list[dict[str, Any]] = [
        {
            "wrapperType": "collection",
            "collectionType": "Album",
            "collectionId": 1469577723,
            "artistName": "The Shapes",
            "collectionName": "Shapes (Deluxe)",
            "trackCount": 12,
        },
        {
            "wrapperType": "artist",
            "artistType": "Artist",
            "artistId": 909253,
            "artistName": "The Shapes",
            "primaryGenreName": "Pop",
        },
    ]
    by_id: dict[int, dict[str, Any]] = {}
    for item in downloadable:
        ident = item.get("trackId") or item["collectionId"]
        by_id[int(ident)] = item
    return by_id, others


def _item_id(item: dict) -> int | None:
    for key in ("trackId", "collectionId", "artistId"):
        if str(item.get(key, "")).isdigit():
            return int(item[key])
    return None


def _atom(name: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + name + payload


def artwork_bytes(track_id: int, width: int, height: int) -> bytes:
    """What /art/ serves: JPEG markers around words that say which picture at which size."""
    return b"\xff\xd8\xff\xe0" + f"artwork {track_id} {width}x{height}".encode() + b"\xff\xd9"


def build_tracks(
    base_url: str, count: int = 300, preview_base: str | None = None
) -> dict[int, dict]:
    tracks: dict[int, dict] = {}
    rng = random.Random(1234)
    track_id = 1_000_000

    def add(artist: str, album: str, name: str, preview: str | None = "preview.m4a") -> None:
        nonlocal track_id
        track_id += 1
        t = {
            "wrapperType": "track",
            "kind": "song",
            "artistId": 900_000 + zlib.crc32(artist.encode()) % 1000,
            "collectionId": 800_000 + zlib.crc32(album.encode()) % 1000,
            "trackId": track_id,
            "artistName": artist,
            "collectionName": album,
            "trackName": name,
            "trackTimeMillis": rng.randint(120_000, 360_000),
            "trackNumber": 1 + len([x for x in tracks.values() if x["artistName"] == artist]),
            "country": "USA",
            "currency": "USD",
            "primaryGenreName": "Pop",
            "releaseDate": "2005-03-01T08:00:00Z",
            "artworkUrl100": f"{base_url}/art/{track_id}/100x100bb.jpg",  # (Apple's shape)
        }
        if preview is not None:
            t["previewUrl"] = f"{preview_base or base_url}/previews/{track_id}/{preview}"
        tracks[track_id] = t

    for artist, (album, songs) in _ARTISTS.items():
        for song in songs:
            add(artist, album, song)
    for artist, name in _HOSTILE:
        add(artist, "Hostile Names", name)
    add("Escape Artist", "Hostile Names", "Path Escape", "..%2F..%2Fescape.m4a")
    add("Mp3 Band", "Formats", "An MP3 Song", "preview.mp3")
    words = ["Blue", "Sky", "River", "Night", "Golden", "Echo", "Fire", "Rain", "Stone", "Wild"]
    while len(tracks) < count:
        n = len(tracks)
        artist = f"Artist {n % 37:02d}"
        name = f"{rng.choice(words)} {rng.choice(words)} {n}"
        add(artist, f"Album {n % 11}", name, None if n % 17 == 0 else "preview.m4a")
    return tracks


class CatalogState:
    """Everything the server knows; tests reach it directly when the server runs in-process."""

    def __init__(
        self,
        base_url: str,
        preview_size: int | None = None,
        count: int = 300,
        preview_base: str | None = None,
    ):
        self.base_url = base_url
        self.tracks = build_tracks(base_url, count, preview_base)
        self.shapes, self.others = build_shapes(base_url)
        self.preview_size = preview_size
        self.sizes: dict[int, int] = {}
        self.versions: dict[int, int] = {}
        self.faults: list[dict] = []
        self.log: list[dict] = []
        self.uploads: dict[str, dict] = {}
        self.throttle_bps: int | None = None
        # Habits of real servers, per track: how validators are made ("default": a versioned
        # ETag; "lm-only": Last-Modified, no ETag (nginx etag off); "mtime-etag": ETag from
        # the modification second and size (nginx, Caddy); "weak-etag"; "sticky-etag": one
        # ETag whatever the content), the modification time, and forced gzip.
        self.styles: dict[int, str] = {}
        self.mtimes: dict[int, float] = {}
        self.gzip_tracks: set[int] = set()
        # Tracks whose preview is a real MP4 container (ftyp, moov, mdat) that a tagger can
        # open; the others are plain bytes.
        self.mp4_tracks: set[int] = set()
        # A wide-area link on loopback: seconds before each response's first byte, and the
        # TCP connections clients opened (connection reuse is part of being fast).
        self.first_byte_delay = 0.0
        self.connections = 0
        # Set to a threading.Event to hold every preview and file response before its status
        # line until the event is set (a busy origin; tests use it to keep transfers open).
        self.gate: threading.Event | None = None
        self.lock = threading.Lock()

    def size_of(self, track_id: int) -> int:
        if track_id in self.sizes:
            return self.sizes[track_id]
        if self.preview_size is not None:
            return self.preview_size
        return 60_000 + (track_id * 7919) % 200_000

    def mtime_of(self, track_id: int, now: float | None = None) -> float:
        """The preview's modification time; MODIFIED_NOW means "modified in the second of each
        response" (its Last-Modified then equals its Date, `now`)."""
        mtime = self.mtimes.get(track_id, 1_100_000_000 + self.versions.get(track_id, 1) * 86_400)
        if mtime == MODIFIED_NOW:
            return time.time() if now is None else now
        return mtime

    def validators_of(self, track_id: int, now: float | None = None) -> tuple[str | None, str]:
        version, size = self.versions.get(track_id, 1), self.size_of(track_id)
        mtime = self.mtime_of(track_id, now)
        etag = {
            "default": f'"p{track_id}-v{version}-{size}"',
            "lm-only": None,
            "mtime-etag": f'"{int(mtime):x}-{size:x}"',
            "weak-etag": f'W/"p{track_id}-v{version}"',
            "sticky-etag": f'"p{track_id}-sticky"',
        }[self.styles.get(track_id, "default")]
        if etag is not None and track_id in self.gzip_tracks:
            etag = etag[:-1] + '-gz"'
        return etag, formatdate(int(mtime), usegmt=True)

    def seed_of(self, track_id: int) -> int:
        return track_id * 1000 + self.versions.get(track_id, 1)

    def sha256_of(self, track_id: int) -> str:
        if track_id in self.mp4_tracks:
            return hashlib.sha256(self.mp4_body(track_id)).hexdigest()
        return body_sha256(self.seed_of(track_id), self.size_of(track_id))

    def mp4_body(self, track_id: int) -> bytes:
        """A minimal M4A of the track's size: ftyp, moov (mvhd: 30 s), mdat of seeded bytes."""
        ftyp = _atom(b"ftyp", b"M4A " + bytes(4) + b"M4A mp42isom")
        moov = _atom(
            b"moov", _atom(b"mvhd", bytes(4) + struct.pack(">IIII", 0, 0, 1000, 30000) + bytes(80))
        )
        head = ftyp + moov
        size = max(self.size_of(track_id), len(head) + 8)
        payload = body_slice(self.seed_of(track_id), 0, size - len(head) - 8)
        return head + _atom(b"mdat", payload)

    def take_fault(self, path: str) -> dict | None:
        with self.lock:
            for fault in self.faults:
                if path.startswith(fault.get("path", "")) and fault.get("times", 1) != 0:
                    if fault.get("times", 1) > 0:
                        fault["times"] = fault.get("times", 1) - 1
                    return dict(fault)
        return None

    def record(self, entry: dict) -> None:
        with self.lock:
            self.log.append(entry)
            if len(self.log) > 100_000:
                del self.log[:50_000]

    def requests_for(self, prefix: str) -> list[dict]:
        with self.lock:
            return [e for e in self.log if e["path"].startswith(prefix)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    server_version = "halftunes-catalog/1"
    state: CatalogState  # set on the subclass made per server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.state.lock:
            self.state.connections += 1
        self._server().open_connections.add(self.connection)

    def _server(self) -> _QuietServer:
        assert isinstance(self.server, _QuietServer)
        return self.server

    def finish(self) -> None:
        self._server().open_connections.discard(self.connection)
        super().finish()

    _date: str | None = None  # this response's Date header, when a route fixed it

    def date_time_string(self, timestamp: float | None = None) -> str:
        return self._date or super().date_time_string(timestamp)

    def send_response(self, code: int, message: str | None = None) -> None:
        if self.state.first_byte_delay:
            time.sleep(self.state.first_byte_delay)
        super().send_response(code, message)

    # -- plumbing --------------------------------------------------------------------------
    def _entry(self) -> dict:
        self._date = None
        h = self.headers
        entry = {
            "method": self.command,
            "path": unquote(urlsplit(self.path).path),
            "raw_path": self.path,
            "range": h.get("Range"),
            "if_range": h.get("If-Range"),
            "accept_encoding": h.get("Accept-Encoding"),
            "user_agent": h.get("User-Agent"),
            "headers": {k.lower(): v for k, v in h.items()},
            "proxied": self.path.startswith(("http://", "https://")),  # an absolute-form target
            "authorization": h.get("Authorization") is not None,
            "status": None,
            "bytes_sent": 0,
            "time": time.time(),
            "ended": None,
        }
        self.state.record(entry)
        return entry

    def _send_json(self, entry: dict, status: int, payload: object, ctype: str | None = None):
        # As Apple: raw UTF-8, and the body starts with blank lines.
        body = b"\n\n\n" + json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self._send_bytes(entry, status, body, ctype or "text/javascript; charset=utf-8")

    def _send_bytes(self, entry: dict, status: int, body: bytes, ctype: str, extra=None):
        entry["status"] = status
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self._send_raw_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            entry["bytes_sent"] = len(body)

    def _send_raw_header(self, name: str, value: str, replace: bool = False) -> None:
        """A header whatever its value: latin-1 as http.server sends it, else UTF-8 bytes
        (a server that misbehaves on purpose may send anything)."""
        buffer: list[bytes] = self._headers_buffer  # type: ignore[attr-defined]  # (http.server's own, not in its stub)
        if replace:
            prefix = name.lower().encode() + b":"
            buffer[:] = [line for line in buffer if not line.lower().startswith(prefix)]
        try:
            raw = value.encode("latin-1")
        except UnicodeEncodeError:
            raw = value.encode("utf-8")
        buffer.append(name.encode() + b": " + raw + b"\r\n")

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _fault_status(self, entry: dict, fault: dict) -> bool:
        if fault["kind"] != "status":
            return False
        status = int(fault.get("status", 503))
        extra = {}
        if "retry_after" in fault:
            extra["Retry-After"] = str(fault["retry_after"])
        body = b'{"errorMessage": "fault injected"}'
        if self.command in ("PUT", "POST"):
            self._drain_body()
        self._send_bytes(entry, status, body, "application/json", extra)
        return True

    def _delay_headers(self, entry: dict, fault: dict) -> bool:
        """A slow origin: nothing for `seconds` before the status line. Returns False when the
        client hung up meanwhile (noted in the log as `closed_by_client`)."""
        deadline = time.monotonic() + float(fault.get("seconds", 20))
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.connection], [], [], 0.02)
            if readable:
                try:
                    peek = self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    peek = b""
                if not peek:
                    entry["closed_by_client"] = entry["ended"] = time.time()
                    self.close_connection = True
                    return False
        return True

    def _drain_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                break
            length -= len(chunk)

    # -- routes ----------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        entry = self._entry()
        path = entry["path"]
        if path.startswith("/_admin/"):
            return self._admin_get(entry, path)
        fault = self.state.take_fault(path)
        if fault and self._fault_status(entry, fault):
            return
        if fault and fault["kind"] == "header_delay" and not self._delay_headers(entry, fault):
            return
        if fault and fault["kind"] == "stall" and not path.startswith(("/previews", "/files")):
            time.sleep(float(fault.get("seconds", 5)))
        if path == "/search":
            return self._search(entry, fault)
        if path == "/lookup":
            return self._lookup(entry, fault)
        if path.startswith("/previews/"):
            return self._preview(entry, path, fault)
        if path.startswith("/files/"):
            return self._file(entry, path, fault)
        if path.startswith("/auth/"):
            return self._auth(entry, path)
        if path.startswith("/art/"):  # /art/<id>/<W>x<H>bb.jpg, as Apple's artwork URLs
            match = re.fullmatch(r"/art/(\d+)/(\d+)x(\d+)bb\.jpg", path)
            if match is None:
                return self._send_json(entry, 404, {"errorMessage": "no such artwork"})
            tid, width, height = (int(g) for g in match.groups())
            return self._send_bytes(entry, 200, artwork_bytes(tid, width, height), "image/jpeg")
        if path.startswith("/r/"):  # a redirect chain: /r/2/x -> /r/1/x -> /x
            hops, _, rest = path[3:].partition("/")
            target = (
                f"/r/{int(hops) - 1}/{rest}" if hops.isdigit() and int(hops) > 1 else f"/{rest}"
            )
            query = urlsplit(self.path).query
            return self._send_bytes(
                entry, 302, b"", "text/plain", {"Location": target + (f"?{query}" if query else "")}
            )
        self._send_json(entry, 404, {"errorMessage": "not found"})

    def do_PUT(self) -> None:
        self._upload()

    def do_POST(self) -> None:
        entry_path = unquote(urlsplit(self.path).path)
        if entry_path.startswith("/_admin/"):
            entry = self._entry()
            return self._admin_post(entry, entry_path)
        self._upload()

    def _api_fault_body(self, entry: dict, fault: dict | None) -> bool:
        if not fault:
            return False
        if fault["kind"] == "malformed":
            self._send_bytes(entry, 200, b'{"resultCount": 1, "results": [', "text/javascript")
            return True
        if fault["kind"] == "html":
            html = b"<html><body><h1>Service Unavailable</h1></body></html>"
            self._send_bytes(entry, 200, html, "text/html")
            return True
        if fault["kind"] == "latin1":  # a proxy's page in ISO-8859-1: not even UTF-8
            html = "<html><p>Dienst nicht verfügbar</p></html>".encode("latin-1")
            self._send_bytes(entry, 200, html, "text/html; charset=iso-8859-1")
            return True
        if fault["kind"] == "wrong_shape":
            self._send_json(entry, 200, {"resultCount": "x", "results": {"a": 1}})
            return True
        if fault["kind"] == "results":
            self._send_json(
                entry, 200, {"resultCount": len(fault["results"]), "results": fault["results"]}
            )
            return True
        return False

    def _search(self, entry: dict, fault: dict | None) -> None:
        if self._api_fault_body(entry, fault):
            return
        query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        term = query.get("term", [""])[0]
        entry["term"] = term
        try:
            limit = int(query.get("limit", ["50"])[0])
        except ValueError:
            limit = 50
        limit = max(1, min(200, limit))
        words = [w for w in term.lower().split() if w]
        results = []
        st = self.state
        for t in [*st.tracks.values(), *st.shapes.values(), *st.others]:
            hay = " ".join(
                str(t.get(k, "")) for k in ("artistName", "trackName", "collectionName")
            ).lower()
            if words and all(w in hay for w in words):
                results.append(t)
        results = results[:limit]
        self._send_json(entry, 200, {"resultCount": len(results), "results": results})

    def _lookup(self, entry: dict, fault: dict | None) -> None:
        if self._api_fault_body(entry, fault):
            return
        query = parse_qs(urlsplit(self.path).query)
        ids = []
        for part in ",".join(query.get("id", [])).split(","):
            if part.strip().isdigit():
                ids.append(int(part))
        st = self.state
        everything: dict[Any, dict[str, Any]] = {_item_id(o): o for o in st.others}
        everything.update(st.shapes)
        everything.update(st.tracks)
        results = [everything[i] for i in ids if i in everything]
        self._send_json(entry, 200, {"resultCount": len(results), "results": results})

    def _preview(self, entry: dict, path: str, fault: dict | None) -> None:
        part = path[len("/previews/") :].split("/", 1)[0].split(".", 1)[0]
        if not part.isdigit() or (
            int(part) not in self.state.tracks and int(part) not in self.state.shapes
        ):
            return self._send_json(entry, 404, {"errorMessage": "no such preview"})
        track_id = int(part)
        st = self.state
        size = st.size_of(track_id)
        now = float(int(time.time()))
        etag, mtime = st.validators_of(track_id, now)
        if st.mtimes.get(track_id) == MODIFIED_NOW:
            self._date = mtime  # Last-Modified and Date name the same second
        body = st.mp4_body(track_id) if track_id in st.mp4_tracks else None
        gzipped = track_id in st.gzip_tracks
        if gzipped:  # Apache force-gzip: ranges count the gzip bytes
            plain = body if body is not None else body_slice(st.seed_of(track_id), 0, size)
            body = gzip.compress(plain, mtime=0)
        if body is not None:
            size = len(body)
        self._serve_body(
            entry, st.seed_of(track_id), size, etag, mtime, fault, "audio/mp4", body, gzipped
        )

    def _file(self, entry: dict, path: str, fault: dict | None) -> None:
        query = parse_qs(urlsplit(self.path).query)
        try:
            size = int(query.get("size", ["1048576"])[0])
            seed = int(query.get("seed", ["7"])[0])
        except ValueError:
            return self._send_json(entry, 400, {"errorMessage": "bad size"})
        etag = None if "no_etag" in query else f'"f{seed}-{size}"'
        mtime = None if "no_etag" in query else formatdate(1_200_000_000, usegmt=True)
        served = "no_ranges" not in query  # (a server that serves no ranges at all)
        kind = "application/octet-stream"
        self._serve_body(entry, seed, size, etag, mtime, fault, kind, ranges_served=served)

    def _auth(self, entry: dict, path: str) -> None:
        expected = "Basic " + base64.b64encode(b"user:secret").decode()
        if self.headers.get("Authorization") != expected:
            return self._send_bytes(
                entry,
                401,
                b"auth required",
                "text/plain",
                {"WWW-Authenticate": 'Basic realm="halftunes"'},
            )
        self._serve_body(entry, 99, 10_000, '"auth-1"', None, None, "application/octet-stream")

    def _serve_body(
        self,
        entry,
        seed,
        size,
        etag,
        mtime,
        fault,
        ctype,
        encoded=None,
        gzipped=False,
        ranges_served=True,
    ) -> None:
        """`encoded`: the body's bytes when they are not the seed's (gzipped: compressed)."""
        kind = fault["kind"] if fault else None
        gate = self.state.gate
        if gate is not None:
            gate.wait(timeout=120)
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and if_range is not None and if_range not in (etag, mtime):
            rng = None  # validator mismatch: send the whole (new) representation
        if kind == "ignore_range" or not ranges_served:
            rng = None
        start, end, status = 0, size, 200
        if rng:
            spec = rng.strip()
            if spec.startswith("bytes=") and "," not in spec:
                first, _, last = spec[6:].partition("-")
                if first.isdigit():
                    start = int(first)
                    end = min(size, int(last) + 1) if last.isdigit() else size
                    if start >= size:
                        entry["status"] = 416
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
        if kind == "bad_content_range" and status == 206:
            start = max(0, start - 1000)
        entry["status"] = status
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if ranges_served:
            self.send_header("Accept-Ranges", "bytes")
        length = end - start
        announced = length
        if kind == "short":
            announced = length + int(fault.get("extra", 1000))
        if kind == "lie_length":
            announced = 10 * 1024**3
        if kind == "chunked":  # no length: the body comes in HTTP/1.1 chunks
            self.send_header("Transfer-Encoding", "chunked")
        elif kind != "no_length":
            self.send_header("Content-Length", str(announced))
        else:
            self.close_connection = True
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        if etag:
            self.send_header("ETag", etag)
        if mtime:
            self.send_header("Last-Modified", mtime)
        if kind == "header":  # a header with a value of the fault's choosing (raw bytes)
            self._send_raw_header(fault["name"], fault["value"], replace=True)
            self.send_header("Connection", "close")  # the body ends when the connection does
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        drop_after = None
        if kind in ("drop", "stall"):
            drop_after = int(fault.get("after", length // 2))
        if kind in ("short", "lie_length"):
            drop_after = length
        own_throttle = (fault or {}).get("throttle")  # (a fault's own: for this response)
        throttle = own_throttle or self.state.throttle_bps
        chunk = 64 * 1024 if not throttle else max(1024, min(64 * 1024, throttle // 20))
        sent = 0
        began = time.monotonic()
        try:
            pos = start
            while pos < end:
                n = min(chunk, end - pos)
                if drop_after is not None and sent + n > drop_after:
                    n = drop_after - sent
                if n > 0:
                    piece = encoded[pos : pos + n] if encoded is not None else None
                    data = piece if piece is not None else body_slice(seed, pos, pos + n)
                    if kind == "chunked":
                        data = b"%x\r\n%s\r\n" % (len(data), data)
                    self.wfile.write(data)
                    pos += n
                    sent += n
                    entry["bytes_sent"] = sent
                if drop_after is not None and sent >= drop_after:
                    if kind == "stall":
                        time.sleep(float(fault.get("seconds", 5)))
                        drop_after = None
                        continue
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if throttle and not own_throttle and self.state.throttle_bps is None:
                    throttle = None  # lifted (/_admin/throttle): the rest goes at full speed
                if throttle:
                    ahead = sent / throttle - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
            if kind == "chunked":
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
        finally:
            entry["ended"] = time.time()

    def _upload(self) -> None:
        entry = self._entry()
        path = entry["path"]
        fault = self.state.take_fault(path)
        if fault and self._fault_status(entry, fault):
            return
        if not path.startswith("/upload/"):
            self._drain_body()
            return self._send_json(entry, 404, {"errorMessage": "not found"})
        digest = hashlib.sha256()
        received = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline()
                n = int(line.split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    self.rfile.readline()
                    break
                data = self.rfile.read(n)
                digest.update(data)
                received += len(data)
                self.rfile.readline()
        else:
            length = int(self.headers.get("Content-Length") or 0)
            while received < length:
                data = self.rfile.read(min(1 << 20, length - received))
                if not data:
                    break
                digest.update(data)
                received += len(data)
        info = {"sha256": digest.hexdigest(), "size": received, "method": self.command}
        with self.state.lock:
            self.state.uploads[path[len("/upload/") :]] = info
        status = 201 if self.command == "PUT" else 200
        if fault and fault["kind"] == "big_reply":  # an answer far larger than any client wants
            return self._send_large(entry, status, int(fault.get("bytes", 64 << 20)))
        self._send_json(entry, status, info, "application/json")

    def _send_large(self, entry: dict, status: int, size: int) -> None:
        entry["status"] = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        block = b"x" * (1 << 20)
        sent = 0
        try:
            while sent < size:
                n = min(len(block), size - sent)
                self.wfile.write(block[:n])
                sent += n
                entry["bytes_sent"] = sent
        except OSError:
            self.close_connection = True

    # -- admin -----------------------------------------------------------------------------
    def _admin_get(self, entry: dict, path: str) -> None:
        st = self.state
        if path == "/_admin/log":
            with st.lock:
                return self._send_json(entry, 200, list(st.log), "application/json")
        if path == "/_admin/uploads":
            with st.lock:
                return self._send_json(entry, 200, dict(st.uploads), "application/json")
        if path.startswith("/_admin/track/"):
            tid = int(path.rsplit("/", 1)[-1])
            info = {
                "size": st.size_of(tid),
                "sha256": st.sha256_of(tid),
                "version": st.versions.get(tid, 1),
            }
            return self._send_json(entry, 200, info, "application/json")
        self._send_json(entry, 404, {"errorMessage": "unknown admin path"})

    def _admin_post(self, entry: dict, path: str) -> None:
        st = self.state
        try:
            body = json.loads(self._read_body() or b"{}")
        except ValueError:
            return self._send_json(entry, 400, {"errorMessage": "bad json"})
        with st.lock:
            if path == "/_admin/fault":
                st.faults.append(body)
            elif path == "/_admin/clear":
                st.faults.clear()
                st.log.clear()
            elif path == "/_admin/throttle":
                st.throttle_bps = body.get("bps")
            elif path.startswith("/_admin/track/"):
                tid = int(path.rsplit("/", 1)[-1])
                if "size" in body:
                    st.sizes[tid] = int(body["size"])
                if "version" in body:
                    st.versions[tid] = int(body["version"])
            else:
                return self._send_json(entry, 404, {"errorMessage": "unknown admin path"})
        self._send_json(entry, 200, {"ok": True}, "application/json")


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # a restart on the same port does not wait for TIME_WAIT

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.open_connections: set[socket.socket] = set()

    def handle_error(self, request, client_address) -> None:
        # Clients that hang up mid-request are part of the job (pause, kill -9): no noise.
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class CatalogServer:
    """The server on 127.0.0.1; `start()` runs it in a thread, `url` is its base URL."""

    def __init__(
        self,
        port: int = 0,
        preview_size: int | None = None,
        count: int = 300,
        preview_base: str | None = None,
        state: CatalogState | None = None,
    ):
        """`state`: another server's catalog, to serve it again (a restart on its port)."""
        handler: type[_Handler] = type("Handler", (_Handler,), {})
        self.httpd = _QuietServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = state or CatalogState(self.url, preview_size, count, preview_base)
        handler.state = self.state
        self._thread: threading.Thread | None = None

    def start(self) -> CatalogServer:
        # A short poll interval: stop() returns within 50 ms instead of serve_forever's 0.5 s.
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self, drop_connections: bool = False) -> None:
        """Stop listening; with `drop_connections`, also cut every open connection, as a
        server process that is restarted does."""
        self.httpd.shutdown()
        self.httpd.server_close()
        if drop_connections:
            for sock in list(self.httpd.open_connections):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> CatalogServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_previews(state: CatalogState, root: str) -> None:
    """Write every preview as a static file, byte-identical to what the server sends."""
    for track_id, track in state.tracks.items():
        url = track.get("previewUrl")
        if not url:
            continue
        name = unquote(urlsplit(url).path).rsplit("/", 1)[-1]
        folder = Path(root) / "previews" / str(track_id)
        folder.mkdir(parents=True, exist_ok=True)
        size = state.size_of(track_id)
        with open(folder / name, "wb") as f:
            for start in range(0, size, 4 << 20):
                f.write(body_slice(state.seed_of(track_id), start, min(size, start + (4 << 20))))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m halftunes_cli.catalog",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--preview-size", type=int, default=None, help="bytes per preview")
    parser.add_argument("--throttle", type=int, default=None, help="bytes per second per request")
    parser.add_argument("--count", type=int, default=300, help="tracks in the catalog")
    parser.add_argument(
        "--first-byte-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait before each response (a long-distance link)",
    )
    parser.add_argument(
        "--preview-base",
        default=None,
        help="base URL for previewUrl (e.g. a static server with the same files)",
    )
    parser.add_argument(
        "--write-previews",
        metavar="DIR",
        default=None,
        help="write every preview under DIR/previews/<id>/ and exit",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: a port is 0 to 65535")
    try:
        server = CatalogServer(args.port, args.preview_size, args.count, args.preview_base)
    except OSError as exc:
        print(
            f"catalog: cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}"
            + (" (another catalog still running? `kill %1` stops one)" if args.port else ""),
            file=sys.stderr,
        )
        sys.exit(1)
    if args.write_previews:
        write_previews(server.state, args.write_previews)
        server.httpd.server_close()
        return
    server.state.throttle_bps = args.throttle
    server.state.first_byte_delay = args.first_byte_delay
    if args.port == 0 or not sys.stdout.isatty():
        # whoever asked for any free port needs to learn it; a person who chose the port
        # knows it, and a line printed by a job in the background lands over their prompt
        print(server.url, flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
