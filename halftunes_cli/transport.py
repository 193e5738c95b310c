"""The HTTP client: one pooled requests session with checked redirects, cookies, abort.

Every request of every task goes through `HttpClient.send`, the one I/O seam. It sends once:
retrying is the task's business, by the policy in `retry`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from ._version import __version__
from .config import SessionConfiguration

if TYPE_CHECKING:
    import requests

USER_AGENT = f"halftunes/{__version__}"
log = logging.getLogger(__name__)


def _build(config: SessionConfiguration) -> requests.Session:
    import requests
    from requests.adapters import HTTPAdapter

    from .protocols import FileAdapter

    class _CheckedSession(requests.Session):
        """A requests session that applies the plain-http rule to every redirect."""

        def get_redirect_target(self, resp):  # type: ignore[override]
            target = super().get_redirect_target(resp)
            if target:
                config.check_url(urljoin(resp.url, target))
                log.debug("< %s redirect to %s", resp.status_code, urljoin(resp.url, target))
            return target

    http = _CheckedSession()
    pool = config.max_connections_per_host
    for prefix in ("https://", "http://"):
        http.mount(prefix, HTTPAdapter(pool_connections=8, pool_maxsize=pool, max_retries=0))
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
        with contextlib.suppress(OSError, ValueError):
            jar.load(ignore_discard=True)
        http.cookies = jar  # type: ignore[assignment]
    return http


class HttpClient:
    """Holds the pooled session of one `Session`; built on first use (keeps start-up fast)."""

    def __init__(self, configuration: SessionConfiguration):
        self.configuration = configuration
        self._http: requests.Session | None = None
        self._lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        with self._lock:
            if self._http is None:
                self._http = _build(self.configuration)
            return self._http

    def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        *,
        data: Any = None,
        auth: Any = None,
        stream: bool = True,
    ) -> requests.Response:
        """One HTTP exchange, redirects followed and checked; raises requests' errors."""
        self.configuration.check_url(url)
        timeout = self.configuration.request_timeout
        log.debug("> %s %s %s", method, url, dict(headers or {}))
        response = self.session.request(
            method,
            url,
            headers=headers,
            data=data,
            auth=auth,
            stream=stream,
            timeout=(min(timeout, 30.0), timeout),
            allow_redirects=True,
        )
        log.debug("< %s %s %s", response.status_code, response.reason or "", response.url)
        return response

    def save_cookies(self) -> None:
        if self._http is None or self.configuration.is_ephemeral:
            return
        jar = self._http.cookies
        if hasattr(jar, "save") and len(jar):
            with contextlib.suppress(OSError):
                jar.save(ignore_discard=True)
                os.chmod(jar.filename, 0o600)

    def close(self) -> None:
        self.save_cookies()
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None


def abort(response: Any) -> None:
    """Shut a response's socket from another thread: a blocked read returns at once."""
    if response is None:
        return
    raw = getattr(response, "raw", None)
    for getter in (
        lambda: raw._connection.sock,  # urllib3 2
        lambda: raw._fp.fp.raw._sock,  # http.client below it
    ):
        with contextlib.suppress(Exception):
            sock = getter()
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
                return


def chunk_reader(raw: Any) -> Callable[[int], bytes]:
    """Read what has arrived, up to n bytes, undecoded (byte ranges count encoded bytes)."""
    import urllib3

    if isinstance(raw, urllib3.HTTPResponse):
        return lambda n: raw.read1(n, decode_content=False)
    return raw.read  # a custom protocol handler's file-like body
