"""The `halftunes` command line: parse, call the library, render; the one place for exit codes."""

from __future__ import annotations

import enum
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from . import __version__


class ExitStatus(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    TIMEOUT = 124
    INTERRUPTED = 130


app = typer.Typer(
    name="halftunes",
    help="Search the iTunes catalog and download song previews, with pause, resume and "
    "cancel that survive the process (NSURLSession for the terminal).",
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True,
                         rich_markup_mode=None)  # fmt: skip
app.add_typer(config_app, name="config")


class _State:
    session_kind: str | None = None
    quiet = False
    verbose = False
    color = True
    _console: Any = None

    @property
    def console(self):
        if self._console is None:
            from .render import Console

            self._console = Console(self.quiet, self.verbose, self.color)
        return self._console


state = _State()


def _fail(exc: Exception) -> None:
    """Map an error to its one-line message and exit code (the only place that does)."""
    from .errors import HalftunesError

    if isinstance(exc, HalftunesError):
        state.console.error(exc.message, exc.hint)
        raise typer.Exit(exc.exit_code) from None
    raise exc


def _config(**flags: Any):
    from .config import load_configuration

    flags = dict(flags)
    if state.session_kind:
        flags["session"] = state.session_kind
    try:
        return load_configuration(flags)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)


def _session(config):
    from .session import Session

    session = Session(config)
    if state.verbose:
        session.log = state.console.debug
    return session


def _announce(store) -> None:
    """Tell an interactive user, once, about background transfers that ended unwatched."""
    if not sys.stderr.isatty() or not store.is_persistent:
        return
    with store.transaction() as conn:
        rows = conn.execute(
            "SELECT id, title, status, error FROM downloads WHERE announced = 0 "
            "AND session = 'background' AND status IN ('completed', 'failed')"
        ).fetchall()
        for row in rows:
            conn.execute("UPDATE downloads SET announced = 1 WHERE id = ?", (row["id"],))
    if rows:
        names = ", ".join(f"{r['title'] or r['id']} ({r['status']})" for r in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        noun = "download" if len(rows) == 1 else "downloads"
        state.console.info(f"{len(rows)} background {noun} finished: {names}{more}")


def _open_store(config):
    from .store import Store

    store = Store(Path(config.state_dir) if config.persists_state else None)
    try:
        store.reconcile()
        _announce(store)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    return store


def _complete_ids(incomplete: str) -> list[str]:
    """Shell completion of download ids from the state file (read only, never fails)."""
    try:
        from .config import load_configuration
        from .store import Store

        config = load_configuration({})
        path = Path(config.state_dir) / "downloads.db"
        if not path.exists():
            return []
        rows = Store(Path(config.state_dir)).query("SELECT id, title FROM downloads ORDER BY seq")
        return [r["id"] for r in rows if r["id"].startswith(incomplete)]
    except Exception:  # noqa: BLE001 - completion must never print a traceback
        return []


def _version(value: bool) -> None:
    if value:
        print(f"halftunes {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    session: Annotated[
        str | None,
        typer.Option(
            "--session",
            help="Session configuration: default, ephemeral or background.",
            metavar="KIND",
        ),
    ] = None,  # fmt: skip
    no_color: Annotated[
        bool, typer.Option("--no-color", help="No colours (also NO_COLOR).")
    ] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only errors on stderr.")] = False,
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="Log requests and retries.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,  # fmt: skip
) -> None:
    """halftunes: search iTunes, download previews, pause / resume / cancel them.

    Examples:

      halftunes search "jack johnson"

      halftunes download 1000001 1000002

      halftunes download -b 1000001 && halftunes wait
    """
    if session is not None and session not in ("default", "ephemeral", "background"):
        print(f"halftunes: error: --session must be default, ephemeral or background, "
              f"not {session!r}", file=sys.stderr)  # fmt: skip
        raise typer.Exit(ExitStatus.USAGE)
    state.session_kind = session
    state.quiet = quiet
    state.verbose = verbose
    state.color = not no_color and not os.environ.get("NO_COLOR")
    state._console = None


