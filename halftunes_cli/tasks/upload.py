"""`UploadTask`: PUT or POST a file, streamed in constant memory; completion(data, response,
error); delegate on_data_sent."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import HTTPStatusError, UsageError
from ..transport import iter_body
from .base import Task, TaskHost, TaskState

# An upload's answer is kept up to this size (a status page, a JSON receipt); the rest of a
# larger one is never read.
REPLY_MAX_BYTES = 1 << 20


class _CountingFile:
    """Streams the file and reports on_data_sent as it goes."""

    def __init__(self, task: UploadTask, path: Path):
        self.task = task
        self.path = path
        self.total = path.stat().st_size
        self.sent = 0

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            while True:
                self.task._check_stop()
                chunk = f.read(256 * 1024)
                if not chunk:
                    return
                self.sent += len(chunk)
                self.task.bytes_sent = self.sent
                self.task._tell("on_data_sent", len(chunk), self.sent, self.total)
                yield chunk


class UploadTask(Task):
    def __init__(
        self,
        session: TaskHost,
        url: str,
        file_path: Path,
        method: str = "PUT",
        headers: dict[str, str] | None = None,
        completion: Callable | None = None,
    ):
        super().__init__(session, url, completion)
        method = method.upper()
        if method not in ("PUT", "POST"):
            raise UsageError(f"upload method must be PUT or POST, not {method}")
        if not file_path.is_file():
            raise UsageError(f"no such file: {file_path}")
        self.file_path = file_path
        self.method = method
        self.headers = dict(headers or {})
        self.bytes_sent = 0
        self.bytes_expected = file_path.stat().st_size
        self.data: bytes | None = None

    @property
    def label(self) -> str:
        return self.file_path.name

    @property
    def progress(self) -> tuple[int, int | None]:
        return self.bytes_sent, self.bytes_expected

    def _execute(self) -> None:
        headers = {"Content-Length": str(self.bytes_expected), **self.headers}
        headers.setdefault("Content-Type", "application/octet-stream")

        def body() -> Any:
            self.bytes_sent = 0
            return _CountingFile(self, self.file_path)

        response = self._send(self.method, headers, data_factory=body)
        self.response = response
        answer = bytearray()  # the server's answer, bounded as a data task's is
        try:
            with response:
                for chunk in iter_body(response, 64 * 1024, self.url):
                    answer += chunk[: REPLY_MAX_BYTES - len(answer)]
                    if len(answer) >= REPLY_MAX_BYTES:
                        break  # (closing drops the rest with the connection)
        finally:
            self._end_of_body(len(answer))
        self.data = bytes(answer)
        if response.status_code >= 400:
            raise HTTPStatusError(response.status_code, self.url)
        self._move(TaskState.COMPLETED)
        self._complete()
