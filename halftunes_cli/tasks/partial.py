"""`PartialFile`: the `.part` file of one download: its one writer (a held lock), where to
start, appending, checkpoints, and the size-checked atomic rename to the final name."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..errors import DiskError, TransferError, disk_error
from ..liveness import PartialBusy, PartialLock
from .checkpointer import MAX_DIRTY_BYTES, Checkpointer

CHECKPOINT_SECONDS = 1.0
# In durability = power-cut, writeback of each finished WRITEBACK_BYTES of a partial is
# started at once (Linux sync_file_range), so the disk works while bytes still arrive and a
# checkpoint's fsync finds little left to write.
WRITEBACK_BYTES = 8 << 20
CHUNK_BYTES = 1 << 20  # the most one read of a body takes

_buffers = threading.local()


def receive_buffer() -> memoryview:
    """This thread's buffer for a body's bytes, CHUNK_BYTES long, made once per thread and
    used by one body at a time (its bytes are written before the next read). A fresh
    megabyte per transfer was an allocation the size of glibc's mmap threshold: with the
    threshold fixed (a Dask worker sets MALLOC_TRIM_THRESHOLD_), every small file paid
    for 256 page faults and a munmap."""
    view: memoryview | None = getattr(_buffers, "view", None)
    if view is None:
        view = _buffers.view = memoryview(bytearray(CHUNK_BYTES))
    return view


class OverlapMismatch(Exception):
    """Bytes an answer sent again differ from the partial's: the server's copy changed."""


class PartialShrank(Exception):
    """The partial lost bytes under us (deleted or cut while paused): never append after a hole."""


class PartialFile:
    """Bytes go here first. `synced` is the length known to be on disk (fsynced); the record
    never claims more than that.

    Writes go straight to the kernel (no user-space buffer), so a checkpoint can be taken
    from another thread (`checkpoint_async`): it notes the length, fsyncs a duplicate of the
    descriptor, and only then moves `synced` up and calls back (the journal).

    Every change to the file (create, truncate, write, rename, delete) happens while this
    object holds the partial's lock (`liveness.PartialLock`), from the first change until
    `release`: another process that wants to write it is refused (`PartialBusy`). A failed
    fsync is an error (`DiskError`), never a checkpoint."""

    def __init__(
        self,
        path: Path,
        synced: int = 0,
        clock: Callable[[], float] = time.monotonic,
        checkpoint_seconds: float = CHECKPOINT_SECONDS,
        mode: int | None = None,
        durable: bool = True,
        fsync: Callable[[int], None] | None = None,
        checkpointer: Checkpointer | None = None,
        writeback: Callable[[int, int, int], None] | None = None,
    ):
        """`mode`: the permission bits of a file this creates (None: the umask decides).
        `durable` False (durability = crash): never fsync.
        `checkpointer` and `writeback(fd, offset, length)` (power-cut only): each finished
        WRITEBACK_BYTES is handed to the checkpointer to start its writeback."""
        self.path = Path(path)
        self.mode = mode
        self.durable = durable
        self._fsync = (fsync or os.fsync) if durable else (lambda fd: None)
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self.length = synced  # bytes in the file as far as we know
        self.synced = synced
        self._clock = clock
        self._checkpoint_seconds = checkpoint_seconds
        self._last_checkpoint = clock()
        self._file: BinaryIO | None = None
        self._written_back = synced  # writeback started for bytes before this offset
        self._checkpointer = checkpointer
        self._writeback = writeback
        self._owner = PartialLock(self.path)
        self._sync_error: OSError | None = None  # a background fsync that failed

    # -- the one writer ----------------------------------------------------------------------
    def acquire(self, create: bool = True) -> bool:
        """Become the partial's one writer (False: there is no partial and `create` is
        False). Raises PartialBusy when another process writes it."""
        try:
            return self._owner.acquire(create)
        except OSError as exc:
            raise disk_error(exc, self.path) from exc

    @property
    def is_owned(self) -> bool:
        return self._owner.is_held

    def release(self) -> None:
        """Close the partial and give up the right to write it (the task has ended)."""
        self.close()
        self._owner.release()

    def _open_for_writing(self) -> BinaryIO:
        """The partial opened for writing, once we are its writer (the same file we lock)."""
        self.acquire(create=True)
        try:
            f = open(self.path, "r+b", buffering=0)  # noqa: SIM115 - kept open while writing
        except OSError as exc:
            raise disk_error(exc, self.path) from exc
        held, opened = os.fstat(self._owner.fd or 0), os.fstat(f.fileno())
        if (held.st_dev, held.st_ino) != (opened.st_dev, opened.st_ino):
            f.close()
            raise DiskError(
                f"{self.path} was replaced by another program while halftunes wrote it",
                "`halftunes resume` starts it again",
            )
        return f

    def starting_offset(self, bytes_total: int | None) -> int:
        """Bytes we may append to: the partial's length up to `synced`, the length its record
        vouches for (bytes past it may not be on disk); 0 when the partial is longer than the
        whole resource (then it is not this resource's). The rest is cut."""
        if not self.acquire(create=False):
            self.length = self.synced = 0
            return 0
        try:
            size = os.fstat(self._owner.fd or 0).st_size
        except OSError as exc:
            raise disk_error(exc, self.path) from exc
        keep = min(size, self.synced)  # never append after bytes the record does not vouch for
        if bytes_total is not None and size > bytes_total:
            keep = 0
        if keep != size:
            self.truncate(keep)
        self.length = self.synced = keep
        return keep

    def truncate(self, length: int) -> int:
        """Cut to `length` (durably) and continue from there."""
        self.wait_for_checkpoint()
        f = self._open_for_writing()
        try:
            with f:
                self._set_mode(f)
                f.truncate(length)
                self._fsync(f.fileno())
        except OSError as exc:
            raise disk_error(exc, self.path) from exc
        self.length = self.synced = length
        return length

    # -- appending -------------------------------------------------------------------------
    def open_at(self, offset: int) -> None:
        """Open for appending at `offset`. A new partial is created empty, and an existing one
        is cut only when it is longer than `offset` (a needless truncate makes ext4 flush the
        whole file on close)."""
        self.wait_for_checkpoint()
        f = self._open_for_writing()
        try:
            self._set_mode(f)
            size = os.fstat(f.fileno()).st_size
            if size < offset:
                f.truncate(0)
                self.length = self.synced = 0
                raise PartialShrank(f"{self.path} shrank while paused: restarting from 0")
            f.seek(offset)
            if size > offset:
                f.truncate(offset)
        except BaseException:
            f.close()
            raise
        self._file = f
        self.length = self._written_back = offset
        self._last_checkpoint = self._clock()

    # -- written in place, by segments (several connections) --------------------------------
    def open_segments(self, total: int, fresh: bool) -> None:
        """Open for writing ranges in place (`write_at`). `fresh`: a new plan, the partial is
        cut to 0 and made `total` bytes long, sparse until filled; otherwise the partial must
        already be `total` bytes long (a segmented partial that is not was cut or replaced
        while paused: PartialShrank, the transfer starts again). Call only once the record
        says the partial is segmented: its length then vouches for nothing."""
        self.wait_for_checkpoint()
        f = self._open_for_writing()
        try:
            self._set_mode(f)
            size = os.fstat(f.fileno()).st_size
            if fresh:
                if size:
                    f.truncate(0)
                f.truncate(total)
            elif size != total:
                f.truncate(0)
                self.length = self.synced = 0
                raise PartialShrank(f"{self.path} changed size while paused: restarting from 0")
        except OSError as exc:
            f.close()
            raise disk_error(exc, self.path) from exc
        except BaseException:
            f.close()
            raise
        self._file = f

    def write_at(self, position: int, chunk: memoryview) -> None:
        """Write `chunk` at `position` (from any thread: pwrite shares no file position)."""
        assert self._file is not None
        if self._sync_error is not None:
            raise disk_error(self._sync_error, self.path) from self._sync_error
        fd = self._file.fileno()
        try:
            while chunk:
                written = os.pwrite(fd, chunk, position)
                chunk, position = chunk[written:], position + written
        except OSError as exc:
            raise disk_error(exc, self.path) from exc

    def write_back(self, position: int, length: int) -> None:
        """Start writeback of [position, position + length) on the checkpointer's thread (a
        hint, as for appending: a checkpoint's fsync then finds little left to write)."""
        if not self.durable or self._checkpointer is None or self._writeback is None:
            return
        assert self._file is not None
        try:
            fd = os.dup(self._file.fileno())
        except OSError:
            return  # a hint only (out of descriptors: the checkpoint's fsync does it all)
        writeback = self._writeback

        def job() -> None:
            try:
                writeback(fd, position, length)
            finally:
                os.close(fd)

        self._checkpointer.submit(job)

    def sync(self) -> None:
        """fsync what has been written in place (power-cut durability; crash: nothing)."""
        assert self._file is not None
        try:
            self._fsync(self._file.fileno())
        except OSError as exc:
            self._sync_error = exc
            raise disk_error(exc, self.path) from exc

    def _set_mode(self, f: BinaryIO) -> None:
        if self.mode is not None:
            os.fchmod(f.fileno(), self.mode)  # not subject to the umask

    def write(self, chunk: bytes | memoryview) -> None:
        assert self._file is not None
        if self._sync_error is not None:  # a checkpoint's fsync failed: the disk lies
            self._settle_after_error()
            raise disk_error(self._sync_error, self.path) from self._sync_error
        view = memoryview(chunk)
        try:
            while view:
                written = self._file.write(view)
                view = view[written:]
        except OSError as exc:
            self._settle_after_error()
            raise disk_error(exc, self.path) from exc
        self.length += len(chunk)
        if self.length - self._written_back >= WRITEBACK_BYTES:
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Early writeback of the bytes written since the last call, on the checkpointer's
        thread (submitting I/O costs CPU the receiving thread should not spend)."""
        start = self._written_back
        end = self._written_back = self.length
        self.write_back(start, end - start)

    def read_back(self, start: int, end: int) -> bytes:
        """The partial's bytes [start, end), read from disk (the overlap to compare)."""
        assert self._file is not None
        try:
            return os.pread(self._file.fileno(), end - start, start)
        except OSError as exc:
            raise disk_error(exc, self.path) from exc

    def compare(
        self,
        readinto: Callable[[memoryview], int],
        view: memoryview,
        start: int,
        end: int,
        stop: threading.Event,
        url: str,
        on_read: Callable[[int], object],
    ) -> None:
        """Read an answer's bytes [start, end) of the resource, which the partial already
        holds, and compare them with the partial's, a chunk at a time, before anything is
        written (the overlap check). Returns early when `stop` is set (the caller stops);
        `on_read(n)` hears each read. OverlapMismatch on a difference, TransferError when
        the body ends first."""
        expected = self.read_back(start, end)
        seen = 0
        while seen < len(expected) and not stop.is_set():
            n = readinto(view[: min(len(view), len(expected) - seen)])
            if not n:
                raise TransferError(f"{url}: connection closed before the resume point")
            on_read(n)
            if view[:n] != expected[seen : seen + n]:
                raise OverlapMismatch
            seen += n

    @property
    def is_checkpoint_due(self) -> bool:
        return self._clock() - self._last_checkpoint >= self._checkpoint_seconds

    @property
    def is_far_ahead(self) -> bool:
        """More than MAX_DIRTY_BYTES written since the last durable checkpoint."""
        return self.length - self.synced > MAX_DIRTY_BYTES

    def checkpoint(self) -> int:
        """fsync here and now (after any checkpoint under way), then `synced` moves up to
        what is on disk. For a stop, an error, the end of a transfer. A failed fsync raises
        DiskError and `synced` stays where the disk was last known to be."""
        self.wait_for_checkpoint()
        if self._sync_error is not None:
            raise disk_error(self._sync_error, self.path) from self._sync_error
        if self._file is not None:
            try:
                self._fsync(self._file.fileno())
            except OSError as exc:
                self._sync_error = exc
                raise disk_error(exc, self.path) from exc
        self.synced = self.length
        self._last_checkpoint = self._clock()
        return self.synced

    def checkpoint_async(
        self, checkpointer: Checkpointer, then: Callable[[int], object] | None = None
    ) -> None:
        """Have the checkpointer fsync what is written so far, then move `synced` up to it
        and call `then(synced)`: the receiving thread goes on writing meanwhile. One
        checkpoint per partial at a time; a call while one is under way does nothing."""
        with self._lock:
            if self._file is None or not self._idle.is_set():
                return
            fd = os.dup(self._file.fileno())
            length = self.length  # all of it is in the kernel: writes are unbuffered
            self._idle.clear()
            self._last_checkpoint = self._clock()

        def job() -> None:
            try:
                try:
                    self._fsync(fd)
                except OSError as exc:
                    self._sync_error = exc  # the receiving thread fails at its next write
                    return
                finally:
                    os.close(fd)
                with self._lock:
                    self.synced = max(self.synced, length)
                if then is not None:
                    then(length)
            finally:
                self._idle.set()

        checkpointer.submit(job)

    def wait_for_checkpoint(self) -> None:
        self._idle.wait()

    def close(self) -> None:
        self.wait_for_checkpoint()
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _settle_after_error(self) -> None:
        # A failed write may leave a short tail: what is in the file is still good bytes.
        assert self._file is not None
        with contextlib.suppress(OSError):
            self.length = os.fstat(self._file.fileno()).st_size

    # -- the end -----------------------------------------------------------------------------
    def finish(
        self, destination: Path, bytes_total: int | None, content_encoding: str | None = None
    ) -> int:
        """Check the size, then rename to the final name; returns the file's size.

        The data was fsynced at the last checkpoint, before the rename, so the final name can
        never show unwritten bytes. The rename itself is not fsynced (on ext4 that forces a
        journal commit per file): after a power cut it may be undone, and the download then
        shows as not finished and is fetched again, never as a corrupt file.

        It happens only while we are the partial's writer and its path still names the file
        we wrote; the lock is given up after it."""
        self.close()
        if not self.acquire(create=False) or not self._owner.is_current():
            raise DiskError(
                f"{self.path} was moved or replaced by another program while halftunes wrote it",
                "`halftunes resume` starts it again",
            )
        try:
            size = os.fstat(self._owner.fd or 0).st_size
        except OSError as exc:
            raise disk_error(exc, self.path) from exc
        if bytes_total is not None and size != bytes_total:
            raise TransferError(
                f"{destination.name}: size check failed ({size} of {bytes_total} bytes)"
            )
        if content_encoding is not None:
            self._decode(destination, content_encoding)
        else:
            try:
                os.replace(self.path, destination)
            except OSError as exc:
                raise DiskError(
                    f"cannot move the finished file to {destination}: {exc.strerror}"
                ) from exc
        self.length = self.synced = size
        self._owner.release()
        return size

    def _decode(self, destination: Path, content_encoding: str) -> None:
        """A body the server compressed although we asked for identity: the partial holds the
        encoded bytes (range offsets count those); the final file is the decoded resource,
        checked by the format's own length and checksum (gzip CRC32 + ISIZE, zlib Adler-32)."""
        import gzip
        import zlib

        decoding = destination.with_name(destination.name + ".decoding")
        try:
            with open(self.path, "rb") as src, open(decoding, "wb") as out:
                os.fchmod(out.fileno(), os.fstat(src.fileno()).st_mode & 0o777)
                if content_encoding in ("gzip", "x-gzip"):
                    with gzip.GzipFile(fileobj=src) as unzipped:
                        while block := unzipped.read(1 << 20):
                            out.write(block)
                else:  # deflate: a zlib stream (RFC 9110 8.4.1.2)
                    inflater = zlib.decompressobj()
                    while block := src.read(1 << 20):
                        out.write(inflater.decompress(block))
                    out.write(inflater.flush())
                    if not inflater.eof:
                        raise zlib.error("the deflate stream is incomplete")
                out.flush()
                self._fsync(out.fileno())
            os.replace(decoding, destination)
        except (OSError, EOFError, zlib.error) as exc:
            with contextlib.suppress(OSError):
                decoding.unlink()
            if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile):
                raise disk_error(exc, destination) from exc
            raise TransferError(
                f"{destination.name}: the server's {content_encoding} body does not decode ({exc})"
            ) from exc
        with contextlib.suppress(OSError):
            self.path.unlink()

    def discard(self) -> None:
        """Delete the partial (a cancelled download that no record owns), unless another
        process writes it."""
        self.close()
        with contextlib.suppress(OSError):
            if self._owner.is_held or self.acquire(create=False):
                self.path.unlink()
        self._owner.release()


