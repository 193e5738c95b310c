"""The checkpointer: one thread per process that makes partials durable (fsync) and then
records their length, so the threads that receive bytes never wait for the disk.

Order is the whole point: the length recorded is taken before the fsync that covers it, so a
record never claims a byte the disk may not have. A receiving thread waits only when its
transfer runs more than `MAX_DIRTY_BYTES` ahead of the disk.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

# How far a transfer may run ahead of its last durable checkpoint before its receiving
# thread waits for the disk: a bound on the bytes a power cut can cost, and on dirty memory.
MAX_DIRTY_BYTES = 64 << 20

log = logging.getLogger(__name__)
Job = Callable[[], None]


class Checkpointer:
    def __init__(self, name: str = "checkpointer") -> None:
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._name = name
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
        self._jobs.put(job)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception:  # a job reports its own errors; the thread must go on
                log.exception("checkpoint failed")


_shared = Checkpointer()


def shared_checkpointer() -> Checkpointer:
    """The process's checkpointer (every transfer of every session shares one disk queue)."""
    return _shared
