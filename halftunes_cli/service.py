"""The download service used by the command line and the worker: resolve ids and URLs to
targets, claim records, run transfers in the foreground or hand them to the worker, steer,
wait, announce. It prints nothing: it tells a `Reporter` and returns outcomes."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import tagging
from .background import WORKER_LOG, ensure_worker
from .config import SessionConfiguration, transfer_settings
from .errors import (
    ExitStatus,
    HalftunesError,
    OfflineMissError,
    TransferError,
    UnknownIdError,
    UsageError,
    unknown_download,
)
from .events import Subscriber, record_event
from .headers import is_ascii_number
from .itunes import ITunesClient, Track
from .jobs.engines import Hooks, run_dask, run_local
from .jobs.job import Job
from .liveness import is_worker_alive
from .naming import TEMPLATE_FIELDS, template_fields
from .records import (
    ACTIVE,
    OWNED,
    ClaimOutcome,
    DownloadRecord,
    Records,
    RecordStatus,
    Schedule,
    StopAction,
    StopRequest,
)
from .runner import Outcome, OutcomeStatus, Runner
from .session import Session
from .store import Store, state_file_exists
from .targets import OutputSpec, Target, check_download_dir, target_for_track, url_target

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """Where the service's messages go (the command line draws them; tests collect them)."""

    def error(self, error: HalftunesError) -> None: ...

    def info(self, message: str) -> None: ...

    def debug(self, message: str) -> None: ...


class SilentReporter:
    def error(self, error: HalftunesError) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def debug(self, message: str) -> None:
        pass


def is_url(text: str) -> bool:
    return "://" in text or text.lower().startswith(("javascript:", "mailto:", "data:"))


def worse(code: int, other: int) -> int:
    """The exit status of two outcomes together: 2 wins over 1; an interruption over both."""
    rank = {0: 0, 1: 1, 2: 2, 130: 3, 143: 3}
    return other if rank.get(other, 1) > rank.get(code, 1) else code


class Interruption:
    """A stop asked of a running command by its process edge (the command line's Ctrl-C and
    SIGTERM handlers; the service installs none). It is armed while transfers run; the
    edge decides what a request means before and after. A request only sets a flag (it is
    made from a signal handler): the service's own waiting loop stops the transfers."""

    def __init__(self) -> None:
        self.exit_code: int = ExitStatus.INTERRUPTED
        self._requested = threading.Event()
        self.is_armed = False

    @property
    def is_requested(self) -> bool:
        return self._requested.is_set()

    def request(self, exit_code: int) -> None:
        """Stop the transfers at a checkpoint; the command ends with `exit_code`."""
        if not self.is_requested:
            self.exit_code = exit_code
            self._requested.set()


@dataclass
class BatchResult:
    """What one download / resume command met."""

    outcomes: list[Outcome] = field(default_factory=list)
    exit_code: int = ExitStatus.OK
    interrupted: bool = False
    background: bool = False
    # the items (ids or URLs as given) that never got a record, with why
    failures: list[tuple[str, HalftunesError]] = field(default_factory=list)

    def fail(self, error: HalftunesError) -> None:
        self.exit_code = worse(self.exit_code, int(error.exit_code))


@dataclass
class SteerResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int = ExitStatus.OK


@dataclass
class WaitResult:
    records: list[DownloadRecord]
    timed_out: bool = False
    still_active: int = 0

    @property
    def failed(self) -> list[DownloadRecord]:
        return [r for r in self.records if r.status is not RecordStatus.COMPLETED]