# -- search ----------------------------------------------------------------------------------
@app.command()
def search(
    term: Annotated[
        list[str],
        typer.Argument(help="Words to search for.", show_default=False, metavar="TERM"),
    ],
    limit: Annotated[int | None, typer.Option("--limit", help="1 to 200 results.")] = None,
    country: Annotated[str | None, typer.Option("--country", help="Store country code.")] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Apple's result objects as JSON.")
    ] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Answer from the cache only.")] = False,
) -> None:
    """Search the iTunes catalog for songs.

    Examples:

      halftunes search jack johnson --limit 5

      halftunes search "王菲" --json | jq '.[].trackId'
    """
    text = " ".join(term)
    try:
        config = _config(limit=limit, country=country)
        if config.persists_state:
            _open_store(config)
        from .itunes import ITunesClient

        session = _session(config)
        client = ITunesClient(session)
        spinner = None
        if sys.stderr.isatty() and not json_out and not state.quiet:
            from rich.console import Console as RichConsole

            spinner = RichConsole(stderr=True).status("Searching iTunes…")
            spinner.start()
        try:
            tracks = client.search(text, limit=config.limit, country=config.country,
                                   offline=offline)  # fmt: skip
        finally:
            if spinner is not None:
                spinner.stop()
            session.close()
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
        return
    from . import render

    if json_out:
        render.print_json([t.raw for t in tracks])
        return
    if not tracks:
        state.console.info(f"No songs found for {text!r}. Try fewer or other words.")
        return
    if sys.stdout.isatty():
        render.search_table(tracks, state.color)
    else:
        render.search_lines(tracks)


# -- download / resume -----------------------------------------------------------------------
def _read_stdin_ids() -> list[str]:
    return [line.strip().strip('"') for line in sys.stdin if line.strip()]


