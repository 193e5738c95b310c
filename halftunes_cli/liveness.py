"""Proof of life and of ownership: held flocks for processes that own transfers and for the
one writer of each partial file, and this boot's identity.

The kernel drops an flock when its holder dies, even if the process lingers as a zombie that
nobody reaps, so a held lock is the proof of life. Pids alone are reused, and zombies answer
`kill -0`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
from pathlib import Path

from .errors import AlreadyRunningError

OWNERS_DIR = "owners"
WORKER_LOCK = "worker.lock"


def boot_id() -> str | None:
    """Identifies this boot of the machine: a partial written before a reboot is not trusted."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def is_lock_held(path: Path) -> bool:
    """True when some live process holds an flock on `path`."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False  # no lock file (a folder or a dangling link is none): nobody holds it
    except OSError as exc:
        # ELOOP: a symlink, where nothing of ours holds a lock. Anything else: we cannot
        # tell, so assume alive rather than steal a live transfer.
        return exc.errno != errno.ELOOP
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def is_worker_alive(state_dir: Path) -> bool:
    return is_lock_held(Path(state_dir) / WORKER_LOCK)


class OwnerLock:
    """A lock file held for the life of a process that owns transfers."""

    def __init__(self, state_dir: Path):
        self.token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.dir = Path(state_dir) / OWNERS_DIR
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = self.dir / f"{self.token}.lock"
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None


class MemoryOwner:
    """The owner of an ephemeral session's transfers: alive exactly as long as this process."""

    def __init__(self) -> None:
        self.token = f"{os.getpid()}-memory"

    def release(self) -> None:
        pass


def owner_lock_path(state_dir: Path, token: str) -> Path:
    return Path(state_dir) / OWNERS_DIR / f"{token}.lock"


# -- the writer of a partial -------------------------------------------------------------------
class PartialBusy(AlreadyRunningError):
    """Another process holds the partial's lock: it is that process's to write."""

    def __init__(self, path: Path):
        super().__init__(
            f"{Path(path).name} is being downloaded right now by another "
            "halftunes process (it holds the partial file)",
            "`halftunes list` shows it; `halftunes wait ID` waits for it",
        )
        self.path = Path(path)


class PartialLock:
    """The right to write one partial file: an exclusive flock on the partial itself.

    A process writes, truncates, renames or deletes a `.part` only while it holds this lock,
    whatever the state file says (a state file moved aside or deleted must not let a second
    process write the same bytes). The lock is taken on a read-only descriptor, so a process
    that is refused never has the file open for writing; after the flock, the path must
    still name the locked file (its previous writer may have renamed it meanwhile)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.fd: int | None = None

    @property
    def is_held(self) -> bool:
        return self.fd is not None

    def acquire(self, create: bool) -> bool:
        """Take the lock (True). False when there is no partial and `create` is False;
        PartialBusy when another process holds it."""
        if self.fd is not None:
            return True
        for _ in range(10):
            flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_CREAT if create else 0)
            try:
                fd = os.open(self.path, flags, 0o666)
            except FileNotFoundError:
                if create:
                    raise
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise PartialBusy(self.path) from None
            except OSError:
                os.close(fd)
                raise
            if _names(self.path, fd):
                self.fd = fd
                return True
            os.close(fd)  # renamed or replaced before we locked it: look again
            if not create and not self.path.exists():
                return False
        raise PartialBusy(self.path)

    def is_current(self) -> bool:
        """The path still names the file we hold (nobody outside the rules moved it)."""
        return self.fd is not None and _names(self.path, self.fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _names(path: Path, fd: int) -> bool:
    try:
        found, held = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)


def is_partial_busy(path: Path | str) -> bool:
    """True when another process is writing this partial right now."""
    lock = PartialLock(path)
    try:
        lock.acquire(create=False)
    except PartialBusy:
        return True
    except OSError:
        return False  # (no partial, or none we can open: nobody writes it through us)
    finally:
        lock.release()
    return False


def remove_partial(path: Path | str) -> bool:
    """Delete a partial unless another process is writing it (then it is theirs: False)."""
    lock = PartialLock(path)
    try:
        if lock.acquire(create=False):
            os.unlink(lock.path)
    except PartialBusy:
        return False
    except OSError:
        pass
    finally:
        lock.release()
    return True
