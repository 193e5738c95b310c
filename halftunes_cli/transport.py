"""The HTTP client: one pooled requests session with checked redirects, cookies, abort, and
the one place where requests', urllib3's and http.client's exceptions become ours.

Every request of every task goes through `HttpClient.send`, the one I/O seam, and every body
is read through `body_reader` or `iter_body`: none of them lets a lower-layer exception out
(`map_error`, as httpx's `map_httpcore_exceptions` wraps both the send and the body). It
sends once: retrying is the caller's business, by the loop in `retry`.

The body reader uses two private attributes of urllib3 2 (`HTTPResponse._fp`, the
http.client response below it, and that one's `_close_conn`): pyproject pins urllib3 to
2.x, and tests/test_body_io.py runs against the oldest and newest 2.x in CI.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from ._version import __version__
from .config import SessionConfiguration
from .errors import (
    HalftunesError,
    TransferError,
    UnsupportedURLError,
    internal_error,
    shorten_url,
)
from .metrics import TransactionMetrics, now

if TYPE_CHECKING:
    import requests

USER_AGENT = f"halftunes/{__version__}"
log = logging.getLogger(__name__)
# A library logs; the application decides where to (the CLI's -v, the worker's log file).
logging.getLogger("halftunes_cli").addHandler(logging.NullHandler())
_current = threading.local()  # the RequestHandle of the request this thread is sending
# Task metrics are always measured; this switch exists for the benchmark (make bench S2),
# which runs the same transfers without them to show what measuring costs.
_MEASURING = os.environ.get("HALFTUNES_NO_METRICS") != "1"


class RequestHandle:
    """The socket of one request, so that another thread can stop it in any phase: while the
    TLS handshake runs, while the server thinks before its headers, or mid-body.

    A pooled socket passes from request to request: `abort` shuts only the sockets this
    handle still owns, so a late stop of a finished request never cuts the next request
    that took its connection over. (The TCP connect itself is not covered: a connect to a
    silent host ends at the connect timeout, at most 30 s.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (weakly: `_owners` maps each socket to its handle, so a strong reference back would
        # keep every socket ever opened, and its handle, alive)
        self._sockets: weakref.WeakSet[Any] = weakref.WeakSet()
        self.is_aborted = False
        # The task metrics of this exchange: one transaction per request (a redirect is one).
        self.transactions: list[TransactionMetrics] = []
        self.fetch_start: float | None = None

    def opening(self) -> TransactionMetrics:
        """The transaction a connect or a request belongs to: the open one, or a new one
        once the last has sent its request (the next hop of a redirect)."""
        last = self.transactions[-1] if self.transactions else None
        if last is not None and last.request_start is None:
            return last
        at = now()
        if last is not None and last.response_end is None:
            last.response_end = at  # (requests read and dropped the redirect's body)
        fresh = TransactionMetrics(fetch_start=self.fetch_start or at)
        self.fetch_start = None
        self.transactions.append(fresh)
        return fresh

    def end_of_body(self, body_bytes: int, url: str) -> None:
        """The task has read (or given up on) the last answer's body. (An answer that came
        through no connection of ours, a file:// or custom protocol handler's, is a
        transaction of its own, with no network phases.)"""
        if not _MEASURING:
            return
        if not self.transactions:
            self.transactions.append(TransactionMetrics(url=url, fetch_start=self.fetch_start))
        last = self.transactions[-1]
        if last.response_end is None:  # (said again, it keeps the first end)
            last.response_end = now()
        last.count_of_response_body_bytes_received = body_bytes

    def attach(self, sock: Any) -> None:
        if sock is None:
            return
        with _owners_lock:
            _owners[sock] = self
        with self._lock:
            self._sockets.add(sock)
            aborted = self.is_aborted
        if aborted:
            _shut(sock)

    def abort(self) -> None:
        with self._lock:
            self.is_aborted = True
            sockets = list(self._sockets)
        with _owners_lock:
            ours = [sock for sock in sockets if _owners.get(sock) is self]
        for sock in ours:
            _shut(sock)


_owners: weakref.WeakKeyDictionary[Any, RequestHandle] = weakref.WeakKeyDictionary()
_owners_lock = threading.Lock()  # which handle a socket serves now


def _shut(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _attach_current(sock: Any) -> None:
    handle = getattr(_current, "handle", None)
    if handle is not None:
        handle.attach(sock)


def _opening() -> TransactionMetrics | None:
    handle = getattr(_current, "handle", None) if _MEASURING else None
    return handle.opening() if handle is not None else None


def _open_now() -> TransactionMetrics | None:
    handle = getattr(_current, "handle", None) if _MEASURING else None
    return handle.transactions[-1] if handle is not None and handle.transactions else None


_PROTOCOLS = {9: "http/0.9", 10: "http/1.0", 11: "http/1.1"}


def _tracked_adapter(**kw: Any) -> Any:
    """A requests adapter whose connections tell the sending thread's RequestHandle their
    socket: when urllib3 makes one (before TLS) and when a pooled one is reused."""
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
    from urllib3.util.connection import allowed_gai_family

    class TrackedHTTPConnection(HTTPConnection):
        """Tells the RequestHandle its socket, and times each phase into its metrics."""

        _served: Any = None  # the socket that served this connection's last request
        _ends: tuple[str | None, int | None, str | None, int | None] = (None, None, None, None)
        _ends_of: Any = None  # the socket `_ends` describes

        def _new_conn(self) -> Any:
            metrics = _opening()
            if metrics is None:
                sock = super()._new_conn()
                _attach_current(sock)
                return sock
            sock = self._timed_connect(metrics)
            _attach_current(sock)
            metrics.connect_end = now()
            return sock

        def _timed_connect(self, metrics: TransactionMetrics) -> Any:
            """Resolve the name (timed on its own), then connect to each address in turn,
            as urllib3 would after resolving it itself."""
            host = self._dns_host
            metrics.domain_lookup_start = now()
            try:
                found = socket.getaddrinfo(
                    host.strip("[]"), self.port, allowed_gai_family(), socket.SOCK_STREAM
                )
            except socket.gaierror as exc:
                metrics.domain_lookup_end = now()
                raise NameResolutionError(self.host, self, exc) from exc
            except (OSError, UnicodeError):
                found = []  # (urllib3 says what is wrong with such a name)
            metrics.domain_lookup_end = metrics.connect_start = now()
            addresses = list(dict.fromkeys(str(info[4][0]) for info in found)) or [host]
            for i, address in enumerate(addresses):
                self._dns_host = address
                try:
                    return super()._new_conn()
                except (NewConnectionError, ConnectTimeoutError):
                    if i == len(addresses) - 1:
                        raise
                finally:
                    self._dns_host = host
            raise AssertionError("the loop returns or raises")

        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> None:
            metrics = _opening()
            if metrics is not None:
                metrics.url = url if "://" in url else f"{self._origin()}{url}"
                if self.sock is None:
                    self.connect()  # (http.client would, inside the request: timed apart)
                metrics.is_reused_connection = self._served is not None and (
                    self._served is self.sock
                )
                if self._ends_of is not self.sock:
                    self._ends, self._ends_of = _socket_ends(self.sock), self.sock
                address, port, local, local_port = self._ends
                metrics.remote_address, metrics.remote_port = address, port
                metrics.local_address, metrics.local_port = local, local_port
                metrics.is_proxy_connection = bool(self.proxy)
                metrics.request_start = now()
            _attach_current(self.sock)
            super().request(method, url, *args, **kwargs)
            self._served = self.sock
            if metrics is not None:
                metrics.request_end = now()

        def getresponse(self) -> Any:
            response = super().getresponse()
            metrics = _open_now()
            if metrics is not None:
                metrics.response_start = now()
                metrics.status_code = response.status
                metrics.network_protocol_name = _PROTOCOLS.get(response.version)
            return response

        def _origin(self) -> str:
            scheme = "https" if isinstance(self, HTTPSConnection) else "http"
            default = 443 if scheme == "https" else 80
            port = "" if self.port in (None, default) else f":{self.port}"
            return f"{scheme}://{self.host}{port}"

    class TrackedHTTPSConnection(TrackedHTTPConnection, HTTPSConnection):
        """(MRO: the tracking above, then HTTPS, then plain HTTP)"""

        def connect(self) -> None:
            super().connect()  # the TCP connect (ours, above), then the TLS handshake
            metrics = _open_now()
            if metrics is not None and metrics.connect_end is not None:
                metrics.secure_connection_start = metrics.connect_end
                metrics.secure_connection_end = metrics.connect_end = now()
                version = getattr(self.sock, "version", None)
                cipher = getattr(self.sock, "cipher", None)
                metrics.tls_protocol_version = version() if callable(version) else None
                suite = cipher() if callable(cipher) else None
                metrics.tls_cipher_suite = suite[0] if suite else None

    class TrackedHTTPPool(HTTPConnectionPool):
        ConnectionCls = TrackedHTTPConnection

    class TrackedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = TrackedHTTPSConnection

    class TrackedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {
                "http": TrackedHTTPPool,
                "https": TrackedHTTPSPool,
            }

    return TrackedAdapter(**kw)


def _socket_ends(sock: Any) -> tuple[str | None, int | None, str | None, int | None]:
    """(remote address, remote port, local address, local port) of a connected socket."""
    try:
        remote, local = sock.getpeername(), sock.getsockname()
    except (OSError, AttributeError):
        return None, None, None, None
    if not isinstance(remote, tuple) or not isinstance(local, tuple):
        return None, None, None, None  # (a Unix socket)
    return str(remote[0]), int(remote[1]), str(local[0]), int(local[1])


def _build(config: SessionConfiguration, environment: dict[str, str] | None) -> requests.Session:
    import requests

    from .protocols import FileAdapter

    class _CheckedSession(requests.Session):
        """A requests session that applies the plain-http rule to every redirect."""

        def get_redirect_target(self, resp: requests.Response) -> str | None:
            target = super().get_redirect_target(resp)
            if target:
                config.check_url(urljoin(resp.url, target))
                log.debug("< %s redirect to %s", resp.status_code, urljoin(resp.url, target))
            return target

    http = _CheckedSession()
    pool = config.max_connections_per_host
    for prefix in ("https://", "http://"):
        http.mount(prefix, _tracked_adapter(pool_connections=8, pool_maxsize=pool, max_retries=0))
    http.mount("file://", FileAdapter())
    for prefix, handler in config.protocol_classes.items():
        http.mount(prefix, handler() if isinstance(handler, type) else handler)
    http.headers["User-Agent"] = USER_AGENT
    http.headers.update(config.headers)
    if environment is not None:
        # This transfer's own CA bundle and proxies, not the process environment's.
        http.trust_env = False
        http.verify = (
            environment.get("REQUESTS_CA_BUNDLE") or environment.get("CURL_CA_BUNDLE") or True
        )
    if config.is_ephemeral:
        # No .netrc for the ephemeral session: a no-op auth stops requests from reading it.
        http.auth = lambda request: request
    elif config.state_dir is not None:
        from http.cookiejar import LWPCookieJar

        jar = LWPCookieJar(str(Path(config.state_dir) / "cookies.txt"))
        with contextlib.suppress(OSError, ValueError):
            jar.load(ignore_discard=True)
        http.cookies = jar  # type: ignore[assignment]  # (any CookieJar works; the stub says one kind)
    return http


class HostSlots:
    """How many connections a session holds per host: every download holds one while it runs
    (the runner's threads bound those), and a segmented download takes more only while the
    host's total stays within max_connections_per_host."""

    def __init__(self, limit: int):
        self.limit = limit
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}

    @contextlib.contextmanager
    def hold(self, host: str) -> Iterator[None]:
        with self._lock:
            self._held[host] = self._held.get(host, 0) + 1
        try:
            yield
        finally:
            self.give_back(host)

    def try_take(self, host: str) -> bool:
        with self._lock:
            if self._held.get(host, 0) >= self.limit:
                return False
            self._held[host] = self._held.get(host, 0) + 1
            return True

    def give_back(self, host: str) -> None:
        with self._lock:
            self._held[host] -= 1
            if not self._held[host]:
                del self._held[host]

    def held(self, host: str) -> int:
        with self._lock:
            return self._held.get(host, 0)


class HttpClient:
    """Holds the pooled session of one `Session`; built on first use (keeps start-up fast)."""

    def __init__(
        self, configuration: SessionConfiguration, environment: dict[str, str] | None = None
    ):
        """`environment`: CA bundle and proxy variables to use instead of the process's
        (a background transfer carries those of the command that queued it)."""
        self.configuration = configuration
        self.environment = environment
        self._http: requests.Session | None = None
        self._lock = threading.Lock()
        self.slots = HostSlots(configuration.max_connections_per_host)

    @property
    def session(self) -> requests.Session:
        with self._lock:
            if self._http is None:
                self._http = _build(self.configuration, self.environment)
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
        handle: RequestHandle | None = None,
    ) -> requests.Response:
        """One HTTP exchange, redirects followed and checked; raises our errors only
        (`map_error`).
        `handle.abort()` from another thread stops it in any phase after the connect."""
        self.configuration.check_url(url)
        timeout = self.configuration.request_timeout
        log.debug("> %s %s %s", method, url, dict(headers or {}))
        session = self.session
        extra = self._explicit_environment(url, auth) if self.environment is not None else {}
        if handle is not None:
            handle.fetch_start = now()
        _current.handle = handle
        try:
            response = session.request(
                method,
                url,
                headers=headers,
                data=data,
                stream=stream,
                timeout=(min(timeout, 30.0), timeout),
                allow_redirects=True,
                **{"auth": auth, **extra},
            )
        except _lower_layer_errors() as exc:
            raise map_error(exc, url) from exc
        finally:
            _current.handle = None
        log.debug("< %s %s %s", response.status_code, response.reason or "", response.url)
        return response

    def _explicit_environment(self, url: str, auth: Any) -> dict[str, Any]:
        """Proxies (honouring NO_PROXY) and .netrc, as requests would take them from the
        environment, but from this transfer's own."""
        from requests.utils import get_netrc_auth, should_bypass_proxies

        env = self.environment or {}

        def pick(name: str) -> str | None:
            return env.get(name.lower()) or env.get(name.upper())

        out: dict[str, Any] = {"proxies": {}}
        if not should_bypass_proxies(url, no_proxy=pick("no_proxy") or ""):
            out["proxies"] = {
                scheme: value
                for scheme, value in (
                    ("http", pick("http_proxy")),
                    ("https", pick("https_proxy")),
                    ("all", pick("all_proxy")),
                )
                if value
            }
        if auth is None and not self.configuration.is_ephemeral:
            out["auth"] = get_netrc_auth(url)  # None when .netrc has nothing for the host
        return out

    def save_cookies(self) -> None:
        if self._http is None or self.configuration.is_ephemeral:
            return
        jar = self._http.cookies
        if hasattr(jar, "save") and len(jar):
            with contextlib.suppress(OSError):
                jar.save(ignore_discard=True)
                os.chmod(jar.filename, 0o600)  # type: ignore[attr-defined]  # (an LWPCookieJar)

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
    connection = getattr(getattr(response, "raw", None), "connection", None)  # urllib3 2
    sock = getattr(connection, "sock", None)
    if sock is not None:
        _shut(sock)


def body_reader(raw: Any, url: str) -> Callable[[memoryview], int]:
    """`readinto(view) -> n`: what has arrived of the body, up to len(view) bytes, undecoded
    (byte ranges count encoded bytes), into the caller's buffer; 0 at the end. A broken
    connection raises TransferError (`map_error`).

    For a plain (not chunked) HTTP/1.1 body the bytes go from the socket straight into the
    caller's reused buffer, one receive call per read: no new bytes object (and no fresh
    pages to fault in) per chunk. Anything else (chunked bodies, custom protocol handlers)
    is read the ordinary way and copied in."""
    import http.client

    import urllib3

    read: Callable[[memoryview], int]
    if isinstance(raw, urllib3.HTTPResponse):
        inner = getattr(raw, "_fp", None)
        if (
            isinstance(inner, http.client.HTTPResponse)
            and not inner.chunked
            and hasattr(inner.fp, "readinto1")
            and raw.tell() == 0
        ):
            read = _DirectBody(raw, inner).readinto
        else:
            read = _copying(lambda n: raw.read1(n, decode_content=False))
    else:
        read = _copying(raw.read)  # a custom protocol handler's file-like body
    errors = _lower_layer_errors()

    def readinto(view: memoryview) -> int:
        try:
            return read(view)
        except errors as exc:
            raise map_error(exc, url) from exc

    return readinto


def iter_body(response: Any, chunk_bytes: int, url: str) -> Iterator[bytes]:
    """The body in chunks (decoded as the server encoded it); a broken connection raises
    TransferError."""
    errors = _lower_layer_errors()
    chunks = response.iter_content(chunk_bytes)
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            return
        except errors as exc:
            raise map_error(exc, url) from exc
        yield chunk


def _lower_layer_errors() -> tuple[type[BaseException], ...]:
    """What requests, urllib3, http.client and sockets raise (requests' own errors are
    OSErrors too)."""
    import http.client

    import urllib3

    return (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException)


# -- the translation boundary -----------------------------------------------------------------
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EPIPE,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
    }
)
REFUSED = "connection refused (nothing listens there)"
UNKNOWN_HOST = "host not found (DNS)"
NO_ROUTE = "no route to the host (the network is down or unreachable)"
_NO_ROUTE_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN})


