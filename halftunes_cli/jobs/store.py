"""Where a job lives: a local folder or an fsspec URL (`s3://bucket/jobs/x`, any protocol).

A job store holds the plan, the shard files, the lookup cache, the upload notes and the
manifests, every file written whole: a local file by a temp file and an atomic rename, an
object by one PUT. It holds nothing that is written a little at a time (a transfer's
records and partials live in a worker's own scratch folder), so a cluster needs no shared
disk: every machine reaches the same store.

`file:///shared/x` names a local folder that every worker sees at the same path (a shared
disk); a plain path is this machine's own."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import HalftunesError, UsageError


def is_url(location: str) -> bool:
    return "://" in location


def canonical(url: str) -> str:
    """A URL as every machine and every run of a job names it: the file system's own
    protocol name (`s3a://` is `s3://`), no repeated or trailing slash."""
    if url.startswith("file://"):
        return f"file://{local_folder(url)}"
    fs = filesystem(url)
    root = re.sub(r"/{2,}", "/", fs._strip_protocol(url)).strip("/")
    if not root:
        raise UsageError(f"{url!r} names no folder")
    if set(root.split("/")) & {".", ".."} or set(root) & set("*?[]"):
        raise UsageError(
            f"{url!r}: a job or output URL names its folder plainly",
            "no . or .. parts and no * ? [ ] (object stores read those as patterns)",
        )
    text: str = fs.unstrip_protocol(root)
    return text


def local_folder(url: str) -> Path:
    """The folder of a file:// URL (file:///x, file://localhost/x)."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise UsageError(
            f"{url!r} is not a folder of this machine",
            "a file:// URL names an absolute path: file:///shared/jobs/x",
        )
    return Path(os.path.normpath(unquote(parts.path)))


def is_local(fs: Any) -> bool:
    """An fsspec file system of this machine's files (a rename is atomic there)."""
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def filesystem(url: str) -> Any:
    """The fsspec file system of a URL (s3:// needs the s3 extra)."""
    try:
        import fsspec

        protocol = url.split("://", 1)[0]
        if protocol in ("file", "local"):  # (folders made as needed, as an object store's)
            return fsspec.filesystem(protocol, auto_mkdir=True)
        return fsspec.filesystem(protocol)
    except ImportError as exc:
        raise UsageError(
            f"{url!r} needs fsspec and its driver ({exc.name})",
            "pip install 'halftunes[s3]'",
        ) from None
    except ValueError as exc:
        raise UsageError(f"{url!r}: {exc}") from exc


class JobStore:
    """A job's files by their names relative to the job (`plan.json`, `shards/000001.json`)."""

    location: str  # as messages show it: an absolute path, or the URL in its canonical form
    shared: bool  # every worker reaches it (a URL), not only this machine (a plain path)

    @staticmethod
    def at(location: str | os.PathLike[str]) -> JobStore:
        text = os.fspath(location)
        if text.startswith("file://"):
            return LocalStore(local_folder(text), shared=True)
        if is_url(text):
            return ObjectStore(canonical(text))
        return LocalStore(Path(text).expanduser())

    @property
    def key(self) -> str:
        """A short name of this job, the same on every machine (for a scratch folder)."""
        return hashlib.sha256(self.location.encode()).hexdigest()[:16]

    def read(self, name: str) -> str | None:
        """The file's text, or None when there is none."""
        raise NotImplementedError

    def read_many(self, names: list[str]) -> dict[str, str | None]:
        """Files by name, as `read` gives each."""
        raise NotImplementedError

    def write(self, name: str, data: str | bytes) -> None:
        """The whole file: a reader sees all of it or the one before."""
        raise NotImplementedError

    def names(self, folder: str) -> list[str]:
        """The names of the files in a folder of the job (none when it has no such folder)."""
        raise NotImplementedError

    def remove(self, name: str) -> None:
        raise NotImplementedError

    def lock(self, state_dir: Path) -> Any:
        """Hold the job for one `job run` (a flock, released when the process ends however it
        ends); another run of the same job is refused. A local job's lock is its
        `job.lock`; an object store has no flock, so a URL's is in this machine's state dir
        (two runs of one job from two machines are not told apart)."""
        import fcntl

        path = self._lock_path(state_dir)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")  # noqa: SIM115 - held until released
        except OSError as exc:
            where = exc.filename or path
            raise HalftunesError(f"cannot use {where}: {exc.strerror}") from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise HalftunesError(
                f"another `halftunes job run` is running the job in {self.location}",
                "wait for it to end (or stop it), then run this again",
            ) from None
        return handle

    def _lock_path(self, state_dir: Path) -> Path:
        return Path(state_dir) / "jobs" / f"{self.key}.lock"


