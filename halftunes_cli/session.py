"""`Session`, the NSURLSession facade: a configuration, a delegate, task factories, and the
executor behind them (tasks on threads in this process, or the background worker)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .background import BackgroundDownloadTask, reattach
from .config import SessionConfiguration
from .records import Records
from .retry import RetryPolicy
from .store import Store
from .tasks import DataTask, DownloadTask, ResumeData, Task, UploadTask
from .tasks.partial import recover_partial
from .transport import HttpClient

if TYPE_CHECKING:
    import requests


T = TypeVar("T", bound=Task)


class Session:
    """Like NSURLSession: `Session(SessionConfiguration.default(), delegate=...)`."""

    def __init__(
        self,
        configuration: SessionConfiguration | None = None,
        delegate: Any = None,
        records: Records | None = None,
        environment: dict[str, str] | None = None,
    ):
        self.configuration = configuration or SessionConfiguration.default()
        self.delegate = delegate
        self.http = HttpClient(self.configuration, environment)
        cfg = self.configuration
        self.retry_policy = RetryPolicy(
            cfg.retries, cfg.backoff_base_seconds, cfg.backoff_max_seconds
        )
        self._records = records
        self._lock = threading.Lock()
        self._tasks: list[Task] = []
        self._ids = itertools.count(1)

    # -- what tasks need of their session (TaskHost) -----------------------------------------
    def next_task_identifier(self) -> int:
        with self._lock:
            return next(self._ids)

    def call_delegate(self, name: str, *args: Any) -> Any:
        method = getattr(self.delegate, name, None) if self.delegate is not None else None
        if method is not None:
            return method(*args)
        return None

    @property
    def records(self) -> Records:
        """The download records of this session's state dir (in memory when ephemeral)."""
        with self._lock:
            if self._records is None:
                cfg = self.configuration
                state_dir = Path(cfg.state_dir) if cfg.persists_state else None
                self._records = Records(Store(state_dir), recover_partial)
            return self._records

    @property
    def cache(self) -> Store | None:
        """Where search answers and tracks are cached (None for the ephemeral session)."""
        return self.records.store if self.configuration.persists_state else None

    def fetch(
        self, url: str, *, retry_statuses: frozenset[int] | None = None, max_bytes: int = 16 << 20
    ) -> tuple[int, bytes, Any]:
        """GET `url` with a data task on this thread; (status, body, headers), or the task's
        error."""
        kw: dict[str, Any] = {"max_bytes": max_bytes}
        if retry_statuses is not None:
            kw["retry_statuses"] = retry_statuses
        task = DataTask(self, url, **kw)
        task.run()
        if task.error is not None:
            raise task.error
        assert task.response is not None and task.data is not None
        return task.response.status_code, task.data, task.response.headers

    def open(
        self, method: str, url: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> requests.Response:
        """One HTTP exchange with this session's client (no retries, no task)."""
        return self.http.send(method, url, headers, **kw)

    # -- task factories (tasks start suspended) -----------------------------------------------
    def _register(self, task: T) -> T:
        with self._lock:
            self._tasks.append(task)
        return task

    def data_task(self, url: str, completion: Callable | None = None, **kw: Any) -> DataTask:
        return self._register(DataTask(self, url, completion=completion, **kw))

    def download_task(
        self,
        url: str,
        destination: str | Path | None = None,
        completion: Callable | None = None,
        **kw: Any,
    ) -> DownloadTask | BackgroundDownloadTask:
        if self.configuration.is_background:
            return self._register(BackgroundDownloadTask(self, url, destination, completion))
        return self._register(DownloadTask(self, url, destination, completion=completion, **kw))

    def download_task_with_resume_data(
        self, resume_data: ResumeData, completion: Callable | None = None, **kw: Any
    ) -> DownloadTask | BackgroundDownloadTask:
        if self.configuration.is_background:
            # The record of that URL holds the checkpoint: resuming it re-queues it there.
            task: DownloadTask | BackgroundDownloadTask = BackgroundDownloadTask(
                self, resume_data.url, resume_data.destination, completion
            )
        else:
            task = DownloadTask(
                self,
                resume_data.url,
                resume_data.destination,
                completion=completion,
                resume_data=resume_data,
                **kw,
            )
        return self._register(task)

    def upload_task(
        self,
        url: str,
        file_path: str | Path,
        method: str = "PUT",
        headers: dict[str, str] | None = None,
        completion: Callable | None = None,
    ) -> UploadTask:
        return self._register(
            UploadTask(self, url, Path(file_path), method, headers, completion=completion)
        )

    # -- the session as a whole ---------------------------------------------------------------
    def all_tasks(self) -> list[Any]:
        if self.configuration.is_background:
            return reattach(self)
        with self._lock:
            return list(self._tasks)

    def invalidate_and_cancel(self) -> None:
        for task in self.all_tasks():
            task.cancel()
        self.close()

    def finish_tasks_and_invalidate(self) -> None:
        with self._lock:
            tasks = list(self._tasks)
        for task in tasks:
            task.wait()
        self.close()

    def close(self) -> None:
        self.http.close()
        with self._lock:
            if self._records is not None:
                self._records.close()
                self._records = None


__all__ = ["Session"]
