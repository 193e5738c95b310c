"""`DataTask`: GET a resource into memory; completion(data, response, error)."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import TransferError
from ..retry import RETRYABLE_STATUSES
from ..transport import iter_body
from .base import Task, TaskHost, TaskState


class DataTask(Task):
    def __init__(
        self,
        session: TaskHost,
        url: str,
        completion: Callable | None = None,
        retry_statuses: frozenset[int] = RETRYABLE_STATUSES,
        max_bytes: int = 64 << 20,
    ):
        super().__init__(session, url, completion)
        self.data: bytes | None = None
        self.retry_statuses = retry_statuses
        self.max_bytes = max_bytes

    def _execute(self) -> None:
        response = self._send("GET", retry_statuses=self.retry_statuses)
        self.response = response
        body = bytearray()
        try:
            with response:
                for chunk in iter_body(response, 64 * 1024, self.url):
                    self._check_stop()
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise TransferError(
                            f"response from {self.url} is larger than "
                            f"{self.max_bytes} bytes; refusing to buffer it"
                        )
        finally:
            self._end_of_body(len(body))
        self.data = bytes(body)
        self._tell("on_data_received", self.data)
        self._move(TaskState.COMPLETED)
        self._complete()