class LocalStore(JobStore):
    def __init__(self, folder: Path, shared: bool = False):
        self.dir = Path(os.path.abspath(folder))
        self.location = f"file://{self.dir}" if shared else str(self.dir)
        self.shared = shared

    def read(self, name: str) -> str | None:
        try:
            return (self.dir / name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise HalftunesError(f"cannot read {self.dir / name}: {exc}") from exc

    def read_many(self, names: list[str]) -> dict[str, str | None]:
        return {name: self.read(name) for name in names}

    def write(self, name: str, data: str | bytes) -> None:
        try:
            write_atomically(self.dir / name, data)
        except OSError as exc:
            raise HalftunesError(f"cannot write {self.dir / name}: {exc.strerror}") from exc

    def names(self, folder: str) -> list[str]:
        try:
            return sorted(
                p.name for p in (self.dir / folder).iterdir() if not p.name.startswith(".")
            )
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise HalftunesError(f"cannot list {self.dir / folder}: {exc.strerror}") from exc

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / name).unlink()

    def _lock_path(self, state_dir: Path) -> Path:
        return self.dir / "job.lock"


class ObjectStore(JobStore):
    """A job under an fsspec URL: every write one PUT of the whole file. Any failure of the
    store (unreachable, no such bucket, refused) is a HalftunesError that names the file."""

    def __init__(self, url: str):
        self.location = url
        self.shared = True
        self.fs = filesystem(url)
        self.root = self.fs._strip_protocol(url).rstrip("/")

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def read(self, name: str) -> str | None:
        try:
            data: bytes = self.fs.cat_file(self._path(name))
            return data.decode("utf-8")
        except FileNotFoundError:
            return None
        except Exception as exc:  # (the store's driver raises its own kinds: botocore's...)
            raise HalftunesError(f"cannot read {self.location}/{name}: {_said(exc)}") from exc

    def read_many(self, names: list[str]) -> dict[str, str | None]:
        """Many files at once (the driver fetches them side by side); None for a missing one."""
        if not names:
            return {}
        paths = {self._path(n): n for n in names}
        try:
            found = self.fs.cat(list(paths), on_error="return")
        except Exception as exc:
            raise HalftunesError(f"cannot read {self.location}: {_said(exc)}") from exc
        out: dict[str, str | None] = {}
        for path, name in paths.items():
            data = found.get(path, found.get(self.fs._strip_protocol(path)))
            if data is None or isinstance(data, FileNotFoundError):
                out[name] = None
            elif isinstance(data, BaseException):
                raise HalftunesError(f"cannot read {self.location}/{name}: {_said(data)}")
            else:
                try:
                    out[name] = data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise HalftunesError(f"cannot read {self.location}/{name}: {exc}") from exc
        return out

    def write(self, name: str, data: str | bytes) -> None:
        body = data.encode("utf-8") if isinstance(data, str) else data
        try:
            self.fs.pipe_file(self._path(name), body)
        except Exception as exc:
            raise HalftunesError(f"cannot write {self.location}/{name}: {_said(exc)}") from exc

    def names(self, folder: str) -> list[str]:
        try:
            found = self.fs.ls(self._path(folder), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise HalftunesError(f"cannot list {self.location}/{folder}: {_said(exc)}") from exc
        return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in found)

    def remove(self, name: str) -> None:
        try:
            self.fs.rm_file(self._path(name))
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise HalftunesError(f"cannot remove {self.location}/{name}: {_said(exc)}") from exc


def _said(exc: BaseException) -> str:
    """A driver's error in a few words (botocore's carry their own sentence)."""
    return str(exc) or type(exc).__name__


def write_atomically(path: Path, data: str | bytes) -> None:
    """A temp file in the same folder, fsync, rename: a reader sees all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
