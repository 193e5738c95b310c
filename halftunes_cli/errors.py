"""The exception tree, exit statuses, and the one boundary where library errors become ours.

    HalftunesError                 (exit 1 unless stated)
    ├── UsageError                 exit 2: bad input from the user
    │   ├── ConfigError            exit 2: a bad config file, key or value
    │   ├── InsecureURLError       exit 2: plain http:// to a host that is not loopback
    │   ├── UnsupportedURLError    exit 2: a scheme we do not speak, a malformed URL
    │   └── UnknownIdError         exit 2: an id no record or catalog knows
    ├── ApiError                   the iTunes API answered something we cannot use
    │   └── RateLimitedError       403/429 from the API (about 20 calls a minute)
    ├── OfflineMissError           --offline and no cached answer
    ├── TransferError              a download or upload failed
    │   ├── HTTPStatusError        a final 4xx/5xx
    │   └── AuthenticationRequired 401 with no credentials to offer
    ├── StateError                 the state file is corrupt, too new or unusable
    ├── DiskError                  the download dir is not writable, the disk is full
    ├── AlreadyRunningError        another process is transferring that id right now
    ├── InternalError              a bug in halftunes: reported as such, never as a network error
    ├── IllegalTransition          a lifecycle move the tables do not allow (also a bug)
    └── Cancelled                  a task was cancelled or paused (not shown to users)

Lower-layer errors become members of this tree at one place each, keeping the original as
their `__cause__` (raise ... from exc) so `-v` can show it: requests, urllib3 and
http.client in `transport.map_error` (the transport raises nothing else), OSError in
`disk_error` and sqlite3 in `state_error` below.
"""

from __future__ import annotations

import enum
import errno
import os


class ExitStatus(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    TIMEOUT = 124
    INTERRUPTED = 130
    TERMINATED = 143


class HalftunesError(Exception):
    exit_code: int = ExitStatus.ERROR

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(HalftunesError):
    exit_code = ExitStatus.USAGE


class ConfigError(UsageError):
    pass


class InsecureURLError(UsageError):
    pass


class UnsupportedURLError(UsageError):
    pass


class UnknownIdError(UsageError):
    pass


class ApiError(HalftunesError):
    pass


class RateLimitedError(ApiError):
    pass


class OfflineMissError(HalftunesError):
    pass


class TransferError(HalftunesError):
    # Set where the cause is known: `is_permanent` (trying again will not help: 404, 410, a
    # 403 that is no rate limit, an unknown host), `is_unreachable` (refused, unknown host:
    # worth one more attempt at most, unless the host answered before), `is_retryable`
    # (False: never tried again in this command, e.g. a failed TLS verification).
    # `is_offline`: no connection could be made at all (refused, unknown host, no route, the
    # network down, the connect timed out): what a task that waits for connectivity waits on.
    is_permanent = False
    is_unreachable = False
    is_offline = False
    is_retryable = True


class HTTPStatusError(TransferError):
    def __init__(
        self, status: int, url: str, hint: str | None = None, retry_after: str | None = None
    ):
        super().__init__(f"server answered HTTP {status} for {url}", hint)
        self.status = status
        self.url = url
        self.is_permanent = status in (404, 410) or (status == 403 and retry_after is None)


class AuthenticationRequired(TransferError):
    pass


class StateError(HalftunesError):
    pass


class DiskError(HalftunesError):
    pass


class AlreadyRunningError(HalftunesError):
    pass


class InternalError(HalftunesError):
    pass


class IllegalTransition(HalftunesError):
    pass


class Cancelled(HalftunesError):
    """Raised inside a task's thread when it is paused or cancelled; never reaches users."""


def unknown_download(record_id: str) -> UnknownIdError:
    return UnknownIdError(f"no download with id {record_id}", "`halftunes list` shows the ids")


def authentication_required(url: str) -> AuthenticationRequired:
    return AuthenticationRequired(
        f"authentication required for {url} (HTTP 401)",
        "add the host to ~/.netrc, or answer on_challenge in your delegate",
    )


def internal_error(exc: BaseException) -> InternalError:
    error = InternalError(
        f"internal error: {type(exc).__name__}: {exc}",
        "this is a bug in halftunes; run again with -v for the traceback and report it",
    )
    error.__cause__ = exc
    return error


def disk_error(exc: OSError, path: object = None) -> DiskError:
    where = f" writing {path}" if path else ""
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        error = DiskError(f"disk full{where}", "free some space, then `halftunes resume ID`")
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        error = DiskError(f"permission denied{where}", "choose a writable folder with -o DIR")
    else:
        error = DiskError(f"disk error{where}: {exc.strerror or exc}")
    error.__cause__ = exc
    return error


# SQLite's primary result codes (the low byte of an extended code), as `sqlite3` errors
# carry them in `sqlite_errorcode`.
SQLITE_PERM, SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY = 3, 5, 6, 8
SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 10, 11, 13, 14, 26


def sqlite_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_corrupt_state(exc: BaseException) -> bool:
    """Only SQLite's own verdict makes a state file corrupt: busy, locked, can't-open, I/O
    and full are conditions of the moment, and the file must be left alone."""
    return sqlite_code(exc) in (SQLITE_CORRUPT, SQLITE_NOTADB)


def state_error(exc: BaseException, path: object, busy_seconds: float = 30.0) -> StateError:
    """A state file that cannot be used right now, said by why; the file is left as it is."""
    where = path or ":memory:"
    code = sqlite_code(exc)
    if code in (SQLITE_BUSY, SQLITE_LOCKED):
        error = StateError(
            f"state file {where} is busy: another program has held its lock for more than "
            f"{busy_seconds:g} s",
            "close the program that holds it (a sqlite3 shell, a backup), then try again",
        )
    elif code == SQLITE_FULL:
        error = StateError(
            f"the disk that holds state file {where} is full",
            "free some space, then try again; the state file was left as it is",
        )
    elif code == SQLITE_IOERR:
        error = StateError(
            f"I/O error on state file {where} ({exc})",
            "the disk may be full or failing; the state file was left as it is",
        )
    elif code in (SQLITE_READONLY, SQLITE_PERM):
        error = StateError(
            f"cannot write state file {where} ({exc})",
            "set HALFTUNES_STATE_DIR to a writable folder",
        )
    elif code == SQLITE_CANTOPEN:
        error = StateError(
            f"cannot open state file {where} ({_cannot_open_reason(path)})",
            "check the folder's permissions, the disk, and `ulimit -n`",
        )
    else:
        error = StateError(f"state file {where}: {exc}")
    error.__cause__ = exc
    return error


def _cannot_open_reason(path: object) -> str:
    """SQLite says only "unable to open database file"; the commonest causes can be told."""
    try:
        os.close(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return "too many open files"
        return exc.strerror or str(exc)
    folder = os.path.dirname(str(path)) or "."
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "its file system is read-only"
    except OSError:
        pass
    if not os.access(folder, os.W_OK):
        return "its folder is not writable"
    return "unable to open database file"


def shorten_url(url: str, limit: int = 100) -> str:
    """A URL as a message shows it: a lookup of 150 ids is not worth 1,500 characters."""
    return url if len(url) <= limit else url[: limit - 1] + "…"
