"""The task lifecycle (NSURLSessionTask): states, allowed moves, threads, stop requests,
callbacks that cannot hurt the transfer, and the retrying send data and upload tasks share."""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..config import SessionConfiguration
from ..errors import (
    Cancelled,
    HalftunesError,
    HTTPStatusError,
    IllegalTransition,
    TransferError,
    authentication_required,
    disk_error,
    internal_error,
)
from ..metrics import TaskMetrics, now
from ..retry import RETRYABLE_STATUSES, RetryLoop, RetryPolicy, parse_retry_after
from ..transport import HttpClient, RequestHandle, abort

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)


class TaskState(enum.StrEnum):
    """A task's lifecycle. Allowed moves are listed in `TRANSITIONS`, nowhere else."""

    SUSPENDED = "suspended"  # created, not started (NSURLSessionTaskStateSuspended)
    RUNNING = "running"
    PAUSED = "paused"  # stopped with resume data kept
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.SUSPENDED: frozenset({TaskState.RUNNING, TaskState.CANCELLED}),
    TaskState.RUNNING: frozenset(
        {TaskState.PAUSED, TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED}
    ),
    TaskState.PAUSED: frozenset(),
    TaskState.COMPLETED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.CANCELLED: frozenset(),
}
FINAL_STATES = frozenset(
    {TaskState.PAUSED, TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED}
)


class TaskHost(Protocol):
    """What a task needs of its session (the Session implements it)."""

    configuration: SessionConfiguration
    http: HttpClient
    retry_policy: RetryPolicy

    def call_delegate(self, name: str, *args: Any) -> Any: ...

    def next_task_identifier(self) -> int: ...


