"""The task lifecycle (NSURLSessionTask): states, allowed moves, threads, stop requests, and the
retrying send that data and upload tasks share."""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..config import SessionConfiguration
from ..errors import (
    Cancelled,
    HalftunesError,
    IllegalTransition,
    authentication_required,
    disk_error,
    translate_request_error,
)
from ..retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after, sleep_unless_stopped
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

    def _send_once(self, method: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        """One exchange through the session's client, stoppable by request_stop."""
        self._check_stop()
        self._request = RequestHandle()
        if self._stop.is_set():
            self._request.abort()
        return self.session.http.send(method, self.url, headers, handle=self._request, **kw)

    # -- for subclasses --------------------------------------------------------------------
    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise Cancelled(self._stop_reason or "cancel")

    def _back_off(self, seconds: float) -> None:
        """Wait before the next attempt; a stop request ends the wait and the task."""
        if sleep_unless_stopped(seconds, self._stop):
            self._check_stop()

    def _send(
        self,
        method: str,
        headers: dict[str, str] | None = None,
        *,
        data_factory: Callable[[], Any] | None = None,
        retry_statuses: frozenset[int] = RETRYABLE_STATUSES,
    ) -> requests.Response:
        """Send with the retry policy; only idempotent methods are ever sent twice."""
        import requests

        policy = self.session.retry_policy
        idempotent = method.upper() in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
        failures = 0
        auth = None
        challenged = False
        while True:
            self._check_stop()
            try:
                data = data_factory() if data_factory is not None else None
                response = self._send_once(method, headers, data=data, auth=auth)
            except requests.exceptions.RequestException as exc:
                self._check_stop()
                error = translate_request_error(exc, self.url)
                failures += 1
                if (
                    isinstance(exc, requests.exceptions.SSLError)
                    or not idempotent
                    or policy.gives_up_after(failures)
                    or self.is_hopeless(error, failures)
                ):
                    raise error from exc
                wait = policy.delay_seconds(failures)
                log.info("retry %d of %s in %.1fs after %s", failures, self.url, wait, error)
                self._tell("on_retry", wait, str(error).rsplit(": ", 1)[-1])
                self._back_off(wait)
                continue
            self.has_reached_host = True
            self._live_response = response
            if response.status_code == 401 and not challenged:
                challenged = True
                answer = self._tell("on_challenge", response)
                if answer is not None:
                    response.close()
                    auth = answer
                    continue
            if response.status_code == 401:
                response.close()
                raise authentication_required(self.url)
            if response.status_code in retry_statuses and idempotent:
                failures += 1
                if not policy.gives_up_after(failures):
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    wait = policy.delay_seconds(failures, retry_after)
                    log.info(
                        "retry %d of %s in %.1fs after HTTP %d",
                        failures,
                        self.url,
                        wait,
                        response.status_code,
                    )
                    self._tell("on_retry", wait, f"HTTP {response.status_code}")
                    response.close()
                    self._back_off(wait)
                    continue
            return response

    def is_hopeless(self, error: BaseException | None, failures: int) -> bool:
        """A host that was never reached in this task (refused, unknown) gets two attempts,
        not the whole policy: a dead address should fail in a second, not in a minute. Once
        it has answered, a refusal or reset is a restart or a blip: the policy applies."""
        return (
            bool(getattr(error, "is_unreachable", False))
            and not self.has_reached_host
            and failures >= 2
        )

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
        except OSError as exc:
            if _is_network_error(exc):
                self._fail(translate_request_error(exc, self.url))
            else:
                self._fail(disk_error(exc, getattr(self, "part_path", None)))
        except Exception as exc:  # a bug must still end the task, never hang a waiter
            log.debug("task %s ended by an unexpected error", self.task_identifier, exc_info=True)
            self._fail(translate_request_error(exc, self.url))
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
        self._tell("on_complete", self.error)
        if self.completion is not None:
            try:
                self._call_completion()
            except Exception as exc:  # noqa: BLE001 - the caller's handler: reported, not ours
                self._callback_failed("completion", exc)

    def _call_completion(self) -> None:
        # data and upload tasks: completion(data, response, error)
        self.completion(getattr(self, "data", None), self.response, self.error)  # type: ignore[misc]


def _is_network_error(exc: OSError) -> bool:
    """requests' errors derive from OSError (IOError); they are the network's, not the disk's."""
    import requests

    return isinstance(exc, requests.exceptions.RequestException)
