"""The SQLite adapter: the state file's schema, opening, corruption handling, and every SQL
statement of halftunes (no other module speaks SQL; `records` decides what to write)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import StateError, is_corrupt_state, state_error
from .headers import parse_decimal

STATE_FILE_NAME = "downloads.db"
# How long a command waits for another process's transaction before it says "busy". (The
# environment variable exists for the chaos suite, which holds the lock longer than this.)
BUSY_TIMEOUT_SECONDS = parse_decimal(os.environ.get("HALFTUNES_BUSY_TIMEOUT_SECONDS")) or 30.0
SCHEMA_VERSION = 3
# Format 1 -> 2: each record carries the settings of the command that queued it, and whether
# its failure is permanent (404, 410, ...).
# Format 2 -> 3: `segments`, the plan of a file fetched over several connections (`-x`). A new
# number, not an added column: a halftunes that ignored it would take the partial's length
# (the whole file's, sparse) for bytes received. And `http_status`: the status of the answer
# that failed a download, as a number (job manifests carry it).
_MIGRATIONS = {
    1: (
        "ALTER TABLE downloads ADD COLUMN settings TEXT",
        "ALTER TABLE downloads ADD COLUMN permanent INTEGER NOT NULL DEFAULT 0",
    ),
    2: (
        "ALTER TABLE downloads ADD COLUMN segments TEXT",
        "ALTER TABLE downloads ADD COLUMN http_status INTEGER",
    ),
}
# Columns added within a format: an older halftunes of the same format reads records by
# name and leaves them alone, so they need no new number (`metrics`: JSON, the last
# transfer's task metrics).
# `not_before`, `priority`: when and in which order the worker starts a queued download.
# `checksum`: ALGO=HEX the finished file must have (`--checksum`).
_ADDED_COLUMNS = {"metrics": "TEXT", "not_before": "REAL", "priority": "REAL", "checksum": "TEXT"}

_SCHEMA = """
CREATE TABLE downloads (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    url TEXT NOT NULL,
    path TEXT NOT NULL,
    path_key TEXT NOT NULL,
    part_path TEXT NOT NULL,
    status TEXT NOT NULL,
    bytes_received INTEGER NOT NULL DEFAULT 0,
    bytes_total INTEGER,
    etag TEXT,
    last_modified TEXT,
    error TEXT,
    owner TEXT,
    owner_pid INTEGER,
    session TEXT NOT NULL DEFAULT 'default',
    session_id TEXT,
    title TEXT,
    boot_id TEXT,
    request TEXT,
    announced INTEGER NOT NULL DEFAULT 1,
    settings TEXT,
    permanent INTEGER NOT NULL DEFAULT 0,
    metrics TEXT,
    not_before REAL,
    priority REAL,
    checksum TEXT,
    segments TEXT,
    http_status INTEGER,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX downloads_status ON downloads(status);
CREATE INDEX downloads_owner ON downloads(owner);
CREATE INDEX downloads_path_key ON downloads(path_key);
CREATE TABLE tracks (id TEXT PRIMARY KEY, json TEXT NOT NULL, fetched REAL NOT NULL);
CREATE TABLE http_cache (key TEXT PRIMARY KEY, body TEXT NOT NULL, fetched REAL NOT NULL,
                         max_age REAL NOT NULL DEFAULT 0);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

Row = dict[str, Any]
Connection = sqlite3.Connection  # what a transaction hands its body (records pass it back)
# What every format (1 and later) has: a `downloads` table without them is someone else's.
_FORMAT_1_COLUMNS = frozenset(
    [
        "id",
        "seq",
        "url",
        "path",
        "path_key",
        "part_path",
        "status",
        "bytes_received",
        "bytes_total",
        "etag",
        "last_modified",
        "error",
        "owner",
        "owner_pid",
        "session",
        "session_id",
        "title",
        "boot_id",
        "request",
        "announced",
        "created",
        "updated",
    ]
)


class StateFileReplaced(StateError):
    """The state file's path names another file than the one this process opened."""


class _NotAStateFile(Exception):
    """A database, but not one of ours (no downloads table, an unknown format)."""


def _track_key(api: str, ident: str) -> str:
    return f"{api.rstrip('/')} {ident}"


def state_file_exists(state_dir: Path | str) -> bool:
    return (Path(state_dir) / STATE_FILE_NAME).exists()


class Store:
    """One state file per state dir; `Store(None)` keeps everything in memory (ephemeral)."""

    def __init__(self, state_dir: Path | None):
        self.state_dir = state_dir
        self.path = state_dir / STATE_FILE_NAME if state_dir is not None else None
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file we opened

    # -- opening -----------------------------------------------------------------------------
    @property
    def is_persistent(self) -> bool:
        return self.path is not None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        if self.path is None:
            conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.executescript(_SCHEMA)
            return conn
        assert self.state_dir is not None
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"cannot create state dir {self.state_dir}: {exc.strerror}",
                "set HALFTUNES_STATE_DIR to a writable folder",
            ) from None
        if not self.state_dir.is_dir():
            raise StateError(f"state dir {self.state_dir} is not a directory")
        if not self.path.exists() and not self.path.is_symlink():
            self._create()
        return self._connect_checked()

    def _create(self) -> None:
        """Build the database beside its final name, then link it in: never half-created."""
        assert self.path is not None
        tmp = self.path.with_name(f".{STATE_FILE_NAME}.new-{os.getpid()}-{secrets.token_hex(3)}")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
            conn = sqlite3.connect(tmp, isolation_level=None)
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.close()
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            with self._dir_lock():
                if not self.path.exists() and not self.path.is_symlink():
                    # A -wal or -shm without its database belongs to a file that is gone
                    # (deleted or moved without them): SQLite would replay it into ours.
                    for side in self._sides(self.path):
                        side.unlink(missing_ok=True)
                    os.link(tmp, self.path)
        except sqlite3.Error as exc:
            raise state_error(exc, self.path) from exc
        except OSError as exc:
            raise StateError(f"cannot create state file {self.path}: {exc.strerror}") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    @contextlib.contextmanager
    def _dir_lock(self) -> Iterator[None]:
        """Creating and moving aside the state file (with its -wal and -shm) happen one
        process at a time: an flock on the state dir."""
        assert self.state_dir is not None
        fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @staticmethod
    def _sides(path: Path) -> list[Path]:
        return [Path(str(path) + suffix) for suffix in ("-wal", "-shm")]

    def _connect_checked(self) -> sqlite3.Connection:
        assert self.path is not None
        path = self.path
        if path.is_dir():
            self._move_aside("it is a directory")
        if path.is_symlink() and not path.exists():
            self._move_aside("it is a symbolic link to nothing")  # (never create its target)
        try:
            if path.stat().st_size == 0:
                self._move_aside("it is empty")
        except FileNotFoundError:
            self._create()
        conn = None
        busy = BUSY_TIMEOUT_SECONDS
        try:
            # mode=rw: opening never creates a file (only `_create` does, beside, then links)
            conn = sqlite3.connect(
                path.absolute().as_uri() + "?mode=rw",
                uri=True,
                timeout=busy,
                check_same_thread=False,
                isolation_level=None,
            )
            conn.row_factory = sqlite3.Row
            identity = os.stat(path)
            self._identity = (identity.st_dev, identity.st_ino)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.close()
                raise StateError(
                    f"state file {path} is from a newer halftunes (format {version}, "
                    f"this one reads {SCHEMA_VERSION}); refusing to touch it",
                    "upgrade halftunes, or point HALFTUNES_STATE_DIR elsewhere",
                )
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if "downloads" not in names or version not in (SCHEMA_VERSION, *_MIGRATIONS):
                raise _NotAStateFile("not a halftunes state file")
            columns = {r[1] for r in conn.execute("PRAGMA table_info(downloads)")}
            if not columns >= _FORMAT_1_COLUMNS:
                raise _NotAStateFile("not a halftunes state file (other columns)")
            if version != SCHEMA_VERSION:
                self._migrate(conn)
            if not columns >= _ADDED_COLUMNS.keys():
                self._add_columns(conn)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(busy * 1000)}")
            return conn
        except (sqlite3.Error, _NotAStateFile, OSError) as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, _NotAStateFile) or is_corrupt_state(exc):
                self._move_aside(str(exc))  # (raises: the error names the new file)
            if isinstance(exc, OSError):
                raise StateError(f"cannot open state file {path}: {exc.strerror}") from exc
            raise state_error(exc, path, busy) from exc

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Bring an older state file up to this format, once, under the write lock."""
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            while version in _MIGRATIONS:
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _add_columns(conn: sqlite3.Connection) -> None:
        """Add the columns this format gained (once, under the write lock: another process
        may be adding them too)."""
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            columns = {r[1] for r in conn.execute("PRAGMA table_info(downloads)")}
            for name, kind in _ADDED_COLUMNS.items():
                if name not in columns:
                    conn.execute(f"ALTER TABLE downloads ADD COLUMN {name} {kind}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _move_aside(self, why: str) -> None:
        assert self.path is not None
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{os.getpid()}")
        try:
            with self._dir_lock():
                os.replace(self.path, aside)
                for side in self._sides(self.path):
                    if side.exists():
                        os.replace(side, Path(str(aside) + side.name[len(self.path.name) :]))
        except OSError as exc:
            raise StateError(
                f"state file {self.path} is unusable ({why}) and could not be moved aside: "
                f"{exc.strerror}"
            ) from None
        raise StateError(
            f"state file {self.path} was unusable ({why}); moved it aside to {aside.name}",
            "the next command starts with a clean state; partial downloads were left in place",
        )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- transactions --------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: one writer at a time across processes; commit or roll back."""
        with self._lock:
            conn = self.conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._db_error(exc) from exc
            try:
                self.verify_identity()
                yield conn
            except sqlite3.Error as exc:  # a statement of the body: ours to say
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise self._db_error(exc) from exc
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            else:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise self._db_error(exc) from exc

    def _db_error(self, exc: sqlite3.Error) -> StateError:
        """A failed statement said as ours. One that finds the file corrupt moves it aside
        (as opening it would have): the next command starts clean."""
        if self.path is not None and is_corrupt_state(exc):
            self.close()
            try:
                self._move_aside(str(exc))
            except StateError as error:
                return error
        return state_error(exc, self.path, BUSY_TIMEOUT_SECONDS)

    def verify_identity(self) -> None:
        """Raise StateFileReplaced when the state file's path no longer names the file this
        process opened (moved aside, deleted with its folder, replaced): whatever we wrote
        from now on would go into a file nobody reads."""
        if self.path is None or self._identity is None:
            return
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            found = None
        except OSError:
            return  # cannot tell (out of descriptors): the next transaction looks again
        if found is None or (found.st_dev, found.st_ino) != self._identity:
            raise StateFileReplaced(
                f"state file {self.path} was moved or deleted while halftunes was using it",
                "this process stopped its transfers and kept their partial files; run the "
                "command again to continue with the state file that is there now",
            )

    def query(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        with self._lock:
            try:
                conn = self.conn
                self.verify_identity()
                return [dict(r) for r in conn.execute(sql, params)]
            except sqlite3.Error as exc:
                raise self._db_error(exc) from exc

    # -- download records (rows; `records` owns what they mean) -------------------------------
    def get(self, record_id: str) -> Row | None:
        rows = self.query("SELECT * FROM downloads WHERE id = ?", (record_id,))
        return rows[0] if rows else None

    def row(self, conn: sqlite3.Connection, record_id: str) -> Row | None:
        """A record read inside a transaction."""
        found = conn.execute("SELECT * FROM downloads WHERE id = ?", (record_id,)).fetchone()
        return dict(found) if found is not None else None

    def all(self, ids: list[str] | None = None) -> list[Row]:
        if ids is None:
            return self.query("SELECT * FROM downloads ORDER BY seq")
        found = {r["id"]: r for r in self._select_ids("SELECT * FROM downloads", ids)}
        return [found[i] for i in ids if i in found]

    def _select_ids(self, select: str, ids: list[str]) -> list[Row]:
        """`select ... WHERE id IN (...)` in chunks that stay under SQLite's variable limit."""
        out: list[Row] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            out += self.query(f"{select} WHERE id IN ({marks})", tuple(chunk))
        return out

    def with_status(
        self, conn: sqlite3.Connection, statuses: tuple[str, ...], limit: int | None = None
    ) -> list[Row]:
        marks = ",".join("?" * len(statuses))
        sql = f"SELECT * FROM downloads WHERE status IN ({marks}) ORDER BY seq"
        params: tuple = tuple(statuses)
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        return [dict(r) for r in conn.execute(sql, params)]

    def due(self, conn: sqlite3.Connection, now: float, limit: int) -> list[Row]:
        """Queued records, and waiting ones whose date has come: the highest priority first,
        then the oldest."""
        sql = (
            "SELECT * FROM downloads WHERE status = 'queued' OR (status = 'waiting' AND "
            "owner IS NULL AND COALESCE(not_before, 0) <= ?) "
            "ORDER BY COALESCE(priority, 0.5) DESC, seq LIMIT ?"
        )
        return [dict(r) for r in conn.execute(sql, (now, limit))]

    def earliest_date(self) -> float | None:
        rows = self.query(
            "SELECT MIN(not_before) AS d FROM downloads WHERE status = 'waiting' AND owner IS NULL"
        )
        return rows[0]["d"] if rows else None

    def count_to_start(self, conn: sqlite3.Connection) -> int:
        """Records handed to the worker and not started: queued, or waiting for a date."""
        sql = (
            "SELECT COUNT(*) FROM downloads WHERE status = 'queued' "
            "OR (status = 'waiting' AND owner IS NULL)"
        )
        return int(conn.execute(sql).fetchone()[0])

    def running_owners(self) -> set[str | None]:
        rows = self.query(
            "SELECT DISTINCT owner FROM downloads WHERE status IN ('running', 'waiting') "
            "AND owner IS NOT NULL"
        )
        return {r["owner"] for r in rows}

    def unreported(self, conn: sqlite3.Connection) -> list[Row]:
        """Ended transfers whose outcome nobody has been told yet."""
        sql = (
            "SELECT * FROM downloads WHERE announced = 0 "
            "AND status IN ('completed', 'failed', 'paused') ORDER BY seq"
        )
        return [dict(r) for r in conn.execute(sql)]

    def unannounced(self, conn: sqlite3.Connection) -> list[Row]:
        sql = (
            "SELECT * FROM downloads WHERE announced = 0 AND session = 'background' "
            "AND status IN ('completed', 'failed') ORDER BY seq"
        )
        return [dict(r) for r in conn.execute(sql)]

    def by_session_id(self, identifier: str) -> list[Row]:
        sql = "SELECT * FROM downloads WHERE session_id = ? ORDER BY seq"
        return self.query(sql, (identifier,))

    def requests_for(self, owner: str) -> dict[str, str]:
        sql = "SELECT id, request FROM downloads WHERE owner = ? AND request IS NOT NULL"
        return {r["id"]: r["request"] for r in self.query(sql, (owner,))}

    def insert_record(self, conn: sqlite3.Connection, record: Row) -> None:
        now = time.time()
        seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM downloads").fetchone()[0]
        row = {
            **record,
            "seq": seq,
            "created": now,
            "updated": now,
            "path_key": str(record["path"]).casefold(),
        }
        cols = ",".join(row)
        conn.execute(
            f"INSERT INTO downloads ({cols}) VALUES ({','.join('?' * len(row))})",
            tuple(row.values()),
        )

    def update_record(self, conn: sqlite3.Connection, record_id: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        if "path" in fields:
            fields["path_key"] = str(fields["path"]).casefold()
        sets = ",".join(f"{k} = ?" for k in fields)
        conn.execute(f"UPDATE downloads SET {sets} WHERE id = ?", (*fields.values(), record_id))

    def delete_record(self, conn: sqlite3.Connection, record_id: str) -> None:
        conn.execute("DELETE FROM downloads WHERE id = ?", (record_id,))

    def path_taken(self, conn: sqlite3.Connection, path: str, record_id: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM downloads WHERE path_key = ? AND id != ? LIMIT 1",
            (path.casefold(), record_id),
        ).fetchone()
        return row is not None

    # -- caches (search results and tracks) -----------------------------------------------------
    def put_tracks(self, api: str, tracks: list[tuple[str, dict[str, Any]]]) -> None:
        """(id, result object) pairs that the iTunes API at `api` answered. A catalog's tracks
        are its own: the same id from another API base is another entry."""
        now = time.time()
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO tracks (id, json, fetched) VALUES (?, ?, ?)",
                [(_track_key(api, ident), json.dumps(t), now) for ident, t in tracks],
            )

    def get_tracks(self, api: str, ids: list[str]) -> dict[str, tuple[dict[str, Any], float]]:
        """id -> (result object, when it was fetched), for the tracks the API at `api` gave."""
        keys = {_track_key(api, ident): ident for ident in ids}
        rows = self._select_ids("SELECT id, json, fetched FROM tracks", list(keys))
        return {keys[r["id"]]: (json.loads(r["json"]), r["fetched"]) for r in rows}

    def cache_get(self, key: str) -> tuple[str, float, float] | None:
        rows = self.query("SELECT body, fetched, max_age FROM http_cache WHERE key = ?", (key,))
        if not rows:
            return None
        return rows[0]["body"], rows[0]["fetched"], rows[0]["max_age"]

    def cache_put(self, key: str, body: str, max_age: float) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO http_cache (key, body, fetched, max_age) VALUES (?,?,?,?)",
                (key, body, time.time(), max_age),
            )

    def take_tokens(self, name: str, capacity: float, per_second: float) -> float:
        """A token bucket shared by every process on this state file; returns seconds to wait."""
        with self.transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone()
            now = time.time()
            tokens, last = (capacity, now) if row is None else json.loads(row["value"])
            tokens = min(capacity, tokens + (now - last) * per_second)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / per_second
            tokens -= 1
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (name, json.dumps([tokens, now])),
            )
            return wait