def map_error(exc: BaseException, url: str) -> HalftunesError:
    """A requests / urllib3 / http.client / socket error as ours, the original its cause."""
    import http.client

    import requests
    import urllib3

    if isinstance(exc, HalftunesError):
        return exc
    url = shorten_url(url)
    error: HalftunesError
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        error = TransferError(f"timed out reading from {url}", "the server stalled")
    elif isinstance(exc, urllib3.exceptions.HTTPError):
        error = TransferError(f"connection to {url} broke: {_root_reason(exc)}")
    elif isinstance(exc, requests.exceptions.SSLError):
        error = TransferError(
            f"TLS verification failed for {url}",
            "for a private CA set REQUESTS_CA_BUNDLE to its certificate file",
        )
        error.is_retryable = False
    elif isinstance(exc, requests.exceptions.Timeout):
        error = TransferError(f"timed out talking to {url}", "the server stalled; try again later")
        error.is_offline = isinstance(exc, requests.exceptions.ConnectTimeout)
    elif isinstance(exc, requests.exceptions.ConnectionError):
        reason = _root_reason(exc)
        error = TransferError(f"could not connect to {url}: {reason}")
        error.is_unreachable = reason in (REFUSED, UNKNOWN_HOST)
        error.is_permanent = reason == UNKNOWN_HOST
        error.is_offline = reason in (REFUSED, UNKNOWN_HOST, NO_ROUTE, "timed out")
    elif isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        error = UnsupportedURLError(f"invalid URL {url!r}")
    elif isinstance(exc, requests.exceptions.InvalidSchema):
        error = UnsupportedURLError(f"unsupported URL scheme in {url!r}")
    elif isinstance(exc, requests.exceptions.RequestException):
        error = TransferError(f"request to {url} failed: {_root_reason(exc)}")
    elif isinstance(exc, http.client.HTTPException):
        error = TransferError(f"connection to {url} broke: {_root_reason(exc)}")
    elif isinstance(exc, OSError):
        error = TransferError(f"I/O error for {url}: {exc.strerror or exc}")
        # (a connection's trouble passes; a local one, e.g. a file:// path in a symlink loop
        # or a CA bundle that is not there, is the same the next time)
        error.is_retryable = isinstance(exc, ConnectionError | TimeoutError) or (
            exc.errno in _NETWORK_ERRNOS
        )
    else:
        return internal_error(exc)
    error.__cause__ = exc
    return error


