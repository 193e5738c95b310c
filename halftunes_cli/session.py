"""`Session`: holds a configuration and one pooled HTTP client, creates tasks, calls delegates."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import SessionConfiguration
from .errors import (
    AuthenticationRequired,
    HalftunesError,
    HTTPStatusError,
    TransferError,
    UnsupportedURLError,
)
from .ranges import RETRYABLE_STATUSES, parse_retry_after

if TYPE_CHECKING:
    import requests

    from .store import Store
    from .tasks import DataTask, DownloadTask, ResumeData, UploadTask

USER_AGENT = f"halftunes/{__version__}"


def _build_http(config: SessionConfiguration) -> requests.Session:
    import requests
    from requests.adapters import HTTPAdapter

    class _CheckedSession(requests.Session):
        """A requests session that applies the plain-http rule to every redirect."""

        def get_redirect_target(self, resp):  # type: ignore[override]
            target = super().get_redirect_target(resp)
            if target:
                from urllib.parse import urljoin

                config.check_url(urljoin(resp.url, target))
            return target

    http = _CheckedSession()
    pool = config.max_connections_per_host
    adapter = HTTPAdapter(pool_connections=8, pool_maxsize=pool, max_retries=0)
    http.mount("https://", adapter)
    http.mount("http://", HTTPAdapter(pool_connections=8, pool_maxsize=pool, max_retries=0))
    from .protocols import FileAdapter

    http.mount("file://", FileAdapter())
    for prefix, handler in config.protocol_classes.items():
        http.mount(prefix, handler() if isinstance(handler, type) else handler)
    http.headers["User-Agent"] = USER_AGENT
    http.headers.update(config.headers)
    if config.is_ephemeral:
        # No .netrc for the ephemeral session: a no-op auth stops requests from reading it.
        http.auth = lambda request: request
    elif config.state_dir is not None:
        from http.cookiejar import LWPCookieJar

        jar = LWPCookieJar(str(Path(config.state_dir) / "cookies.txt"))
        try:
            jar.load(ignore_discard=True)
        except (OSError, ValueError):
            pass
        http.cookies = jar  # type: ignore[assignment]
    return http


def translate_request_error(exc: Exception, url: str) -> HalftunesError:
    """The one boundary where requests/urllib3 errors become ours."""
    import requests
    import urllib3

    if isinstance(exc, HalftunesError):
        return exc
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return TransferError(f"timed out reading from {url}", "the server stalled")
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return TransferError(f"connection to {url} broke: {_root_reason(exc)}")
    if isinstance(exc, requests.exceptions.SSLError):
        return TransferError(
            f"TLS verification failed for {url}",
            "for a private CA set REQUESTS_CA_BUNDLE to its certificate file",
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return TransferError(f"timed out talking to {url}", "the server stalled; try again later")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return TransferError(f"could not connect to {url}: {_root_reason(exc)}")
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return UnsupportedURLError(f"invalid URL {url!r}")
    if isinstance(exc, requests.exceptions.InvalidSchema):
        return UnsupportedURLError(f"unsupported URL scheme in {url!r}")
    if isinstance(exc, requests.exceptions.RequestException):
        return TransferError(f"request to {url} failed: {_root_reason(exc)}")
    if isinstance(exc, OSError):
        return TransferError(f"I/O error for {url}: {exc.strerror or exc}")
    return TransferError(f"{type(exc).__name__}: {exc}")


def authentication_required(url: str) -> AuthenticationRequired:
    return AuthenticationRequired(
        f"authentication required for {url} (HTTP 401)",
        "add the host to ~/.netrc, or answer on_challenge in your delegate",
    )


def _root_reason(exc: BaseException) -> str:
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    text = str(seen) or type(seen).__name__
    if "Connection refused" in text:
        return "connection refused"
    return text if len(text) < 160 else text[:157] + "..."


class Session:
    """Like NSURLSession: `Session(SessionConfiguration.default(), delegate=...)`."""

    def __init__(
        self,
        configuration: SessionConfiguration | None = None,
        delegate: Any = None,
        store: Store | None = None,
    ):
        self.configuration = configuration or SessionConfiguration.default()
        self.delegate = delegate
        self._store = store
        self._http: requests.Session | None = None
        self._lock = threading.Lock()
        self._tasks: list[Any] = []
        self._next_id = 0
        self.log: Callable[[str], None] = lambda message: None  # -v wires this to stderr

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def http(self) -> requests.Session:
        with self._lock:
            if self._http is None:
                self._http = _build_http(self.configuration)
            return self._http

    @property
    def store(self) -> Store:
        if self._store is None:
            from .store import Store

            persistent = self.configuration.persists_state
            self._store = Store(Path(self.configuration.state_dir) if persistent else None)
        return self._store

    def _new_task_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    def _register(self, task: Any) -> None:
        with self._lock:
            self._tasks.append(task)

    def all_tasks(self) -> list[Any]:
        if self.configuration.is_background:
            from .background import reattach

            return reattach(self)
        with self._lock:
            return list(self._tasks)

    def call_delegate(self, name: str, *args: Any) -> Any:
        method = getattr(self.delegate, name, None) if self.delegate is not None else None
        if method is not None:
            return method(*args)
        return None

    def backoff_seconds(self, attempt: int, retry_after: float | None) -> float:
        cfg = self.configuration
        if retry_after is not None:
            return min(retry_after, cfg.backoff_max_seconds * 4)
        delay = min(cfg.backoff_max_seconds, cfg.backoff_base_seconds * 2 ** (attempt - 1))
        return delay * random.uniform(0.75, 1.0)

    def open(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        *,
        data: Any = None,
        auth: Any = None,
        stream: bool = True,
    ) -> requests.Response:
        """One HTTP exchange (no retries): the I/O seam every task goes through."""
        self.configuration.check_url(url)
        timeout = self.configuration.request_timeout
        self.log(f"> {method} {url} {dict(headers or {})}")
        response = self.http.request(
            method,
            url,
            headers=headers,
            data=data,
            auth=auth,
            stream=stream,
            timeout=(min(timeout, 30.0), timeout),
            allow_redirects=True,
        )
        self.log(f"< {response.status_code} {url}")
        return response

    def send_with_retries(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        *,
        data_factory: Callable[[], Any] | None = None,
        stop: threading.Event | None = None,
        retry_statuses: frozenset[int] = RETRYABLE_STATUSES,
        on_challenge: Callable[[requests.Response], Any] | None = None,
    ) -> requests.Response:
        """Send with the retry policy: only idempotent methods are ever sent twice."""
        import requests

        idempotent = method.upper() in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
        attempt = 0
        auth = None
        challenged = False
        while True:
            attempt += 1
            try:
                data = data_factory() if data_factory is not None else None
                response = self.open(method, url, headers, data=data, auth=auth, stream=True)
            except requests.exceptions.RequestException as exc:
                if isinstance(exc, requests.exceptions.SSLError) or not idempotent:
                    raise translate_request_error(exc, url) from None
                if attempt > self.configuration.retries:
                    raise translate_request_error(exc, url) from None
                self.log(f"retry {attempt} after {_root_reason(exc)}")
                if self._sleep(self.backoff_seconds(attempt, None), stop):
                    raise
                continue
            if response.status_code == 401 and not challenged:
                challenged = True
                answer = on_challenge(response) if on_challenge else None
                if answer is not None:
                    response.close()
                    auth = answer
                    attempt -= 1
                    continue
            if response.status_code == 401:
                response.close()
                raise authentication_required(url)
            if response.status_code in retry_statuses and idempotent:
                if attempt <= self.configuration.retries:
                    wait = self.backoff_seconds(
                        attempt, parse_retry_after(response.headers.get("Retry-After"))
                    )
                    self.log(f"retry {attempt} after HTTP {response.status_code} in {wait:.1f}s")
                    response.close()
                    if self._sleep(wait, stop):
                        raise TransferError("stopped")
                    continue
            return response

    @staticmethod
    def _sleep(seconds: float, stop: threading.Event | None) -> bool:
        """Sleep unless stopped; True when stopped."""
        if stop is None:
            time.sleep(seconds)
            return False
        return stop.wait(seconds)

    def save_cookies(self) -> None:
        if self._http is None or self.configuration.is_ephemeral:
            return
        jar = self._http.cookies
        if hasattr(jar, "save") and len(jar):
            import os

            try:
                jar.save(ignore_discard=True)
                os.chmod(jar.filename, 0o600)
            except OSError:
                pass

    def invalidate_and_cancel(self) -> None:
        for task in self.all_tasks():
            task.cancel()
        self.close()

    def finish_tasks_and_invalidate(self) -> None:
        for task in list(self._tasks):
            task.wait()
        self.close()

    def close(self) -> None:
        self.save_cookies()
        if self._http is not None:
            self._http.close()
            self._http = None

    # -- task factories (tasks start suspended) -----------------------------------------------
    def data_task(self, url: str, completion: Callable | None = None, **kw: Any) -> DataTask:
        from .tasks import DataTask

        task = DataTask(self, url, completion=completion, **kw)
        self._register(task)
        return task

    def download_task(
        self, url: str, destination: str | Path | None = None, completion: Callable | None = None,
        **kw: Any,
    ) -> DownloadTask:  # fmt: skip
        if self.configuration.is_background:
            from .background import BackgroundDownloadTask

            task = BackgroundDownloadTask(self, url, destination, completion=completion)
        else:
            from .tasks import DownloadTask

            task = DownloadTask(self, url, destination, completion=completion, **kw)
        self._register(task)
        return task

    def download_task_with_resume_data(
        self, resume_data: ResumeData, completion: Callable | None = None, **kw: Any
    ) -> DownloadTask:
        from .tasks import DownloadTask

        task = DownloadTask(
            self, resume_data.url, resume_data.destination, completion=completion,
            resume_data=resume_data, **kw,
        )  # fmt: skip
        self._register(task)
        return task

    def upload_task(
        self, url: str, file_path: str | Path, method: str = "PUT",
        headers: dict[str, str] | None = None, completion: Callable | None = None,
    ) -> UploadTask:  # fmt: skip
        from .tasks import UploadTask

        task = UploadTask(self, url, Path(file_path), method, headers, completion=completion)
        self._register(task)
        return task


__all__ = ["Session", "HTTPStatusError", "translate_request_error"]