class Task:
    """Common lifecycle: created suspended, `resume()` runs it on its own thread."""

    def __init__(self, session: TaskHost, url: str, completion: Callable | None = None):
        self.session = session
        self.task_identifier = session.next_task_identifier()
        self.url = url
        self.completion = completion
        self.state = TaskState.SUSPENDED
        self.error: HalftunesError | None = None
        self.response: requests.Response | None = None
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._state_lock = threading.Lock()
        self._live_response: Any = None
        self._request = RequestHandle()  # the socket in use, for a stop from another thread
        self._handed_off = False  # its end is another thread's to bring about
        # The first exception a delegate method or the completion handler raised: reported
        # (logged; `run` raises it once the task has ended), never the task's outcome.
        self.callback_error: BaseException | None = None
        self.has_reached_host = False  # an answer came from the server in this task
        self.record_id: str | None = None  # the download record it runs for, if any
        # URLSessionTaskMetrics: every exchange's transactions, gathered when the task ends
        # A background task starts no earlier than `earliest_begin_date` (a datetime, or
        # seconds since the epoch), and before those of lower `priority` (0.0-1.0; Apple's
        # low 0.25, default 0.5, high 0.75). A task of another session starts when resumed.
        self.earliest_begin_date: Any = None
        self.priority = 0.5
        self.metrics: TaskMetrics | None = None
        # waitsForConnectivity: True while the host cannot be reached and the task waits
        self.is_waiting_for_connectivity = False
        self._offline_reason: str | None = None  # why the host cannot be reached
        self.retries = 0
        self._started_at: float | None = None
        self._exchanges: list[RequestHandle] = []

    # -- what progress shows of it -----------------------------------------------------------
    @property
    def event_id(self) -> str:
        """How progress events name it: its record's id, else its number in the session."""
        return self.record_id or str(self.task_identifier)

    @property
    def label(self) -> str:
        """What a person calls it: the resource's last path segment (subclasses know more)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1] or self.url

    @property
    def progress(self) -> tuple[int, int | None]:
        """(bytes moved so far, bytes expected in all, None when unknown)."""
        return 0, None

    @property
    def saved_to(self) -> str | None:
        """The finished file, for a download task that completed (None for the others)."""
        return None

    def _move(self, new: TaskState) -> None:
        with self._state_lock:
            if new not in TRANSITIONS[self.state]:
                raise IllegalTransition(
                    f"task {self.task_identifier}: {self.state} -> {new} is not allowed"
                )
            self.state = new

    # -- public ----------------------------------------------------------------------------
    def resume(self) -> Task:
        """Start the task (NSURLSessionTask.resume). A finished task cannot be resumed."""
        self._move(TaskState.RUNNING)
        self._started_at = now()
        self._thread = threading.Thread(
            target=self._main, name=f"task-{self.task_identifier}", daemon=True
        )
        self._thread.start()
        return self

    def run(self) -> Task:
        """Run on the calling thread and return when finished (for scripts and the CLI).

        A delegate method or completion handler that raised is raised here, after the task
        has ended (its state and error say how the transfer went)."""
        self.run_to_end()
        if self.callback_error is not None:
            raise self.callback_error
        return self

    def run_to_end(self) -> Task:
        """Run on the calling thread; callback errors stay in `callback_error` (a runner)."""
        self._move(TaskState.RUNNING)
        self._started_at = now()
        self._main()
        return self

    def _tell(self, name: str, *args: Any) -> Any:
        """Call the delegate's method `name(self, *args)`. Its exceptions are the caller's
        code's: logged and kept in `callback_error`, never the transfer's."""
        try:
            return self.session.call_delegate(name, self, *args)
        except Exception as exc:  # noqa: BLE001 - any exception: it is not ours to judge
            self._callback_failed(name, exc)
            return None

    def _callback_failed(self, name: str, exc: BaseException) -> None:
        log.warning(
            "task %s: %s raised %s: %s",
            self.task_identifier,
            name,
            type(exc).__name__,
            exc,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        if self.callback_error is None:
            self.callback_error = exc

    def wait(self, timeout: float | None = None) -> bool:
        if self.state is TaskState.SUSPENDED:
            return False
        return self._done.wait(timeout)

    def cancel(self) -> None:
        if self.state is TaskState.SUSPENDED:
            self._move(TaskState.CANCELLED)
            self._done.set()
            return
        self.request_stop("cancel")

    def cancel_producing_resume_data(self, timeout: float | None = 30) -> Any:
        """Stop; tasks that can be resumed return their resume data (others None)."""
        self.cancel()
        return None

    def request_stop(self, reason: str) -> None:
        """Ask a running task to stop ('pause' or 'cancel'); it stops within one chunk, and a
        read blocked on a stalled socket is woken by shutting the socket. A task that has
        ended ignores it (a late request must not touch a connection now in other hands)."""
        if self._done.is_set():
            return
        if self._stop_reason is None or reason == "cancel":
            self._stop_reason = reason
        self._stop.set()
        self._request.abort()
        abort(self._live_response)  # a custom protocol handler's response

    def _send_once(
        self, method: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> requests.Response:
        """One exchange through the session's client, stoppable by request_stop."""
        self._check_stop()
        self._request = RequestHandle()
        self._exchanges.append(self._request)
        if self._stop.is_set():
            self._request.abort()
        response = self.session.http.send(method, self.url, headers, handle=self._request, **kw)
        self._set_waiting(False)  # (an answer: the network is back)
        return response

    # -- for subclasses --------------------------------------------------------------------
    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise Cancelled(self._stop_reason or "cancel")

    def _retries(
        self, what: str | Callable[[], str] | None = None, stop: threading.Event | None = None
    ) -> RetryLoop:
        """This task's retry loop: the session's policy, stopped by a stop request (or by
        `stop`: one connection of several), heard by the delegate (`on_retry`), and the rule
        for hosts this task never reached."""
        config = self.session.configuration
        return RetryLoop(
            self.session.retry_policy,
            what=what or self.url,
            stop=stop or self._stop,
            on_retry=self._on_retry,
            has_reached_host=lambda: self.has_reached_host,
            waits_for_connectivity=config.waits_for_connectivity,
            probe_max_seconds=config.connectivity_probe_seconds,
            on_waiting=self._set_waiting,
            on_offline=self._on_offline,
            deadline=time.monotonic() + config.resource_timeout,
        )

    def _set_waiting(self, waiting: bool) -> None:
        """Waiting for connectivity starts (the delegate hears
        `task_is_waiting_for_connectivity`) or ends (the host answered)."""
        if waiting == self.is_waiting_for_connectivity:
            return
        self.is_waiting_for_connectivity = waiting
        log.info("%s: %s", self.url, "waiting for the network" if waiting else "connected")
        if waiting:
            self._tell("task_is_waiting_for_connectivity")
        self._connectivity_changed(waiting)

    def _connectivity_changed(self, waiting: bool) -> None:
        """For subclasses: a download records it (status `waiting` / `running`)."""

    def _on_offline(self, error: BaseException) -> None:
        self._offline_reason = str(error)

    def _on_retry(self, wait: float, reason: str) -> None:
        if not self.is_waiting_for_connectivity:  # (a probe for the network is no retry)
            self.retries += 1
        self._tell("on_retry", wait, reason)

    def _end_of_body(self, body_bytes: int) -> None:
        """The last answer's body has been read (or abandoned): its transaction ends."""
        self._request.end_of_body(body_bytes, self.url)

    def metrics_summary(self) -> dict[str, Any] | None:
        """The task's metrics as curl's --write-out names them (None before it ended)."""
        if self.metrics is None:
            return None
        response = self.response
        url = getattr(response, "url", None) or self.url
        return self.metrics.summary(str(url), self.saved_to or "")

    def _send(
        self,
        method: str,
        headers: dict[str, str] | None = None,
        *,
        data_factory: Callable[[], Any] | None = None,
        retry_statuses: frozenset[int] = RETRYABLE_STATUSES,
    ) -> requests.Response:
        """Send with the retry loop; only idempotent methods are ever sent twice. A retryable
        status that has used up its retries is returned, for the caller to judge."""
        idempotent = method.upper() in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
        auth = None
        challenged = False
        for attempt in self._retries():
            self._check_stop()
            try:
                data = data_factory() if data_factory is not None else None
                response = self._send_once(method, headers, data=data, auth=auth)
            except TransferError as error:
                self._check_stop()
                if not (idempotent and error.is_retryable):
                    raise
                attempt.failed(error)
                continue
            self.has_reached_host = True
            self._live_response = response
            if response.status_code == 401 and not challenged:
                challenged = True
                answer = self._tell("on_challenge", response)
                if answer is not None:
                    response.close()
                    auth = answer
                    continue  # at once, with the credentials
            if response.status_code == 401:
                response.close()
                raise authentication_required(self.url)
            status = HTTPStatusError(response.status_code, self.url)
            if response.status_code in retry_statuses and idempotent and attempt.may_retry(status):
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                response.close()
                attempt.failed(status, retry_after=retry_after)
                continue
            return response
        raise AssertionError("the retry loop ends by a return or an error")

    def _main(self) -> None:
        self._guarded(self._execute)

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run a step of the task; every way it can end ends the task (unless the step
        handed the task's end to another thread: `_handed_off`)."""
        try:
            step()
        except Cancelled:
            self._on_stopped()
        except HalftunesError as exc:
            self._fail(exc)
        except OSError as exc:  # (the transport raises only our errors: this is the disk)
            self._fail(disk_error(exc, getattr(self, "part_path", None)))
        except Exception as exc:  # a bug must still end the task, never hang a waiter
            log.debug("task %s ended by an unexpected error", self.task_identifier, exc_info=True)
            self._fail(internal_error(exc))
        finally:
            self._live_response = None
            if not self._handed_off:
                self._release()
                self._done.set()

    def _execute(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """The task has ended: give back what it held (a download's partial)."""

    def _on_stopped(self) -> None:
        self._move(TaskState.CANCELLED if self._stop_reason == "cancel" else TaskState.PAUSED)
        self.error = Cancelled("cancelled" if self._stop_reason == "cancel" else "paused")
        self._complete()

    def _fail(self, exc: HalftunesError) -> None:
        if self.state in FINAL_STATES:  # ended already: a later error changes nothing
            log.error(
                "task %s: error after it ended %s: %s",
                self.task_identifier,
                self.state,
                exc,
                exc_info=True,
            )
            return
        self.error = exc
        self._move(TaskState.FAILED)
        self._complete()

    def _complete(self) -> None:
        # (Apple's order: the metrics first, then the completion)
        for number, exchange in enumerate(self._exchanges):
            for transaction in exchange.transactions:
                transaction.exchange = number
        self.metrics = TaskMetrics(
            self._started_at or now(),
            now(),
            [t for exchange in self._exchanges for t in exchange.transactions],
            self.retries,
        )
        self._tell("did_finish_collecting_metrics", self.metrics)
        self._tell("on_complete", self.error)
        if self.completion is not None:
            try:
                self._call_completion()
            except Exception as exc:  # noqa: BLE001 - the caller's handler: reported, not ours
                self._callback_failed("completion", exc)

    def _call_completion(self) -> None:
        # data and upload tasks: completion(data, response, error)
        assert self.completion is not None
        self.completion(getattr(self, "data", None), self.response, self.error)