def _root_reason(exc: BaseException) -> str:
    """The innermost cause, said as a person would (no `[Errno -2]`)."""
    seen = exc
    while (inner := seen.__cause__ or seen.__context__) is not None:
        seen = inner
    text = str(seen) or type(seen).__name__
    if (
        isinstance(seen, socket.gaierror)
        or "Name or service not known" in text
        or "nodename nor servname" in text
        or "Failed to resolve" in text
    ):
        return UNKNOWN_HOST
    if isinstance(seen, ConnectionRefusedError) or "Connection refused" in text:
        return REFUSED
    if (isinstance(seen, OSError) and seen.errno in _NO_ROUTE_ERRNOS) or (
        "Network is unreachable" in text or "No route to host" in text
    ):
        return NO_ROUTE
    if isinstance(seen, ConnectionResetError) or "Connection reset" in text:
        return "the connection was reset"
    if isinstance(seen, TimeoutError) or "timed out" in text:
        return "timed out"
    text = re.sub(r"\[Errno -?\d+\]\s*", "", text).strip()
    return text if len(text) < 160 else text[:157] + "..."


def _copying(read: Callable[[int], bytes]) -> Callable[[memoryview], int]:
    def readinto(view: memoryview) -> int:
        data = read(len(view))
        view[: len(data)] = data
        return len(data)

    return readinto


class _DirectBody:
    """Reads a length-delimited (or close-delimited) body from http.client's buffered socket
    file with `readinto1`, keeping http.client's count, and hands the connection back to
    urllib3's pool once the body is complete, as urllib3 itself would."""

    def __init__(self, raw: Any, inner: Any) -> None:
        self._raw = raw
        self._inner = inner

    def readinto(self, view: memoryview) -> int:
        inner = self._inner
        fp = inner.fp
        if fp is None:
            return 0
        remaining = inner.length
        if remaining is not None:
            if remaining <= 0:
                self._end(complete=True)
                return 0
            if len(view) > remaining:
                view = view[:remaining]
        n = int(fp.readinto1(view))
        if not n:
            self._end(complete=remaining is None)  # short: the connection is not reused
            return 0
        if remaining is not None:
            inner.length = remaining - n
            if inner.length == 0:
                self._end(complete=True)
        return n

    def _end(self, complete: bool) -> None:
        inner = self._inner
        if inner.fp is not None:
            inner._close_conn()
        if complete and not inner.will_close:
            self._raw.release_conn()
