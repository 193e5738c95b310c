"""Task metrics (URLSessionTaskMetrics): when each phase of every request of a task happened.

The transport fills one `TransactionMetrics` per request it sends (a redirect and a retry are
requests of their own) at the connection it creates or reuses; the task closes each with its
body's end and, when it ends, gathers them into `TaskMetrics`. Timestamps are seconds since
the epoch, taken from one monotonic clock (so they never run backwards within a process).

Which numbers are exact: DNS, connect, TLS and the request's sending are timed around the
very calls that do them (the name is resolved by halftunes before urllib3 connects to the
address). `response_start` is when the status line and headers had been read, which is the
first byte's arrival for any answer whose head comes in one packet, and later for a slow
head. Body bytes are counted as read; header bytes are not counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

_EPOCH_OFFSET = time.time() - time.monotonic()
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def now() -> float:
    """Seconds since the epoch, never going backwards (a monotonic clock, anchored once)."""
    return time.monotonic() + _EPOCH_OFFSET


@dataclass
class TransactionMetrics:
    """One request and its response (URLSessionTaskTransactionMetrics). A phase that did not
    happen (no DNS or connect on a reused connection, no TLS over plain HTTP) stays None."""

    url: str = ""
    fetch_start: float | None = None
    domain_lookup_start: float | None = None
    domain_lookup_end: float | None = None
    connect_start: float | None = None
    secure_connection_start: float | None = None
    secure_connection_end: float | None = None
    connect_end: float | None = None
    request_start: float | None = None
    request_end: float | None = None
    response_start: float | None = None
    response_end: float | None = None
    network_protocol_name: str | None = None
    is_reused_connection: bool = False
    is_proxy_connection: bool = False
    remote_address: str | None = None
    remote_port: int | None = None
    local_address: str | None = None
    local_port: int | None = None
    tls_protocol_version: str | None = None
    tls_cipher_suite: str | None = None
    status_code: int | None = None
    count_of_response_body_bytes_received: int = 0
    exchange: int = 0  # (halftunes') which attempt of the task it belongs to, from 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TaskMetrics:
    """What `task.metrics` holds once a task has ended, and what the delegate's
    `did_finish_collecting_metrics(task, metrics)` receives."""

    task_start: float
    task_end: float
    transaction_metrics: list[TransactionMetrics] = field(default_factory=list)
    retries: int = 0

    @property
    def task_interval(self) -> tuple[float, float]:
        """(start, end) of the task, from `resume()` to its completion."""
        return self.task_start, self.task_end

    @property
    def redirect_count(self) -> int:
        """Redirects followed (an answer the task ended with is never one it followed)."""
        return sum(1 for t in self.transaction_metrics[:-1] if t.status_code in REDIRECT_STATUSES)

    @property
    def connects(self) -> int:
        """New connections the task made (curl's num_connects; a refused one is none)."""
        return sum(
            1
            for t in self.transaction_metrics
            if t.connect_end is not None and not t.is_reused_connection
        )

    @property
    def body_bytes(self) -> int:
        return sum(t.count_of_response_body_bytes_received for t in self.transaction_metrics)

    def to_dict(self) -> dict[str, Any]:
        """Apple's shape, snake_case: the task interval, the redirects, every transaction."""
        return {
            "task_interval": {
                "start": self.task_start,
                "end": self.task_end,
                "duration": self.task_end - self.task_start,
            },
            "redirect_count": self.redirect_count,
            "retries": self.retries,
            "transaction_metrics": [t.to_dict() for t in self.transaction_metrics],
        }

    def summary(self, url_effective: str = "", filename_effective: str = "") -> dict[str, Any]:
        """The figures curl's --write-out names, over the last transaction: each time in
        seconds from the task's start (a phase that did not happen takes the time of the one
        before it, so the times never decrease; time_appconnect is 0 without TLS, as in
        curl); speeds in bytes per second over the whole task."""
        start = self.task_start
        last = self.transaction_metrics[-1] if self.transaction_metrics else TransactionMetrics()
        # the last attempt's requests: its redirects are curl's (retries start a chain again)
        chain = [t for t in self.transaction_metrics if t.exchange == last.exchange] or [last]
        redirects = sum(1 for t in chain[:-1] if t.status_code in REDIRECT_STATUSES)

        def since(value: float | None, floor: float) -> float:
            return round(max(floor, value - start if value is not None else floor), 6)

        redirect = 0.0  # how long the redirect steps before the final request took
        if redirects and last.fetch_start is not None and chain[0].fetch_start is not None:
            redirect = round(last.fetch_start - chain[0].fetch_start, 6)
        namelookup = since(last.domain_lookup_end, 0.0)
        # curl's time_connect is the TCP connect's end; Apple's connect_end follows the TLS
        tcp_end = last.secure_connection_start or last.connect_end
        connect = since(tcp_end, namelookup)
        tls = last.secure_connection_end is not None
        appconnect = since(last.secure_connection_end, connect) if tls else 0.0
        pretransfer = since(last.request_start, connect)
        starttransfer = since(last.response_start, pretransfer)
        total = round(max(self.task_end - start, starttransfer), 6)
        size = self.body_bytes
        protocol = last.network_protocol_name or ""
        return {
            "time_namelookup": namelookup,
            "time_connect": connect,
            "time_appconnect": appconnect,
            "time_pretransfer": pretransfer,
            "time_redirect": redirect,
            "time_starttransfer": starttransfer,
            "time_total": total,
            "size_download": size,
            "speed_download": round(size / total) if total > 0 else 0,
            "num_connects": self.connects,
            "num_redirects": redirects,
            "num_retries": self.retries,
            "http_code": last.status_code or 0,
            "http_version": protocol.split("/", 1)[-1] if protocol.startswith("http/") else "",
            "remote_ip": last.remote_address or "",
            "remote_port": last.remote_port or 0,
            "local_ip": last.local_address or "",
            "local_port": last.local_port or 0,
            "is_reused_connection": last.is_reused_connection,
            "url_effective": url_effective or last.url,
            "filename_effective": filename_effective,
        }
