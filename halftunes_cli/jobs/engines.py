"""Where a job's shards run: the local engine (worker processes on this machine) and the Dask
engine (a cluster). Both run the same pure shard code (`Job.run_shard`) and tell the client
the same things (`Hooks`): the work about to be done, each item as its shard ends it, each
shard as it ends."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import HalftunesError, UsageError
from .job import ItemEnded, Job

ITEM_TOPIC = "halftunes-job-items"  # Dask's pub/sub topic for item events
EVENTS_GRACE_SECONDS = 5.0  # how long the last item events may trail the last shard


@dataclass
class Hooks:
    """What the client hears of a running job (every one optional; called on one thread at
    a time, not always the caller's)."""

    on_planned: Callable[[dict[str, int]], object] | None = None  # (what planning added)
    on_start: Callable[[int, int], object] | None = None  # (items to end, shards in the job)
    on_item: ItemEnded | None = None  # one ended item: {"id", "status", "bytes", ...}
    on_shard: Callable[[int, dict[str, int], int], object] | None = None  # (k, counts, shards)
    on_dashboard: Callable[[str], object] | None = None  # (the Dask dashboard's address)

    def planned(self, growth: dict[str, int]) -> None:
        if self.on_planned is not None:
            self.on_planned(growth)

    def start(self, items: int, shards: int) -> None:
        if self.on_start is not None:
            self.on_start(items, shards)

    def item(self, event: dict[str, Any]) -> None:
        if self.on_item is not None:
            self.on_item(event)

    def shard(self, k: int, counts: dict[str, int], shards: int) -> None:
        if self.on_shard is not None:
            self.on_shard(k, counts, shards)


def _todo(job: Job, retry_failed: bool, hooks: Hooks) -> tuple[list[int], int, int]:
    """The shards with work left, the job's shards, and the items this run ends."""
    plan = job.plan()
    assert plan is not None
    total = plan["shards"]
    todo, items, done = [], 0, []
    finished = job.done_shards()  # (one listing; each shard's files read once, side by side)
    manifests = job.manifests_of(sorted(finished & set(range(total))))
    unfinished = job.shards_entries([k for k in range(total) if k not in finished])
    for k in range(total):
        if k in unfinished:
            todo.append(k)
            items += len(unfinished[k])
        elif again := job.to_retry(manifests[k], retry_failed):
            todo.append(k)
            items += len(again)
        else:
            done.append(k)
    hooks.start(items, total)
    for k in done:
        hooks.shard(k, {"skipped_shard": 1}, total)
    return todo, total, items


# -- local -------------------------------------------------------------------------------------
def run_local(
    job: Job,
    overrides: dict[str, Any] | None = None,
    hooks: Hooks | None = None,
    workers: int | None = None,
    retry_failed: bool = False,
) -> None:
    """The local engine: up to `workers` shards at once (default: one per core), each in a
    worker process of its own with up to max_connections_per_host transfers (the same
    shard code as the Dask engine); one worker runs them here, one after the other."""
    hooks = hooks or Hooks()
    todo, total, _ = _todo(job, retry_failed, hooks)
    count = min(workers or os.cpu_count() or 1, len(todo))
    if count <= 1:
        for k in todo:
            counts = job.run_shard(k, overrides, retry_failed=retry_failed, on_item=hooks.item)
            hooks.shard(k, counts, total)
        return
    _run_in_processes(job, todo, total, dict(overrides or {}), count, hooks, retry_failed)


def _run_in_processes(
    job: Job,
    todo: list[int],
    total: int,
    overrides: dict[str, Any],
    count: int,
    hooks: Hooks,
    retry_failed: bool,
) -> None:
    """Shards in `count` worker processes (spawned: no thread of ours is forked). A stop
    (Ctrl-C, SIGTERM) reaches them as SIGTERM: each pauses its transfers at a checkpoint and
    exits; a worker that dies (kill -9) leaves its shard for the next run to finish. Every
    worker is reaped before this returns."""
    import multiprocessing
    import queue
    import signal

    context = multiprocessing.get_context("spawn")
    tasks: Any = context.Queue()
    results: Any = context.Queue()  # ("item", event) and ("shard", k, counts, error)
    for k in todo:
        tasks.put(k)
    processes = [
        context.Process(
            target=_shard_worker,
            args=(job.location, job.scratch, overrides, tasks, results, retry_failed, os.getpid()),
            name=f"halftunes-shard-worker-{i}",
        )
        for i in range(count)
    ]
    # A worker ignores Ctrl-C from its first instruction on (the parent stops it with
    # SIGTERM): an ignored signal stays ignored across the exec of a spawned process.
    interrupt = signal.getsignal(signal.SIGINT) if _is_main_thread() else None
    if interrupt is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for process in processes:
            process.start()
    finally:
        if interrupt is not None:
            signal.signal(signal.SIGINT, interrupt)
    errors: list[str] = []
    pending = set(todo)
    held: dict[int, int] = {}  # worker pid -> the shard it is running
    try:
        while pending:
            try:
                message = results.get(timeout=0.5)
            except queue.Empty:
                for process in processes:  # a worker that died without a word (kill -9, OOM)
                    if not process.is_alive() and held.get(process.pid or 0) in pending:
                        k = held.pop(process.pid or 0)
                        pending.discard(k)
                        errors.append(
                            f"shard {k}: its worker process died "
                            f"(exit {process.exitcode}); the next run finishes it"
                        )
                if not any(p.is_alive() for p in processes):
                    break
                continue
            if message[0] == "item":
                hooks.item(message[1])
                continue
            if message[0] == "took":
                held[message[2]] = message[1]
                continue
            _, k, counts, error = message
            pending.discard(k)
            if error is not None:
                errors.append(error)
            else:
                hooks.shard(k, counts, total)
    except BaseException:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(process.pid, signal.SIGTERM)  # pause at a checkpoint, then exit
        raise
    finally:
        for _ in processes:
            tasks.put(None)  # (no more shards: a worker that is still waiting ends)
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
                process.join()
        tasks.close()
        results.close()
    if errors:
        raise HalftunesError(errors[0])
    if pending:
        raise HalftunesError(
            f"{len(pending)} shard(s) did not finish: a worker process died",
            "run the same command again: it continues where they stopped",
        )


def _shard_worker(
    location: str,
    scratch: str | None,
    overrides: dict[str, Any],
    tasks: Any,
    results: Any,
    retry_failed: bool,
    parent: int,
) -> None:
    """A local worker process: shards from `tasks` until there are none, a stop, or its
    parent is gone (it ends with it: a killed `job run` leaves no worker behind)."""
    import queue
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (the parent decides, and says SIGTERM)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    _die_with_parent()
    if os.getppid() != parent:
        return  # (the parent died before this could ask to follow it)
    job = Job(location, scratch)

    def tell(event: dict[str, Any]) -> None:
        results.put(("item", event))

    while True:
        try:
            k = tasks.get(timeout=0.5)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        except KeyboardInterrupt:
            return
        if k is None:
            return
        results.put(("took", k, os.getpid()))
        try:
            counts = job.run_shard(k, overrides, retry_failed=retry_failed, on_item=tell)
        except KeyboardInterrupt:
            return  # (its transfers were paused at a checkpoint)
        except HalftunesError as exc:
            results.put(("shard", k, None, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - a bug: reported as the shard's, never a hang
            results.put(("shard", k, None, f"shard {k}: internal error: {exc!r}"))
            continue
        results.put(("shard", k, counts, None))


def _is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _die_with_parent() -> None:
    """Linux: this process gets SIGTERM when its parent dies (a killed `job run` leaves no
    worker behind)."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


# -- Dask --------------------------------------------------------------------------------------
def _shard_task(
    location: str,
    scratch: str | None,
    k: int,
    overrides: dict[str, Any],
    retry_failed: bool = False,
) -> tuple[int, dict[str, int]]:
    """One shard as a Dask task: plain data in and out (runs in a worker process); each item
    it ends is published on ITEM_TOPIC for the client."""
    from distributed import get_worker

    worker = get_worker()

    def tell(event: dict[str, Any]) -> None:
        worker.log_event(ITEM_TOPIC, event)

    job = Job(location, scratch)
    return k, job.run_shard(k, overrides, retry_failed=retry_failed, on_item=tell)


def run_dask(
    job: Job,
    overrides: dict[str, Any] | None = None,
    scheduler: str | None = None,
    hooks: Hooks | None = None,
    retry_failed: bool = False,
) -> None:
    """The Dask engine: each unfinished shard is one task on the cluster at `scheduler`, or on
    a LocalCluster of two worker processes. Dask reschedules the shard of a worker that dies;
    its replacement finds the dead owner's records paused and resumes their partials. Item
    events come back through Dask's pub/sub (`log_event` / `subscribe_topic`)."""
    hooks = hooks or Hooks()
    todo, total, items = _todo(job, retry_failed, hooks)
    if not todo:
        return  # a finished job starts no cluster and sends no request
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise UsageError(
            "--engine dask needs Dask distributed", "pip install 'halftunes[dask]'"
        ) from None
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout=30)
        except Exception as exc:  # noqa: BLE001 - what answers there may not be a Dask scheduler
            raise HalftunesError(
                f"cannot reach the Dask scheduler at {scheduler}: {str(exc) or type(exc).__name__}",
                "check the address (tcp://HOST:8786) and that `dask scheduler` runs there",
            ) from None
    try:
        if hooks.on_dashboard is not None and client.dashboard_link:
            hooks.on_dashboard(client.dashboard_link)
        # (each event is (time, what the shard said); a shard run twice says its items
        # twice: the second run of a rescheduled shard ends only what the first did not)
        heard: set[str] = set()
        all_heard = threading.Event()

        def hear(event: tuple[float, dict[str, Any]]) -> None:
            heard.add(str(event[1].get("id")))
            hooks.item(event[1])
            if len(heard) >= items:
                all_heard.set()

        client.subscribe_topic(ITEM_TOPIC, hear)
        futures = client.map(
            _shard_task,
            [job.location] * len(todo),
            [job.scratch] * len(todo),
            todo,
            [overrides or {}] * len(todo),
            [retry_failed] * len(todo),
            pure=False,
            retries=3,
        )
        for _, (k, counts) in as_completed(futures, with_results=True):
            hooks.shard(k, counts, total)
        # the events travel through the scheduler and may trail the last result
        all_heard.wait(EVENTS_GRACE_SECONDS)
    finally:
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(ITEM_TOPIC)
        client.close()
        if cluster is not None:
            cluster.close()