def recover_partial(path: str, checkpoint: int, same_boot: bool, bytes_total: int | None) -> int:
    """How many bytes of a partial may be trusted after its owner stopped, made true.

    Same boot: everything the dead process wrote is in the page cache, so the partial's
    length is right; fsync it now and that length becomes the checkpoint. Another boot
    (power cut, reboot), or an fsync that fails: only the last checkpoint was surely on disk;
    cut the partial back to it. A partial that a live process writes after all is left alone
    (its checkpoint is what the record keeps). Done as the partial's writer (its lock)."""
    lock = PartialLock(path)
    try:
        if not lock.acquire(create=False):
            return 0
    except PartialBusy:
        return checkpoint
    except OSError:
        return 0
    try:
        size = os.fstat(lock.fd or 0).st_size
        if same_boot and (bytes_total is None or size <= bytes_total):
            with contextlib.suppress(OSError), open(path, "rb+") as f:
                os.fsync(f.fileno())
                return size
        keep = min(checkpoint, size)
        with contextlib.suppress(OSError), open(path, "rb+") as f:
            f.truncate(keep)
            os.fsync(f.fileno())
        return keep
    except OSError:
        return 0
    finally:
        lock.release()


def sync_group(partials: list[PartialFile]) -> dict[Path, OSError]:
    """Make several closed partials durable together: start writeback of all of them, then
    fsync each (the file system's journal commit of the first covers most of the others).
    A partial whose fsync succeeds has `synced` = its length; the others are returned with
    their error, by path."""
    errors: dict[Path, OSError] = {}
    held: list[tuple[PartialFile, int]] = []
    for part in partials:
        part.wait_for_checkpoint()
        fd = part._owner.fd  # the locked descriptor: the file we wrote, whatever its path
        if fd is None:
            errors[part.path] = FileNotFoundError(
                2, "the partial is no longer ours", str(part.path)
            )
            continue
        held.append((part, fd))
        if part.durable:
            with contextlib.suppress(OSError):
                start_writeback(fd, 0, 0)  # length 0: to the end of the file
    for part, fd in held:
        try:
            part._fsync(fd)
            part.length = part.synced = os.fstat(fd).st_size
        except OSError as exc:
            part._sync_error = exc
            errors[part.path] = exc
    return errors


SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback, do not wait for it


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing [offset, offset+length) of `fd` to the disk without
    waiting for it (Linux sync_file_range with SYNC_FILE_RANGE_WRITE; elsewhere nothing).
    A hint only: durability still comes from the checkpoint's fsync."""
    function = _sync_file_range()
    if function is not None:
        function(fd, offset, length, SYNC_FILE_RANGE_WRITE)  # errors: ignored, a hint


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range, from the symbols this process already has (the C library is
    loaded): no `ctypes.util.find_library`, which runs `ldconfig` in a child process, forked
    while transfers hold their partials open."""
    import ctypes  # (only where early writeback runs)

    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function
