"""The exception tree of halftunes; every error carries a message, a hint and an exit code.

    HalftunesError                 (exit 1 unless stated)
    ├── UsageError                 exit 2: bad input from the user
    │   ├── ConfigError            exit 2: a bad config file, key or value
    │   ├── InsecureURLError       exit 2: plain http:// to a host that is not loopback
    │   ├── UnsupportedURLError    exit 2: a scheme we do not speak
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
    └── Cancelled                  a task was cancelled or paused (not shown to users)

Lower-layer errors (requests, OSError, sqlite3) are translated into this tree at one
boundary each: `session.translate_request_error` and `store`.
"""

from __future__ import annotations


class HalftunesError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(HalftunesError):
    exit_code = 2


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
    pass


class HTTPStatusError(TransferError):
    def __init__(self, status: int, url: str, hint: str | None = None):
        super().__init__(f"server answered HTTP {status} for {url}", hint)
        self.status = status
        self.url = url


class AuthenticationRequired(TransferError):
    pass


class StateError(HalftunesError):
    pass


class DiskError(HalftunesError):
    pass


class AlreadyRunningError(HalftunesError):
    pass


def unknown_download(record_id: str) -> UnknownIdError:
    return UnknownIdError(f"no download with id {record_id}", "`halftunes list` shows the ids")


class Cancelled(HalftunesError):
    """Raised inside a task's thread when it is paused or cancelled; never reaches users."""