def _expand(items: list[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        if item == "-":
            out += _read_stdin_ids()
        else:
            out.append(item.strip())
    seen: set[str] = set()
    return [i for i in out if not (i in seen or seen.add(i))]


class _Batch:
    """What one download/resume command met: outcomes and the worst exit code."""

    def __init__(self) -> None:
        self.outcomes: list[Any] = []
        self.code = 0

    def error(self, exc: Exception) -> None:
        from .errors import HalftunesError

        if not isinstance(exc, HalftunesError):
            raise exc
        state.console.error(exc.message, exc.hint)
        self.bump(exc.exit_code)

    def bump(self, code: int) -> None:
        # 2 wins over 1; an interruption (130) wins over both.
        rank = {0: 0, 1: 1, 2: 2, 130: 3, 143: 3}
        if rank.get(code, 1) > rank.get(self.code, 1):
            self.code = code


def _targets(items: list[str], store, session, batch: _Batch):
    """Turn ids / URLs into (Target | record) in input order; errors go to the batch."""
    from .errors import ApiError, UnknownIdError, UsageError
    from .itunes import ITunesClient
    from .manager import is_url, target_for_track, target_for_url

    resolved: list[tuple[str, Any]] = []
    want_tracks: list[str] = []
    known = {r["id"]: r for r in store.all([i for i in items if i and not is_url(i)])}
    for item in items:
        if not item:
            continue
        if is_url(item):
            try:
                session.configuration.check_url(item)
                resolved.append(("target", target_for_url(item)))
            except UsageError as exc:
                batch.error(exc)
            continue
        row = known.get(item)
        if row is not None:
            resolved.append(("record", row))
        elif item.isdigit():
            want_tracks.append(item)
            resolved.append(("track", item))
        else:
            batch.error(UsageError(f"{item!r} is neither a track id nor a URL",
                                   "track ids are numbers: see `halftunes search TERM`"))  # fmt: skip
    tracks = store.get_tracks(want_tracks) if want_tracks else {}
    missing = [i for i in want_tracks if i not in tracks]
    lookup_failed = False
    if missing:
        try:
            for t in ITunesClient(session).lookup(missing):
                tracks[str(t.trackId)] = t.raw
        except ApiError as exc:
            batch.error(exc)  # said once; the ids it left unresolved are skipped below
            lookup_failed = True
    out = []
    for kind, value in resolved:
        if kind != "track":
            out.append((kind, value))
            continue
        if value not in tracks and lookup_failed:
            continue
        if value not in tracks:
            batch.error(UnknownIdError(f"no track with id {value} in the iTunes catalog",
                                       "find ids with `halftunes search TERM`"))  # fmt: skip
            continue
        try:
            out.append(("target", target_for_track(tracks[value])))
        except UsageError as exc:
            batch.error(exc)
    return out


def _claim_all(entries, store, config, force: bool, background: bool, batch: _Batch):
    from .manager import Claimer, check_download_dir

    claimer = Claimer(store, check_download_dir(Path(config.download_dir)),
                      "background" if background else config.kind)  # fmt: skip
    owner = None if background else store.owner_token()
    claimed = []
    outcomes = []
    with store.transaction() as conn:  # one transaction for the whole batch
        for kind, value in entries:
            if kind == "target":
                outcomes.append(claimer.claim(value, owner, force, background, conn))
            else:
                outcomes.append(claimer.claim_record(value, owner, force, background, conn))
    for outcome in outcomes:
        if outcome.status == "refused":
            batch.error(outcome.error)
            continue
        if outcome.status == "skipped":
            state.console.info(f"{outcome.id}: already downloaded: {outcome.record['path']}")
            batch.outcomes.append(outcome)
            continue
        claimed.append(outcome)
    return claimed


def _run_foreground(claimed, store, session, batch: _Batch) -> None:
    import signal
    import threading
    from concurrent.futures import wait as wait_futures

    from .manager import Runner
    from .render import ProgressDelegate

    if not claimed:
        return
    progress = ProgressDelegate(sys.stderr.isatty() and not state.quiet, state.console)
    session.delegate = progress
    runner = Runner(session, store, store.owner_token())
    runner.start_control()
    futures: list = []
    interrupted: list[int] = []

    def on_term(signum, frame):  # noqa: ARG001
        interrupted.append(143)
        raise KeyboardInterrupt

    is_main = threading.current_thread() is threading.main_thread()
    if is_main:
        signal.signal(signal.SIGTERM, on_term)
    try:
        for o in claimed:
            futures.append(runner.submit(o.record))
        pending = set(futures)
        while pending:
            _, pending = wait_futures(pending, timeout=0.2)
    except KeyboardInterrupt:
        if is_main:  # a second signal must not tear a checkpoint
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        runner.stop_all("cancel" if session.configuration.is_ephemeral else "pause")
        wait_futures(futures)
        interrupted.append(130)
    finally:
        runner.shutdown()
        progress.close()
        session.close()
    for fut in futures:
        outcome = fut.result()
        batch.outcomes.append(outcome)
        if outcome.status == "failed":
            state.console.error(f"{outcome.id}: {outcome.error}",
                                getattr(outcome.error, "hint", None))  # fmt: skip
            batch.bump(getattr(outcome.error, "exit_code", 1))
        elif outcome.status == "paused" and not interrupted:
            state.console.info(f"{outcome.id}: paused by request; `halftunes resume "
                               f"{outcome.id}` continues it")  # fmt: skip
        elif outcome.status == "cancelled" and not interrupted:
            state.console.info(f"{outcome.id}: cancelled by request")
        for note in outcome.notes:
            state.console.debug(f"{outcome.id}: {note}")
    if interrupted:
        code = interrupted[0]
        if session.configuration.is_ephemeral:
            state.console.info("interrupted: partial downloads discarded (ephemeral session)")
        else:
            paused = [o.id for o in batch.outcomes if o.status == "paused"]
            if paused:
                state.console.info(f"interrupted: paused {len(paused)} download(s); "
                                   f"`halftunes resume {' '.join(paused)}` continues")  # fmt: skip
        batch.bump(code)


def _report(batch: _Batch, store, json_out: bool, queued: list | None = None) -> None:
    from . import render
    from .store import public_record

    ids = [o.id for o in batch.outcomes]
    rows = {r["id"]: r for r in store.all(ids)} if ids else {}
    for o in batch.outcomes:
        if o.id not in rows and o.record is not None:
            rows[o.id] = o.record
    if json_out:
        render.print_json([public_record(rows[i]) for i in ids if i in rows])
        return
    for i in ids:
        row = rows.get(i)
        if row is None:
            continue
        if queued is not None:
            print(i)
        elif row["status"] == "completed":
            print(row["path"])
    done = sum(1 for i in ids if rows.get(i, {}).get("status") == "completed")
    if queued is None and len(ids) > 1:
        state.console.info(f"{done} of {len(ids)} downloads complete")


def _download_or_resume(items, background, output_dir, force, json_out, resume_all=False,
                        resume_mode=False) -> None:  # fmt: skip
    from .errors import UsageError

    batch = _Batch()
    flags: dict[str, Any] = {}
    if output_dir is not None:
        flags["download_dir"] = str(output_dir)
    if background:
        flags["session"] = "background"
    config = _config(**flags)
    background = background or config.is_background
    store = None
    try:
        if config.is_ephemeral and background:
            raise UsageError("the ephemeral session cannot hand transfers to the worker")
        store = _open_store(config)
        session = _session(config)
        if resume_mode:
            entries = _resume_entries(items, resume_all, store, batch)
        else:
            if not items:
                raise UsageError("nothing to download", "give track ids, URLs, or - for stdin")
            entries = _targets(items, store, session, batch)
        claimed = _claim_all(entries, store, config, force, background, batch)
        if background:
            from .background import ensure_worker

            batch.outcomes += claimed
            if claimed:
                ensure_worker(Path(config.state_dir))
                state.console.info(f"{len(claimed)} download(s) handed to the background worker;"
                                   " `halftunes wait` waits for them")  # fmt: skip
            _report(batch, store, json_out, queued=claimed)
        else:
            _run_foreground(claimed, store, session, batch)
            _report(batch, store, json_out)
    except Exception as exc:  # noqa: BLE001
        batch.error(exc)
    finally:
        if store is not None:
            store.close()  # drops this process's owner lock and removes its file
    raise typer.Exit(batch.code)


def _resume_entries(items, resume_all, store, batch):
    from .errors import UsageError, unknown_download

    if resume_all:
        rows = [r for r in store.all() if r["status"] in ("paused", "failed")]
        if not rows:
            state.console.info("nothing to resume")
        return [("record", r) for r in rows]
    if not items:
        raise UsageError("name the downloads to resume, or use --all")
    out = []
    for item in items:
        row = store.get(item)
        if row is None:
            batch.error(unknown_download(item))
        elif row["status"] == "completed" and Path(row["path"]).exists():
            state.console.info(f"{item}: already completed: {row['path']}")
        elif row["status"] in ("running", "queued") and store.is_owner_alive(row["owner"]):
            state.console.info(f"{item}: already running")
        else:
            out.append(("record", row))
    return out


@app.command()
def download(
    items: Annotated[list[str], typer.Argument(help="Track ids or URLs; - reads ids from stdin.",
                                               show_default=False, metavar="ID_OR_URL")],
    background: Annotated[bool, typer.Option("-b", "--background",
                          help="Hand the transfers to the background worker.")] = False,
    output_dir: Annotated[Path | None, typer.Option("-o", "--output-dir",
                          help="Download folder (created if missing).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even if done.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the records as JSON.")] = False,
) -> None:  # fmt: skip
    """Download song previews (by trackId) or URLs, resumably.

    Examples:

      halftunes download 1000001

      halftunes download -b 1000001 1000002 -o ~/Music/previews

      halftunes search jack johnson --json | jq '.[].trackId' | halftunes download -
    """
    _download_or_resume(_expand(items), background, output_dir, force, json_out)


@app.command()
def resume(
    ids: Annotated[
        list[str] | None,
        typer.Argument(help="Download ids.", show_default=False, autocompletion=_complete_ids),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every paused or failed download.")] = False,
    background: Annotated[bool, typer.Option("-b", "--background",
                          help="Continue in the background worker.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the records as JSON.")] = False,
) -> None:  # fmt: skip
    """Continue paused or failed downloads from their checkpoint.

    Examples:

      halftunes resume 1000001

      halftunes resume --all -b
    """
    _download_or_resume(_expand(ids or []), background, None, False, json_out, all_, True)


# -- pause / cancel --------------------------------------------------------------------------
def _steer(ids: list[str], all_: bool, action: str, json_out: bool) -> None:
    import contextlib

    from . import render
    from .errors import HalftunesError, UsageError, unknown_download
    from .manager import wait_until_stopped
    from .store import public_record

    batch = _Batch()
    config = _config()
    try:
        if not ids and not all_:
            raise UsageError(f"name the downloads to {action}, or use --all")
        store = _open_store(config)
        rows = store.all() if all_ else []
        for item in ids:
            row = store.get(item)
            if row is None:
                batch.error(unknown_download(item))
            else:
                rows.append(row)
        waiting = []
        results = []
        for row in rows:
            rid = row["id"]
            with store.transaction() as conn:
                fresh = store.row(conn, rid)
                if fresh is None:
                    continue
                status = fresh["status"]
                if status == "running" and store.is_owner_alive(fresh["owner"]):
                    store.update(conn, rid, request=action)
                    waiting.append(rid)
                elif action == "pause":
                    if status in ("queued", "running"):
                        store.update(conn, rid, status="paused", owner=None, request=None)
                    elif not all_:
                        state.console.info(f"{rid}: already {status}")
                else:  # cancel: nothing is transferring it, so remove it here
                    if status != "completed":
                        with contextlib.suppress(OSError):
                            os.unlink(fresh["part_path"])
                    store.delete(conn, rid)
                    results.append({**public_record(fresh), "status": "cancelled"})
        for rid in waiting:
            row = wait_until_stopped(store, rid, timeout=30)
            if row is not None and row["status"] == "running":
                batch.error(HalftunesError(f"{rid}: its owner did not stop within 30 s",
                                           "try again, or check `halftunes list`"))  # fmt: skip
            elif action == "cancel" and row is not None:
                with store.transaction() as conn:
                    with contextlib.suppress(OSError):
                        if row["status"] != "completed":
                            os.unlink(row["part_path"])
                    store.delete(conn, rid)
        for row in rows:
            after = store.get(row["id"])
            if after is not None:
                results.append(public_record(after))
            elif action == "cancel" and not any(r["id"] == row["id"] for r in results):
                results.append({**public_record(row), "status": "cancelled"})
        if json_out:
            render.print_json(results)
        else:
            for r in results:
                state.console.info(f"{r['id']}: {r['status']}"
                                   + (f" at {r['bytes_received']} bytes"
                                      if r["status"] == "paused" else ""))  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        batch.error(exc)
    raise typer.Exit(batch.code)


@app.command()
def pause(
    ids: Annotated[
        list[str] | None,
        typer.Argument(help="Download ids.", show_default=False, autocompletion=_complete_ids),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every queued or running download.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the records as JSON.")] = False,
) -> None:  # fmt: skip
    """Pause downloads, also ones running in another process or the worker.

    Returns once the transfer has stopped and its checkpoint is saved.

    Example:

      halftunes pause 1000001
    """
    _steer(_expand(ids or []), all_, "pause", json_out)


@app.command()
def cancel(
    ids: Annotated[
        list[str] | None,
        typer.Argument(help="Download ids.", show_default=False, autocompletion=_complete_ids),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every download record.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the records as JSON.")] = False,
) -> None:  # fmt: skip
    """Stop downloads and delete their partial files and records (never a finished file).

    Example:

      halftunes cancel 1000001
    """
    _steer(_expand(ids or []), all_, "cancel", json_out)


# -- list / wait -----------------------------------------------------------------------------
def _list(json_out: bool) -> None:
    from . import render
    from .store import public_record

    config = _config()
    if not config.persists_state:
        rows: list = []
    else:
        store = _open_store(config)
        try:
            rows = store.all()
        except Exception as exc:  # noqa: BLE001
            _fail(exc)
    if json_out:
        render.print_json([public_record(r) for r in rows])
    elif not rows:
        state.console.info("No downloads yet. Try: halftunes download TRACK_ID")
    elif sys.stdout.isatty():
        render.records_table(rows, state.color)
    else:
        render.records_lines(rows)


@app.command("list")
def list_(
    json_out: Annotated[bool, typer.Option("--json", help="Records as JSON.")] = False,
) -> None:
    """List downloads with their status and progress (alias: status).

    Example:

      halftunes list --json | jq '.[] | select(.status == "paused") | .id'
    """
    _list(json_out)


@app.command("status", hidden=True)
def status_(
    json_out: Annotated[bool, typer.Option("--json", help="Records as JSON.")] = False,
) -> None:
    """Alias of list."""
    _list(json_out)


@app.command()
def wait(
    ids: Annotated[list[str] | None, typer.Argument(help="Download ids (default: all).",
                                                    show_default=False)] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Give up after SECONDS "
                       "(exit 124).", metavar="SECONDS")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the records as JSON.")] = False,
) -> None:  # fmt: skip
    """Block until downloads are completed or failed (exit 1 if any failed).

    Example:

      halftunes download -b 1000001 1000002 && halftunes wait --timeout 600
    """
    import time

    from . import render
    from .background import ensure_worker, is_worker_alive
    from .errors import unknown_download
    from .store import public_record

    config = _config()
    if not config.persists_state:
        raise typer.Exit(0)
    store = _open_store(config)
    ids = _expand(ids or [])
    for item in ids:
        if store.get(item) is None:
            _fail(unknown_download(item))
    deadline = None if timeout is None else time.monotonic() + timeout
    bars = None
    if sys.stderr.isatty() and not state.quiet:
        from .render import ProgressDelegate

        bars = ProgressDelegate(True, state.console)
    try:
        while True:
            try:
                store.reconcile()
                rows = store.all(ids) if ids else store.all()
            except Exception as exc:  # noqa: BLE001
                _fail(exc)
            active = [r for r in rows if r["status"] in ("queued", "running")]
            if any(r["status"] == "queued" for r in active) and not is_worker_alive(
                Path(config.state_dir)
            ):
                ensure_worker(Path(config.state_dir))
            if bars is not None:
                for r in active:
                    _FakeTask.update(bars, r)
            if not active:
                break
            if deadline is not None and time.monotonic() >= deadline:
                if bars is not None:
                    bars.close()
                state.console.error(f"timed out after {timeout:g} s with {len(active)} "
                                    "download(s) still active")  # fmt: skip
                raise typer.Exit(ExitStatus.TIMEOUT)
            time.sleep(0.1)
    except KeyboardInterrupt:
        raise typer.Exit(ExitStatus.INTERRUPTED) from None
    finally:
        if bars is not None:
            bars.close()
    if sys.stderr.isatty():
        # The user watched these finish: nothing left to announce later.
        with store.transaction() as conn:
            for r in rows:
                conn.execute("UPDATE downloads SET announced = 1 WHERE id = ?", (r["id"],))
    if json_out:
        render.print_json([public_record(r) for r in rows])
    bad = [r for r in rows if r["status"] != "completed"]
    for r in bad:
        state.console.error(f"{r['id']}: {r['status']}" + (f": {r['error']}" if r["error"] else ""))
    raise typer.Exit(ExitStatus.ERROR if bad else ExitStatus.OK)


class _FakeTask:
    """Adapts a record to what the progress delegate draws (for `wait`)."""

    _ids: dict[str, int] = {}

    def __init__(self, row):
        self.task_identifier = self._ids.setdefault(row["id"], len(self._ids) + 1)
        self.url = row["url"]
        self.title = row.get("title") or row["id"]
        self.bytes_received = row["bytes_received"]
        self.bytes_total = row["bytes_total"]

    @classmethod
    def update(cls, bars, row) -> None:
        task = cls(row)
        bars.on_data_written(task, 0, row["bytes_received"], row["bytes_total"])


# -- upload ----------------------------------------------------------------------------------
@app.command()
def upload(
    file: Annotated[Path, typer.Argument(help="File to send.", show_default=False)],
    url: Annotated[str, typer.Argument(help="Where to send it.", show_default=False)],
    method: Annotated[str, typer.Option("--method", help="PUT (default) or POST.")] = "PUT",
    header: Annotated[
        list[str] | None, typer.Option("--header", help="Extra header 'K: V' (repeatable).")
    ] = None,  # fmt: skip
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Upload a file with PUT or POST (streamed, with progress; only PUT is retried).

    Example:

      halftunes upload song.m4a https://example.com/upload/song.m4a --header 'X-Token: abc'
    """
    from . import render
    from .errors import UsageError

    try:
        headers = {}
        for h in header or []:
            key, sep, value = h.partition(":")
            if not sep or not key.strip():
                raise UsageError(f"--header must look like 'Name: value', not {h!r}")
            headers[key.strip()] = value.strip()
        if method.upper() not in ("PUT", "POST"):
            raise UsageError(f"--method must be PUT or POST, not {method!r}")
        config = _config()
        session = _session(config)
        bar = None
        if sys.stderr.isatty() and not state.quiet:
            from tqdm import tqdm

            bar = tqdm(total=file.stat().st_size if file.is_file() else None, unit="B",
                       unit_scale=True, unit_divisor=1024, file=sys.stderr, desc=file.name[:32])  # fmt: skip

            class _Bar:
                def on_data_sent(self, task, sent, total_sent, total):  # noqa: ARG002
                    bar.update(sent)

            session.delegate = _Bar()
        task = session.upload_task(url, file, method=method.upper(), headers=headers)
        task.run()
        if bar is not None:
            bar.close()
        session.close()
        if task.error is not None:
            raise task.error
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
        return
    response = task.response
    result = {"url": url, "file": str(file), "method": method.upper(),
              "status": response.status_code if response is not None else None,
              "bytes_sent": task.bytes_sent}  # fmt: skip
    if json_out:
        render.print_json(result)
    else:
        print(f"{result['status']} {url}")


# -- play / config ---------------------------------------------------------------------------
@app.command()
def play(
    id_: Annotated[
        str,
        typer.Argument(
            metavar="ID", help="A completed download's id.", autocompletion=_complete_ids
        ),
    ],
) -> None:
    """Play a finished download with the first player found (ffplay, mpv, afplay, xdg-open).

    Example:

      halftunes play 1000001
    """
    import shutil
    import subprocess

    from .errors import HalftunesError, unknown_download

    config = _config()
    store = _open_store(config)
    row = store.get(id_)
    if row is None:
        _fail(unknown_download(id_))
    if row["status"] != "completed" or not Path(row["path"]).exists():
        _fail(HalftunesError(f"{id_} is not downloaded yet ({row['status']})",
                             f"run `halftunes download {id_}` first"))  # fmt: skip
    players = [["ffplay", "-nodisp", "-autoexit", "-loglevel", "error"], ["mpv", "--no-video"],
               ["afplay"], ["xdg-open"], ["open"]]  # fmt: skip
    for cmd in players:
        if shutil.which(cmd[0]):
            state.console.info(f"playing {row['path']} with {cmd[0]}")
            try:
                code = subprocess.call([*cmd, row["path"]])
            except KeyboardInterrupt:
                raise typer.Exit(ExitStatus.INTERRUPTED) from None
            raise typer.Exit(0 if code == 0 else 1)
    _fail(HalftunesError("no audio player found (looked for ffplay, mpv, afplay, xdg-open, "
                         "open)", "install ffmpeg or mpv"))  # fmt: skip


@app.command("open")
def open_(
    id_: Annotated[
        str,
        typer.Argument(metavar="ID", help="A download's id.", autocompletion=_complete_ids),
    ],
    reveal: Annotated[
        bool, typer.Option("--reveal", help="Open the folder in the file manager.")
    ] = False,
) -> None:
    """Print the folder that holds a download (or open it with --reveal).

    Examples:

      cd "$(halftunes open 1000001)"

      halftunes open 1000001 --reveal
    """
    import shutil
    import subprocess

    from .errors import HalftunesError, unknown_download

    config = _config()
    store = _open_store(config)
    row = store.get(id_)
    if row is None:
        _fail(unknown_download(id_))
    folder = str(Path(row["path"]).parent)
    print(folder)
    if reveal:
        opener = next((c for c in ("xdg-open", "open") if shutil.which(c)), None)
        if opener is None:
            _fail(HalftunesError("no file manager opener found (looked for xdg-open, open)"))
        raise typer.Exit(0 if subprocess.call([opener, folder]) == 0 else 1)


@config_app.command("show")
def config_show(
    json_out: Annotated[bool, typer.Option("--json", help="Values and sources as JSON.")] = False,
) -> None:
    """Print each setting, its value and where it came from (flag, env, file, default)."""
    from . import render

    config = _config()
    described = config.describe()
    if json_out:
        render.print_json(described)
        return
    for key, info in described.items():
        print(f"{key:<26} {info['value']!s:<40} ({info['source']})")


@config_app.command("path")
def config_path() -> None:
    """Print the config file's path (it may not exist yet)."""
    from .config import config_file_path

    print(config_file_path()[0])


def main() -> None:
    try:
        app(prog_name="halftunes")
    except KeyboardInterrupt:
        sys.exit(ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        sys.exit(ExitStatus.ERROR)
