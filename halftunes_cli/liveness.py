"""Proof of life for processes that own transfers: held flocks, and this boot's identity.

The kernel drops an flock when its holder dies, even if the process lingers as a zombie that
nobody reaps, so a held lock is the proof of life. Pids alone are reused, and zombies answer
`kill -0`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path

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
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: assume alive rather than steal a live transfer
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