class DownloadService:
    """One per command (or worker): owns a Session and, through it, the records."""

    def __init__(
        self,
        configuration: SessionConfiguration,
        reporter: Reporter | None = None,
        delegate: Any = None,
    ):
        self.configuration = configuration
        self.reporter: Reporter = reporter or SilentReporter()
        self.session = Session(configuration, delegate)
        self.records = self.session.records

    def close(self) -> None:
        self.session.close()  # drops this process's owner lock and removes its file

    def __enter__(self) -> DownloadService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- every command starts here -------------------------------------------------------
    def recover(self) -> None:
        """Notice owners that died (their transfers become paused), and start the worker
        again if downloads wait for their date with none to start them (it was killed, the
        machine restarted): a `--at` time is kept by whichever command runs next."""
        if not self.records.is_persistent:
            return
        self.records.reconcile_dead_owners()
        state_dir = Path(self.configuration.state_dir)
        if self.records.next_begin_date() is not None and not is_worker_alive(state_dir):
            try:
                ensure_worker(state_dir)
            except HalftunesError as exc:  # (`wait` says it; this command has its own job)
                log.warning("cannot start the worker for the dated downloads: %s", exc)

    def announcements(self) -> list[DownloadRecord]:
        """Background transfers that ended unwatched; each is returned once, ever."""
        if not self.records.is_persistent:
            return []
        return self.records.take_unannounced()

    # -- search -----------------------------------------------------------------------------
    def search(self, term: str, *, limit: int, country: str, offline: bool) -> list[Track]:
        client = ITunesClient(self.session)
        tracks = client.search(term, limit=limit, country=country, offline=offline)
        if client.notice:
            self.reporter.info(client.notice)
        return tracks

    def downloaded_ids(self) -> set[str]:
        """Ids whose file is on disk (search marks them)."""
        if not self.records.is_persistent:
            return set()
        return {r.id for r in self.records.all() if r.is_finished_on_disk}

    # -- download / resume ----------------------------------------------------------------
    def download(
        self,
        items: list[str],
        *,
        force: bool = False,
        background: bool = False,
        delegate: Any = None,
        output_dir: str | None = None,
        output: str | None = None,
        interruption: Interruption | None = None,
        schedule: Schedule | None = None,
        checksum: str | None = None,
    ) -> BatchResult:
        """`schedule`: when and in which order the worker starts them (background only);
        `checksum` (ALGO=HEX, one item only): what the finished file must hash to."""
        result = BatchResult(background=background)
        try:
            self._check_background(background)
            if not items:
                raise UsageError("nothing to download", "give track ids, URLs, or - for stdin")
            if checksum is not None and len(items) > 1:
                raise UsageError(
                    f"--checksum is for one id or URL, not {len(items)}",
                    "download the others without it (or one at a time, each with its own)",
                )
            spec = self.output_spec(len(items), output_dir, output)
            entries, tracks = self._resolve(items, result, spec, force)
            self._claim_and_run(
                entries,
                force,
                background,
                result,
                delegate,
                spec.folder,
                interruption,
                refresh=lambda outcomes: self._refreshed(outcomes, tracks, spec),
                schedule=schedule,
                checksum=checksum,
                tracks=tracks,
            )
        except HalftunesError as exc:
            self._error(result, exc)
        return result

    def resume(
        self,
        ids: list[str],
        *,
        all_: bool = False,
        background: bool = False,
        delegate: Any = None,
        interruption: Interruption | None = None,
    ) -> BatchResult:
        result = BatchResult(background=background)
        try:
            self._check_background(background)
            entries = self._resume_entries(ids, all_, result)
            folder = self.output_spec(0, None, None).folder
            self._claim_and_run(entries, False, background, result, delegate, folder, interruption)
        except HalftunesError as exc:
            self._error(result, exc)
        return result

    def output_spec(self, count: int, output_dir: str | None, output: str | None) -> OutputSpec:
        """-P is the folder; -o a file name (one id) or a template, relative to -P when -P is
        given, else to the current directory (as curl and wget take it); a -o that is an
        existing folder or ends in / is taken as the folder. Every path is made absolute and
        normal here, against this command's working directory."""
        folder = Path(output_dir or self.configuration.download_dir).expanduser()
        if output is None:
            return OutputSpec(Path(os.path.abspath(folder)))
        if output == "-":
            raise UsageError(
                "-o - (standard output) is not supported: a download is kept in a file, so it "
                "can resume",
                'print it afterwards: cat "$(halftunes download ID)"',
            )
        base = Path(os.path.abspath(Path(output_dir).expanduser() if output_dir else "."))
        given = base / Path(output).expanduser()
        if given.exists() and not given.is_dir() and not given.is_file():
            raise UsageError(
                f"-o {output} is not a regular file (a device, a pipe or a socket): halftunes "
                "downloads into files it can resume",
                "name a file, or a folder with -P DIR; --session ephemeral keeps nothing else",
            )
        if output.endswith("/") or given.is_dir():
            self.reporter.info(
                f"note: -o {output} is a folder: downloading into it (-P {output} says the same)"
            )
            return OutputSpec(Path(os.path.normpath(given)))
        try:
            fields = template_fields(output)
        except ValueError as exc:
            raise UsageError(
                f"-o {output!r}: {exc}", "fields: " + " ".join(f"{{{f}}}" for f in TEMPLATE_FIELDS)
            ) from exc
        if count > 1 and not fields:
            raise UsageError(
                f"-o {output!r} names one file, but {count} ids were given",
                "use a template such as '{artist} - {title}.{ext}', or -P DIR for a folder",
            )
        return OutputSpec(base, str(Path(output).expanduser()))

    def _check_background(self, background: bool) -> None:
        if background and self.configuration.is_ephemeral:
            raise UsageError("the ephemeral session cannot hand transfers to the worker")

    def _error(self, result: BatchResult, error: HalftunesError, item: str | None = None) -> None:
        """Say an error and count it; `item`: the id or URL it belongs to."""
        self.reporter.error(error)
        result.fail(error)
        if item is not None:
            result.failures.append((item, error))

    def _resolve(
        self, items: list[str], result: BatchResult, spec: OutputSpec, force: bool = False
    ) -> tuple[list[Target | DownloadRecord], _Tracks]:
        """Ids and URLs in input order, as targets (named for this command's -P / -o), or as
        records we already have and cannot name anew (no track details to be had now); and
        the track details it used."""
        ids = [i for i in items if i.strip() and not is_url(i)]
        known = {r.id: r for r in self.records.all(ids)}
        tracks = self._tracks([i for i in ids if is_ascii_number(i)], result, force)
        out: list[Target | DownloadRecord] = []
        for item in items:
            if not item.strip():
                self._error(
                    result,
                    UsageError("an empty id", "an empty shell variable? give track ids or URLs"),
                    item,
                )
            elif is_url(item):
                try:
                    self.configuration.check_url(item)
                    out.append(url_target(item, spec))
                except UsageError as exc:
                    self._error(result, exc, item)
            elif item in tracks:
                try:
                    out.append(target_for_track(Track.from_api(tracks[item]), spec))
                except UsageError as exc:
                    self._error(result, exc, item)
            elif item in known:
                out.append(known[item])  # no details now: what the record knows
            elif not is_ascii_number(item):
                error = UsageError(
                    f"{item!r} is neither a track id nor a URL",
                    "track ids are numbers: see `halftunes search TERM`",
                )
                self._error(result, error, item)
            elif tracks.lookup_error is not None:
                result.failures.append((item, tracks.lookup_error))  # (said once already)
            else:
                error = UnknownIdError(
                    f"no track with id {item} in the iTunes catalog",
                    "find ids with `halftunes search TERM`",
                )
                self._error(result, error, item)
        return out, tracks

    def _tracks(self, ids: list[str], result: BatchResult, force: bool = False) -> _Tracks:
        """Track details: from this catalog's cache while they are fresh (an hour, as search
        answers; any age with return-cache-*; never with reload-ignoring-cache or --force),
        then one lookup for the rest. When the lookup fails, details cached earlier (stale)
        still serve."""
        tracks = _Tracks()
        cache = self.session.cache
        policy = self.configuration.cache_policy
        api = self.configuration.api_url
        if not ids:
            return tracks
        cached = {}
        if cache is not None and not force and policy != "reload-ignoring-cache":
            cached = cache.get_tracks(api, ids)
        any_age = policy in ("return-cache-else-load", "return-cache-dont-load")
        now = time.time()
        for ident, (raw, fetched) in cached.items():
            if any_age or now - fetched < TRACK_CACHE_SECONDS:
                tracks[ident] = raw
                tracks.from_cache.add(ident)
        if tracks:
            self.reporter.debug(f"{len(tracks)} track(s) from the cache of {api}")
        missing = [i for i in ids if i not in tracks]
        if not missing:
            return tracks
        if policy == "return-cache-dont-load":
            tracks.lookup_error = OfflineMissError(
                f"no cached details for {len(missing)} id(s) (cache_policy = return-cache-dont-load)",
                "look them up once with another cache policy",
            )
            self._error(result, tracks.lookup_error)
            return tracks
        try:
            for track in ITunesClient(self.session).lookup(missing):
                tracks[str(track.trackId)] = track.raw
        except HalftunesError as exc:
            stale = {i: cached[i][0] for i in missing if i in cached}
            if stale:
                tracks.update(stale)
                tracks.from_cache.update(stale)
                self.reporter.info(
                    f"the iTunes API could not be reached ({exc}); using the details of "
                    f"{len(stale)} track(s) cached earlier"
                )
            if any(i not in stale for i in missing):
                tracks.lookup_error = exc
                self._error(result, exc)  # said once; the ids it left unresolved are skipped
        return tracks

    def _refreshed(
        self, outcomes: list[Outcome], tracks: _Tracks, spec: OutputSpec
    ) -> list[Target]:
        """Downloads whose cached preview address failed (refused, unknown host, 404, 410):
        one fresh lookup, and a target for each whose address has changed."""
        stale = [
            o.id
            for o in outcomes
            if o.status is OutcomeStatus.FAILED
            and o.id in tracks.from_cache
            and (
                getattr(o.error, "is_unreachable", False)
                or getattr(o.error, "status", None) in (404, 410)
            )
        ]
        if not stale:
            return []
        self.reporter.debug(
            f"{', '.join(stale)}: the cached preview address failed: looking it up again"
        )
        try:
            fresh = {str(t.trackId): t for t in ITunesClient(self.session).lookup(stale)}
        except HalftunesError as exc:
            self.reporter.debug(f"the lookup failed too: {exc}")
            return []
        out = []
        for ident in stale:
            track = fresh.get(ident)
            if track is not None and track.previewUrl != tracks[ident].get("previewUrl"):
                try:
                    out.append(target_for_track(track, spec))
                except UsageError:
                    continue
        return out

    def _resume_entries(
        self, ids: list[str], all_: bool, result: BatchResult
    ) -> list[DownloadRecord]:
        if all_:
            records = [
                r
                for r in self.records.all()
                if r.status in (RecordStatus.PAUSED, RecordStatus.FAILED)
            ]
            gone = [r for r in records if r.permanent]
            if gone:
                self.reporter.info(
                    f"skipped {len(gone)} download(s) that failed for good "
                    f"({', '.join(r.id for r in gone[:5])}"
                    f"{', ...' if len(gone) > 5 else ''}): name them to retry"
                )
            records = [r for r in records if not r.permanent]
            if not records and not gone:
                self.reporter.info("nothing to resume")
            return records
        if not ids:
            raise UsageError("name the downloads to resume, or use --all")
        out = []
        for item in ids:
            record = self.records.get(item)
            if record is None:
                self._error(result, unknown_download(item), item)
            elif record.is_finished_on_disk:
                self.reporter.info(f"{item}: already completed: {record.path}")
            elif record.status in OWNED and self.records.is_owner_alive(record.owner):
                self._error(result, self.records.busy_error(record), item)
            else:
                out.append(record)
        return out

    def _claim_and_run(
        self,
        entries: Sequence[Target | DownloadRecord],
        force: bool,
        background: bool,
        result: BatchResult,
        delegate: Any,
        folder: Path,
        interruption: Interruption | None,
        refresh: Callable[[list[Outcome]], list[Target]] | None = None,
        schedule: Schedule | None = None,
        checksum: str | None = None,
        tracks: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Claim the entries and run them here or hand them to the worker. `refresh` gives,
        for the downloads that failed here, targets worth one more try (a moved preview)."""
        background = background or self.configuration.is_background
        result.background = background
        claims = self.records.claim(
            entries,
            owner=None if background else self.records.owner_token(),
            force=force,
            queue=background,
            download_dir=self._check_places(entries, folder),
            session_kind="background" if background else self.configuration.kind,
            settings=transfer_settings(self.configuration) if background else None,
            schedule=schedule if background else None,
            checksum=checksum,
        )
        runnable: list[DownloadRecord] = []
        for claim in claims:
            if claim.outcome is ClaimOutcome.REFUSED:
                assert claim.error is not None
                self._error(result, claim.error, claim.id)
            elif claim.outcome is ClaimOutcome.SKIPPED:
                assert claim.record is not None
                if claim.elsewhere is not None:
                    self.reporter.info(
                        f"{claim.id}: already downloaded to {claim.record.path}; "
                        f"`--force` fetches it to {claim.elsewhere}"
                    )
                else:
                    self.reporter.info(f"{claim.id}: already downloaded: {claim.record.path}")
                result.outcomes.append(Outcome(claim.id, OutcomeStatus.SKIPPED, claim.record))
            else:
                assert claim.record is not None
                runnable.append(claim.record)
        if background:
            result.outcomes += [Outcome(r.id, OutcomeStatus.QUEUED, r) for r in runnable]
            if runnable:
                ensure_worker(Path(self.configuration.state_dir))
                when = ""
                dates = [r.not_before for r in runnable if r.is_for_worker and r.not_before]
                if dates and any(r.status is RecordStatus.WAITING for r in runnable):
                    when = ", to start at " + time.strftime(
                        "%Y-%m-%d %H:%M:%S", time.localtime(min(dates))
                    )
                self.reporter.info(
                    f"{len(runnable)} download(s) handed to the background "
                    f"worker{when}; `halftunes wait` waits for them"
                )
            return
        outcomes, interrupted = self._run_here(runnable, delegate, interruption)
        again = refresh(outcomes) if refresh is not None and not interrupted else []
        if again:
            claims = self.records.claim(
                again,
                owner=self.records.owner_token(),
                force=False,
                queue=False,
                download_dir=folder,
                session_kind=self.configuration.kind,
            )
            retried = [c.record for c in claims if c.record and c.outcome is ClaimOutcome.CLAIMED]
            more, interrupted = self._run_here(retried, delegate, interruption)
            by_id = {o.id: o for o in more}
            outcomes = [by_id.get(o.id, o) for o in outcomes]
        for outcome in outcomes:
            if outcome.status is OutcomeStatus.COMPLETED and outcome.record is not None:
                try:
                    self.embed(outcome.record, self.session, tracks)
                except HalftunesError as exc:  # (the file is kept, untagged)
                    self._error(result, exc, outcome.id)
        self._report_run(outcomes, result, interruption if interrupted else None)

    # -- tags and artwork ---------------------------------------------------------------------
    def embed(
        self,
        record: DownloadRecord,
        session: Session,
        tracks: dict[str, dict[str, Any]] | None = None,
    ) -> bool:
        """--embed-metadata / --embed-artwork, as the transfer's configuration says, into a
        completed preview (its track details from `tracks` or the cache; a URL download has
        none): the tagged file replaces it whole, the record's size follows. True if it
        wrote tags."""
        config = session.configuration
        if not (config.embed_metadata or config.embed_artwork):
            return False
        tagging.check_available()
        track = (tracks or {}).get(record.id)
        if track is None:
            cached = self.records.store.get_tracks(config.api_url, [record.id])
            track = cached[record.id][0] if record.id in cached else None
        if track is None:
            return False  # (a URL download: no details to write)
        artwork = None
        if config.embed_artwork and isinstance(track.get("artworkUrl100"), str):
            artwork = self._artwork(session, tagging.artwork_url(track["artworkUrl100"]))
        size = tagging.embed(
            Path(record.path),
            track,
            artwork,
            metadata=config.embed_metadata,
            durable=config.is_durable,
        )
        self.records.resized(record.id, size)
        return True

    @staticmethod
    def _artwork(session: Session, url: str) -> bytes:
        task = session.data_task(url)
        task.run()
        status = getattr(task.response, "status_code", None)
        if task.error is not None or status != 200 or not task.data:
            why = task.error or f"HTTP {status}"
            raise tagging.TagError(
                f"cannot fetch the artwork {url}: {why}", "the file is kept untagged"
            )
        return bytes(task.data)

    def _check_places(self, entries: Sequence[Target | DownloadRecord], folder: Path) -> Path:
        """Make sure each folder a file of `entries` goes in exists (as wget -P makes it) and
        takes a file, before any record is made: a bad -o or -P is bad input, not a failed
        download. `folder` itself is checked only when a file goes in it."""
        seen: set[Path] = set()
        for entry in entries:
            place = entry.place(folder) if isinstance(entry, Target) else Path(entry.path)
            if place.parent not in seen:
                seen.add(place.parent)
                check_download_dir(place.parent)
        return folder

    def _run_here(
        self,
        runnable: list[DownloadRecord],
        delegate: Any,
        interruption: Interruption | None,
    ) -> tuple[list[Outcome], bool]:
        """Run here; the outcomes, and whether an interruption (the process edge's Ctrl-C or
        SIGTERM) paused every transfer at a checkpoint (cancelled them in the ephemeral
        session)."""
        if not runnable:
            return [], False
        self.session.delegate = delegate
        self.session.call_delegate("on_transfers", len(runnable), [r.label for r in runnable])
        runner = Runner(self.session, self.records.owner_token())
        runner.start_control()
        futures: list[Future[Outcome]] = []
        interruption = interruption or Interruption()
        reason = "cancel" if self.configuration.is_ephemeral else "pause"
        interruption.is_armed = True
        stopped = False
        try:
            futures += [runner.submit(record) for record in runnable]
            pending = set(futures)
            while pending:
                try:
                    _, pending = wait_futures(pending, timeout=STOP_POLL_SECONDS)
                except KeyboardInterrupt:  # a caller without an edge of its own: Ctrl-C
                    interruption.request(ExitStatus.INTERRUPTED)
                if interruption.is_requested and not stopped:
                    runner.stop_all(reason)  # every transfer pauses at a checkpoint
                    stopped = True
        finally:
            interruption.is_armed = False
            if not stopped and any(not f.done() for f in futures):
                runner.stop_all(reason)  # (an error on the way out: never wait for them all)
            runner.shutdown()
            self.session.http.close()
            self.session.call_delegate("on_all_finished")
        return [future.result() for future in futures], interruption.is_requested

    def _report_run(
        self, outcomes: list[Outcome], result: BatchResult, interruption: Interruption | None
    ) -> None:
        """Tell how the transfers run here ended; an interruption decides the exit status."""
        interrupted = interruption is not None
        for outcome in outcomes:
            result.outcomes.append(outcome)
            if outcome.status is OutcomeStatus.FAILED and outcome.error is not None:
                error = outcome.error
                if isinstance(error, TransferError) and not error.is_permanent and not error.hint:
                    error.hint = (
                        f"`halftunes resume {outcome.id}` tries again from where it stopped"
                    )
                self._error(result, error)
            elif outcome.status is OutcomeStatus.PAUSED and not interrupted:
                self.reporter.info(
                    f"{outcome.id}: paused by request; `halftunes resume {outcome.id}` continues it"
                )
            elif outcome.status is OutcomeStatus.CANCELLED and not interrupted:
                self.reporter.info(f"{outcome.id}: cancelled by request")
            for note in outcome.notes:  # restarts, decoding: what the user should know
                self.reporter.info(f"{outcome.id}: {note}")
        if interruption is not None:
            result.interrupted = True
            if self.configuration.is_ephemeral:
                self.reporter.info("interrupted: partial downloads discarded (ephemeral session)")
            else:
                paused = [o.id for o in result.outcomes if o.status is OutcomeStatus.PAUSED]
                if paused:
                    self.reporter.info(
                        f"interrupted: paused {len(paused)} download(s); "
                        f"`halftunes resume {' '.join(paused)}` continues"
                    )
            result.exit_code = worse(result.exit_code, interruption.exit_code)

    def outcome_records(self, result: BatchResult) -> list[tuple[Outcome, DownloadRecord]]:
        """Each outcome with its record as the state file has it now (for the report)."""
        ids = [o.id for o in result.outcomes]
        fresh = {r.id: r for r in self.records.all(ids)} if ids else {}
        out = []
        for outcome in result.outcomes:
            record = fresh.get(outcome.id) or outcome.record
            if record is not None:
                out.append((outcome, record))
        return out

    # -- steering -------------------------------------------------------------------------
    def steer(self, ids: list[str], *, all_: bool, action: StopRequest) -> SteerResult:
        """Pause or cancel, here or in the process that runs the transfer; returns once the
        transfers have stopped. `--all` touches unfinished downloads only, and lists the ones
        it stopped."""
        result = SteerResult()

        def error(exc: HalftunesError) -> None:
            self.reporter.error(exc)
            result.exit_code = worse(result.exit_code, int(exc.exit_code))

        if not ids and not all_:
            error(UsageError(f"name the downloads to {action}, or use --all"))
            return result
        targets: list[DownloadRecord] = []
        if all_:  # the unfinished ones; a finished download has nothing to stop
            targets = [r for r in self.records.all() if r.status is not RecordStatus.COMPLETED]
        for item in ids:
            record = self.records.get(item)
            if record is None:
                error(unknown_download(item))
            else:
                targets.append(record)
        waiting, forgotten = [], {}
        untouched: set[str] = set()
        done = "cancelled" if action is StopRequest.CANCEL else "paused"
        for record in targets:
            try:  # compare-and-set against the status this command saw
                stop = self.records.request_stop(record.id, action, seen=record.status)
            except UnknownIdError:
                continue  # gone meanwhile (another process cancelled it)
            if stop.action is StopAction.WAITING:
                waiting.append(record.id)
            elif stop.action is StopAction.FORGOTTEN:
                forgotten[record.id] = record
            elif stop.action is StopAction.FINISHED:
                self.reporter.info(f"{record.id}: completed before it could be {done}; kept")
            elif stop.action is StopAction.UNCHANGED:
                untouched.add(record.id)
                if not all_:
                    self.reporter.info(f"{record.id}: already {record.status}")
        for rid in waiting:
            after = self.records.wait_until_stopped(rid, timeout_seconds=30)
            if after is not None and after.status is RecordStatus.RUNNING:
                error(
                    HalftunesError(
                        f"{rid}: its owner did not stop within 30 s",
                        "try again, or check `halftunes list`",
                    )
                )
            elif after is not None and after.status is RecordStatus.COMPLETED:
                # the body was whole when the request came: its owner let it complete
                self.reporter.info(f"{rid}: completed before it could be {done}; kept")
            elif action is StopRequest.CANCEL and after is not None:
                self.records.forget(rid, seen=after.status)  # (paused by a dying owner)
        for record in targets:
            if all_ and record.id in untouched:
                continue  # --all lists what it acted on (named ids are listed as they are)
            after = self.records.get(record.id)
            if after is not None:
                result.records.append(after.public())
            elif action is StopRequest.CANCEL:
                gone = forgotten.get(record.id, record)
                result.records.append({**gone.public(), "status": "cancelled"})
        return result

    # -- list and wait --------------------------------------------------------------------
    def all_records(self) -> list[DownloadRecord]:
        if not self.records.is_persistent:
            return []
        return self.records.all()

    def record(self, record_id: str) -> DownloadRecord:
        record = self.records.get(record_id)
        if record is None:
            raise unknown_download(record_id)
        return record

    def wait(
        self,
        ids: list[str],
        *,
        timeout_seconds: float | None = None,
        progress: Subscriber | None = None,
        poll_seconds: float = 0.1,
    ) -> WaitResult:
        """Block until the downloads are no longer queued or running (restarting the worker
        if queued work has none); `progress` hears each poll's records as they move, and how
        each ended.

        Without ids it covers what is queued or running now and every outcome not yet
        reported; what it returns counts as reported, so an old failure changes the exit
        status of one `wait` at most."""
        for item in ids:
            if self.records.get(item) is None:
                raise unknown_download(item)
        if not ids:
            active = [r.id for r in self.records.all() if r.status in ACTIVE]
            ids = active + [r.id for r in self.records.unreported() if r.id not in active]
            if not ids:
                return WaitResult([])

        on_poll: Callable[[list[DownloadRecord]], None] | None = None
        ended: set[str] = set()  # told as ended (a pause from elsewhere shows at once)
        if progress is not None:
            shown = progress

            def on_poll(records: list[DownloadRecord]) -> None:
                for record in records:
                    if record.status in ACTIVE:
                        shown.handle(record_event(record))
                    elif record.id not in ended:
                        ended.add(record.id)
                        shown.handle(record_event(record, ended=True))

        result = self._wait_for(ids, timeout_seconds, on_poll, poll_seconds)
        if progress is not None:
            for record in result.records:
                if record.id not in ended:
                    progress.handle(record_event(record, ended=True))
        if not result.timed_out:
            self.records.mark_announced(r.id for r in result.records)
        return result

    def _wait_for(
        self,
        ids: list[str],
        timeout_seconds: float | None,
        on_poll: Callable[[list[DownloadRecord]], None] | None,
        poll_seconds: float,
    ) -> WaitResult:
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        state_dir = Path(self.configuration.state_dir)
        started_at: tuple | None = None  # what the records said when we last started a worker
        failed_starts = 0
        while True:
            self.records.reconcile_dead_owners()
            records = self.records.all(ids)
            active = [r for r in records if r.status in ACTIVE]
            if any(r.is_for_worker for r in active) and not is_worker_alive(state_dir):
                seen = tuple((r.id, r.status, r.bytes_received) for r in records)
                # A worker we started that died without moving anything died at start-up.
                failed_starts = failed_starts + 1 if seen == started_at else 0
                if failed_starts >= 2:
                    raise worker_start_error(state_dir, len(active))
                if ensure_worker(state_dir):
                    started_at = seen
            if on_poll is not None:
                on_poll(records)
            if not active:
                return WaitResult(records)
            if deadline is not None and time.monotonic() >= deadline:
                return WaitResult(records, timed_out=True, still_active=len(active))
            time.sleep(poll_seconds)

    def clean(self, ids: list[str], *, completed: bool, failed: bool) -> SteerResult:
        """Forget finished records (and the partials of failed ones); never a finished file.
        Without flags both kinds go; with ids, only those."""
        result = SteerResult()
        wanted = {RecordStatus.COMPLETED} if completed else set()
        wanted |= {RecordStatus.FAILED} if failed else set()
        wanted = wanted or {RecordStatus.COMPLETED, RecordStatus.FAILED}
        targets: list[DownloadRecord] = []
        for item in ids:
            record = self.records.get(item)
            if record is None:
                self.reporter.error(unknown_download(item))
                result.exit_code = worse(result.exit_code, ExitStatus.USAGE)
            elif record.status not in (RecordStatus.COMPLETED, RecordStatus.FAILED):
                error = HalftunesError(
                    f"{item} is {record.status}, not finished",
                    f"`halftunes cancel {item}` discards it",
                )
                self.reporter.error(error)
                result.exit_code = worse(result.exit_code, ExitStatus.ERROR)
            elif record.status in wanted:
                targets.append(record)
        if not ids:
            targets = [r for r in self.records.all() if r.status in wanted]
        for record in targets:
            gone = self.records.forget(record.id)
            if gone is not None:
                result.records.append(gone.public())
        return result

    # -- upload -----------------------------------------------------------------------------
    def upload(
        self, file: Path, url: str, *, method: str, headers: dict[str, str], delegate: Any = None
    ) -> Any:
        method = method.upper()
        if method not in ("PUT", "POST"):
            raise UsageError(f"--method must be PUT or POST, not {method!r}")
        self.session.delegate = delegate
        task = self.session.upload_task(url, file, method=method, headers=headers)
        task.run()
        if task.error is not None:
            raise task.error
        return task


def worker_start_error(state_dir: Path, queued: int) -> HalftunesError:
    """The worker dies as soon as it starts: say so, with the last line of its log."""
    log_path = state_dir / WORKER_LOG
    try:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line]
    except OSError:
        lines = []
    said = f": {lines[-1][:200]}" if lines else ""
    return HalftunesError(
        f"the background worker stopped as soon as it started, twice in a row{said}",
        f"{queued} download(s) are still queued; its log is {log_path}",
    )


def record_ids(configuration: SessionConfiguration, prefix: str = "") -> list[str]:
    """Ids of the records in the state dir that start with `prefix` (for shell completion);
    creates nothing when there is no state file yet."""
    if not configuration.persists_state or not state_file_exists(configuration.state_dir):
        return []
    records = Records(Store(Path(configuration.state_dir)))
    try:
        return [r.id for r in records.all() if r.id.startswith(prefix)]
    finally:
        records.close()


class _Tracks(dict[str, dict[str, Any]]):
    """Track details by id, and which came from the cache; the lookup's error, if any."""

    def __init__(self) -> None:
        super().__init__()
        self.from_cache: set[str] = set()
        self.lookup_error: HalftunesError | None = None


# How soon a stop request from the process edge reaches the transfers.
STOP_POLL_SECONDS = 0.05

# How long track details from a search or lookup are used without asking again (as long as
# a search answer is cached).
TRACK_CACHE_SECONDS = 3600.0


# -- catalog-scale jobs -------------------------------------------------------------------------
@dataclass
class JobResult:
    status: dict[str, Any]
    exit_code: int
    # what this run planned: {"added": items planned now, "gone": items of the plan no
    # longer in the input, "new_shards": ...}
    growth: dict[str, int] = dataclasses.field(default_factory=dict)


def run_job(
    job_dir: str | Path,
    input_path: Path,
    *,
    configuration: SessionConfiguration,
    output: str | None,
    engine: str,
    shard_size: int | None,
    scheduler: str | None = None,
    hooks: Hooks | None = None,
    workers: int | None = None,
    retry_failed: bool = False,
    scratch: str | None = None,
) -> JobResult:
    """Plan (or grow the plan), run every shard with work left, report the job's counts.
    `job_dir`: a folder or an fsspec URL; `scratch`: each worker machine's folder for the
    shards' records and partials (None: see `Job.scratch_dir`).

    Exit status: 0 when every item completed or was skipped, 1 when some failed."""
    if engine not in ("local", "dask"):
        raise UsageError(f"--engine must be local or dask, not {engine!r}")
    if workers is not None and not 1 <= workers <= 256:
        raise UsageError(f"--workers must be from 1 to 256, not {workers}")
    if workers is not None and engine != "local":
        raise UsageError("--workers is for the local engine (a Dask cluster has its own)")
    if scheduler is not None and engine != "dask":
        raise UsageError("--scheduler is for --engine dask")
    job = Job(job_dir, scratch)
    if scheduler is not None and not _is_loopback(scheduler):
        _reachable_by_workers(job, output, scheduler)
    if scheduler is not None:
        _reach_scheduler(scheduler)  # (before planning, which may take long)
    held = job.lock(configuration.state_dir)
    try:
        return _run_job(
            job,
            input_path,
            configuration,
            output,
            engine,
            shard_size,
            scheduler,
            hooks,
            workers,
            retry_failed,
        )
    finally:
        held.close()


def _run_job(
    job: Job,
    input_path: Path,
    configuration: SessionConfiguration,
    output: str | None,
    engine: str,
    shard_size: int | None,
    scheduler: str | None,
    hooks: Hooks | None,
    workers: int | None,
    retry_failed: bool,
) -> JobResult:
    lookups = dataclasses.replace(configuration, kind="default")  # (paced as this machine)
    plan = job.make_plan(input_path, output, shard_size, lookups)
    if hooks is not None:
        hooks.planned(plan["growth"])
    if retry_failed:
        job.resolve_again(lookups)
    overrides = {"max_connections_per_host": configuration.max_connections_per_host}
    if engine == "dask":
        run_dask(job, overrides, scheduler, hooks, retry_failed)
    else:
        run_local(job, overrides, hooks, workers, retry_failed)
    status = job.status()
    return JobResult(
        status, ExitStatus.ERROR if status["failed"] else ExitStatus.OK, plan["growth"]
    )


def _reach_scheduler(scheduler: str) -> None:
    """A TCP connection to the scheduler's address, or a clear error (a typo in the address,
    no scheduler there) before the job is planned."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(scheduler if "://" in scheduler else f"tcp://{scheduler}")
    if parts.scheme not in ("tcp", "tls") or parts.hostname is None:
        return  # (another transport: Dask's own client says what is wrong)
    hint = "check the address (tcp://HOST:8786) and that `dask scheduler` runs there"
    try:
        with socket.create_connection((parts.hostname, parts.port or 8786), timeout=10):
            pass
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise HalftunesError(
            f"cannot reach the Dask scheduler at {scheduler}: {reason}", hint
        ) from None
    try:
        import asyncio
        import contextlib

        from distributed.comm import connect
    except ImportError:
        return  # (run_dask says the extra is missing)
    with contextlib.suppress(RuntimeError):
        asyncio.get_running_loop()
        return  # (called from async code: Dask's own client says what is wrong)

    async def handshake() -> None:  # (something else there, an HTTP server, never answers one)
        comm = await asyncio.wait_for(connect(scheduler, timeout=5), 8)
        await comm.close()

    try:
        asyncio.run(handshake())
    except Exception:  # noqa: BLE001 - whatever it is, it is not a scheduler that answers
        raise HalftunesError(
            f"{scheduler} answers, but not as a Dask scheduler (no Dask handshake in 5 s)", hint
        ) from None


def _is_loopback(scheduler: str) -> bool:
    """A scheduler on this machine (its workers are, too)."""
    host = scheduler.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1", "") or host.startswith("127.")


def _reachable_by_workers(job: Job, output: str | None, scheduler: str) -> None:
    """A cluster beyond this machine cannot reach this machine's folders: a job there lives
    at a URL (s3://..., or file:// for a disk every machine shares), its output too."""
    local = []
    if not job.store.shared:
        local.append(f"the job dir {job.location}")
    plan = job.plan() if output is None else None
    where = output if output is not None else plan["output"] if plan is not None else None
    if where is None or not is_url(where):
        local.append(f"the output folder {where or 'the download dir'} (-P)")
    if local:
        raise UsageError(
            f"the Dask workers at {scheduler} cannot reach "
            + " and ".join(local)
            + " on this machine",
            "give an object store (s3://bucket/jobs/x, -P s3://bucket/previews) or, for a "
            "disk every machine shares at the same path, a file:// URL",
        )


def job_status(job_dir: str | Path) -> dict[str, Any]:
    return Job(job_dir).status()


def job_failures(job_dir: str | Path) -> list[dict[str, Any]]:
    """The failed items of a job's finished shards (their manifest lines)."""
    return Job(job_dir).failed_items()
