"""A job: its plan, its shards and their manifests, in a job store (a folder or a URL).

    plan.json              what the job is (input, output folder, shard size, counts)
    shards/<k>.json        the items of shard k, resolved (id, url, file name, metadata)
    lookups/<chunk>.json   lookups made while planning, kept for a planning that is resumed
    uploads/<k>.jsonl      shard k's items already in an object-store output (noted as it runs)
    manifests/<k>.jsonl    written last: shard k is done

Every one of them is written whole (`store.JobStore`). A shard's download records and
partials live in the scratch folder of the machine that runs it (`--scratch`; by default
`JOB_DIR/state/<k>` for a job in a plain folder, and `<state dir>/jobs/<job>/<k>` of the
worker's machine for a job at a URL), with the staging folder of an object-store output.

A shard is a pure, idempotent unit of work: plain data in (the job's location and its
number), files and one manifest out. Running it again after its manifest exists does nothing;
running it after an interruption finishes what is missing, resuming partials like `download`
on the same machine, and starting its unfinished items again on another.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import SessionConfiguration, load_configuration
from ..errors import HalftunesError, RateLimitedError, UsageError
from ..itunes import ITunesClient, Track
from ..records import ClaimOutcome, RecordStatus
from ..retry import RetryLoop, RetryPolicy
from ..runner import Outcome, OutcomeStatus, Runner
from ..session import Session
from ..targets import OutputSpec, Target, target_for_track, url_target
from .inputs import Item, read_items
from .store import JobStore, LocalStore, canonical, filesystem, is_local, is_url, write_atomically

log = logging.getLogger(__name__)
PLAN_VERSION = 1
DEFAULT_SHARD_SIZE = 1000
UPLOAD_NOTE_SECONDS = 2.0  # how often a running shard notes its uploads in the job store


@dataclass
class Entry:
    """One resolved item of a shard: what to fetch and where, or why it cannot be."""

    line: int
    id: str
    url: str | None
    name: str | None  # file name relative to the output folder (may hold subfolders)
    title: str = ""
    artist: str = ""
    album: str = ""
    kind: str = ""
    error: str | None = None  # set when the item cannot be downloaded (unknown id, album...)


class Job:
    def __init__(self, location: str | os.PathLike[str], scratch: str | None = None):
        """`scratch`: where this machine keeps the shards' records and partials (None: the
        default, see the module's docstring)."""
        self.store = JobStore.at(location)
        self.location = self.store.location
        self.scratch = scratch

    @staticmethod
    def shard_name(k: int) -> str:
        return f"{k:06d}"

    def lock(self, state_dir: Path) -> Any:
        return self.store.lock(state_dir)

    def plan(self) -> dict[str, Any] | None:
        text = self.store.read("plan.json")
        if text is None:
            return None
        try:
            plan: dict[str, Any] = json.loads(text)
            return plan
        except ValueError as exc:
            raise HalftunesError(
                f"job plan {self.location}/plan.json is unreadable: {exc}"
            ) from exc

    def scratch_dir(self, plan: dict[str, Any], overrides: dict[str, Any] | None = None) -> Path:
        """This machine's folder for the job's shard records (and an upload's staging): one
        per plan, named by its id, so that nothing of a job that is gone (deleted, lost
        with its store) passes for this one's."""
        if self.scratch is not None:
            root = Path(os.path.abspath(Path(self.scratch).expanduser()))
        elif isinstance(self.store, LocalStore) and not self.store.shared:
            root = self.store.dir / "state"
        else:
            root = Path(load_configuration(dict(overrides or {})).state_dir) / "jobs"
        # (a plan of halftunes before 2026-12 has no id: its folders as they were)
        return root / str(plan["id"]) if "id" in plan else root

    def done_shards(self) -> set[int]:
        """The shards with a manifest (one listing of the store)."""
        return {
            int(name.removesuffix(".jsonl"))
            for name in self.store.names("manifests")
            if name.endswith(".jsonl") and name.removesuffix(".jsonl").isdigit()
        }

    # -- planning ------------------------------------------------------------------------
    def make_plan(
        self,
        input_path: Path,
        output: str | None,
        shard_size: int | None,
        config: SessionConfiguration,
    ) -> dict[str, Any]:
        """Read the input, resolve ids (batched, paced, cached lookups) and write the shards.

        A job planned before keeps its plan and grows: the input's items that the plan does
        not have (keyed by id or URL) are planned into new shards; items no longer in the
        input stay as they are (`plan["growth"]` says how many of each). Another output
        folder or shard size than the plan's is refused (UsageError). `output` and
        `shard_size` None: the plan's (or the defaults: the download dir, 1000)."""
        existing = self.plan()
        if existing is not None:
            return self._grow(existing, input_path, output, shard_size, config)
        shard_size = DEFAULT_SHARD_SIZE if shard_size is None else shard_size
        if shard_size < 1:
            raise UsageError(f"--shard-size must be at least 1, not {shard_size}")
        output = output or str(config.download_dir)
        remote = is_url(output)
        if remote:
            filesystem(output)  # fails early (exit 2) without the extra
        folder = self._folder(output)
        items = _once(read_items(input_path), OutputSpec(folder))
        entries = self._resolve(items, folder, config)
        shards = [entries[i : i + shard_size] for i in range(0, len(entries), shard_size)]
        for k, shard in enumerate(shards):
            self._write_shard(k, shard)
        plan = {
            "version": PLAN_VERSION,
            "id": uuid.uuid4().hex[:16],  # (names this job's scratch on every machine)
            "input": str(input_path.absolute()),
            "output": canonical(output) if remote else str(folder),
            "shard_size": shard_size,
            "items": len(entries),
            "shards": len(shards),
            "created": time.time(),
        }
        self._planned(plan)
        growth = {"added": len(entries), "gone": 0, "new_shards": len(shards), "new_job": 1}
        return {**plan, "growth": growth}

    @staticmethod
    def _folder(output: str) -> Path:
        # (an object-store output's files are named relative to a staging folder that each
        # worker chooses: the plan only keeps names relative to the output)
        return Path(os.sep) if is_url(output) else Path(os.path.abspath(Path(output).expanduser()))

    def _write_shard(self, k: int, entries: list[Entry]) -> None:
        self.store.write(
            f"shards/{self.shard_name(k)}.json", json.dumps([asdict(e) for e in entries])
        )

    def _grow(
        self,
        plan: dict[str, Any],
        input_path: Path,
        output: str | None,
        shard_size: int | None,
        config: SessionConfiguration,
    ) -> dict[str, Any]:
        differs = []
        if output is not None:
            wanted = canonical(output) if is_url(output) else str(self._folder(output))
            if wanted != plan["output"]:
                differs.append(f"-P {wanted} (the job's: {plan['output']})")
        if shard_size is not None and shard_size != plan["shard_size"]:
            differs.append(f"--shard-size {shard_size} (the job's: {plan['shard_size']})")
        if differs:
            raise UsageError(
                f"{self.location} was planned otherwise: " + "; ".join(differs),
                "run it as it was planned (or leave those options out), or start another "
                "job in another JOB_DIR",
            )
        folder = self._folder(plan["output"])
        items = _once(read_items(input_path), OutputSpec(folder))
        every = self.shards_entries(list(range(plan["shards"])))
        planned = [Entry(**e) for k in range(plan["shards"]) for e in every[k]]
        known = {e.id for e in planned}
        spec = OutputSpec(folder)
        fresh = [i for i in items if _item_key(i, spec) not in known]
        keys = {_item_key(i, spec) for i in items}
        gone = sum(1 for e in planned if e.id not in keys)
        growth = {"added": 0, "gone": gone, "new_shards": 0}
        if fresh:
            names = {e.name.casefold() for e in planned if e.name}
            entries = self._resolve(fresh, folder, config, names)
            size, first = plan["shard_size"], plan["shards"]
            shards = [entries[i : i + size] for i in range(0, len(entries), size)]
            for n, shard in enumerate(shards):
                self._write_shard(first + n, shard)
            # the plan last: shard files beyond its count are ignored (and written again)
            plan = {
                **plan,
                "input": str(input_path.absolute()),
                "items": plan["items"] + len(entries),
                "shards": first + len(shards),
            }
            self._planned(plan)
            growth.update(added=len(entries), new_shards=len(shards))
        return {**plan, "growth": growth}

    def resolve_again(self, config: SessionConfiguration) -> int:
        """`--retry-failed`: the ids that found no downloadable track when planned (unknown,
        no preview) are looked up again, and their shard files rewritten with what is found
        now. Returns how many were resolved."""
        plan = self._known_plan()
        folder = self._folder(plan["output"])
        every = self.shards_entries(list(range(plan["shards"])))
        shards = {k: [Entry(**e) for e in entries] for k, entries in every.items()}
        names = {e.name.casefold() for entries in shards.values() for e in entries if e.name}
        found = 0
        for k, entries in shards.items():
            stale = [e for e in entries if e.url is None and "://" not in e.id]
            if not stale:
                continue
            fresh = self._resolve([Item(e.line, e.id) for e in stale], folder, config, names)
            better = {e.id: e for e in fresh if e.url is not None}
            if better:
                merged = [better.get(e.id, e) for e in entries]
                self._write_shard(k, merged)
                found += len(better)
        self._forget_lookups()
        return found

    def shard_entries(self, k: int) -> list[dict[str, Any]]:
        return self.shards_entries([k])[k]

    def shards_entries(self, ks: list[int]) -> dict[int, list[dict[str, Any]]]:
        """The items of shards `ks` (their files read side by side)."""
        names = {k: f"shards/{self.shard_name(k)}.json" for k in ks}
        texts = self.store.read_many(list(names.values()))
        out = {}
        for k, name in names.items():
            text = texts[name]
            if text is None:
                raise HalftunesError(f"{self.location}: shard {k} of the plan has no shard file")
            out[k] = self._parsed(name, text, lines=False)
        return out

    def manifests_of(self, ks: list[int]) -> dict[int, list[dict[str, Any]] | None]:
        """The manifests of shards `ks` (None: not done), read side by side."""
        names = {k: f"manifests/{self.shard_name(k)}.jsonl" for k in ks}
        texts = self.store.read_many(list(names.values()))
        return {
            k: None if texts[name] is None else self._parsed(name, texts[name] or "", lines=True)
            for k, name in names.items()
        }

    def _parsed(self, name: str, text: str, lines: bool) -> list[dict[str, Any]]:
        """A shard file (a JSON list) or a manifest (JSON Lines) of the store, or an error
        that names it."""
        try:
            if lines:
                return [json.loads(line) for line in text.splitlines() if line.strip()]
            entries: list[dict[str, Any]] = json.loads(text)
            return entries
        except ValueError as exc:
            hint = (
                "delete it to run that shard again"
                if lines  # (a manifest: the shard's records make it again)
                else "restore it from a copy: a shard file holds what planning resolved"
            )
            raise HalftunesError(f"{self.location}/{name} is damaged: {exc}", hint) from None

    def _looked_up(self, ids: set[str], api_url: str) -> dict[str, dict[str, Any]]:
        """What the lookups of a planning that was interrupted found of `ids` (one chunk
        file per lookup call in the store's `lookups/`, removed once the shards hold it)."""
        out: dict[str, dict[str, Any]] = {}
        for name in self.store.names("lookups"):
            with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
                chunk = json.loads(self.store.read(f"lookups/{name}") or "{}")
                if chunk["api"] == api_url:
                    out.update((i, raw) for i, raw in chunk["tracks"].items() if i in ids)
        return out

    def _planned(self, plan: dict[str, Any]) -> None:
        """The plan written, last: its shards are all there; the lookups are in them now."""
        self.store.write("plan.json", json.dumps(plan, indent=1))
        self._forget_lookups()

    def _forget_lookups(self) -> None:
        for name in self.store.names("lookups"):
            self.store.remove(f"lookups/{name}")

    def _resolve(
        self,
        items: list[Item],
        folder: Path,
        config: SessionConfiguration,
        names: set[str] | None = None,
    ) -> list[Entry]:
        """`names`: the (case-folded) file names the job's plan has given already."""
        spec = OutputSpec(folder)
        ids = list(dict.fromkeys(i.value for i in items if not i.is_url))
        tracks: dict[str, dict[str, Any]] = {}
        if ids:
            # (a job keeps what it looked up for good, in its store: a planning that was
            # interrupted sends no lookup twice; the pacing is this machine's, in its state)
            tracks = self._looked_up(set(ids), config.api_url)
            missing = [i for i in ids if i not in tracks]
            session = Session(config)
            try:
                client = ITunesClient(session)
                for start in range(0, len(missing), LOOKUP_BATCH):
                    found = {
                        str(t.trackId): t.raw
                        for t in _lookup_patiently(client, missing[start : start + LOOKUP_BATCH])
                    }
                    name = f"lookups/{time.time_ns():020d}-{os.getpid()}.json"
                    self.store.write(name, json.dumps({"api": config.api_url, "tracks": found}))
                    tracks.update(found)
            finally:
                session.close()
        entries = []
        names = set() if names is None else names

        def unique(target: Target) -> str:
            # Shards run in parallel, each checking names only against its own records: the
            # plan, which sees every item, gives a repeated name the item's id (as download does).
            name = target.filename
            if name.casefold() in names:
                name = target.namer(f" ({target.id})")
            names.add(name.casefold())
            return name

        for item in items:
            if item.is_url:
                target = url_target(item.value, spec)
                entries.append(
                    Entry(item.line, target.id, item.value, unique(target), title=target.filename)
                )
                continue
            raw = tracks.get(item.value)
            if raw is None:
                entries.append(
                    Entry(item.line, item.value, None, None, error=f"no track with id {item.value}")
                )
                continue
            track = Track.from_api(raw)
            try:
                target = target_for_track(track, spec)
            except UsageError as exc:
                entries.append(Entry(item.line, item.value, None, None, error=str(exc)))
                continue
            entries.append(
                Entry(
                    item.line,
                    item.value,
                    target.url,
                    unique(target),
                    title=track.trackName,
                    artist=track.artist_or_show,
                    album=track.collectionName or "",
                    kind=track.kind,
                )
            )
        return entries

    # -- one shard -------------------------------------------------------------------------
    def manifest_lines(self, k: int) -> list[dict[str, Any]] | None:
        """Shard k's manifest, or None while the shard is not done."""
        return self.manifests_of([k])[k]

    @staticmethod
    def to_retry(lines: list[dict[str, Any]] | None, retry_failed: bool) -> set[str]:
        """Ids of a finished shard's failed items (its manifest `lines`) to run again: the
        transient failures (a 5xx, 429, a timeout, a reset), and with `retry_failed` the
        permanent ones too."""
        return {
            line["id"]
            for line in lines or []
            if line["status"] == "failed" and (retry_failed or not _is_permanent(line))
        }

    def run_shard(
        self,
        k: int,
        overrides: dict[str, Any] | None = None,
        delegate: Any = None,
        retry_failed: bool = False,
        on_item: ItemEnded | None = None,
    ) -> dict[str, int]:
        """Download shard k's items and write its manifest last. A finished shard runs again
        only its failed items (`to_retry`), and its manifest is replaced whole. `on_item`
        hears every item this run ends, once, as it ends (an upload's: once uploaded).

        One run of a shard at a time on a machine: a second (a rerun while the run of a
        killed client still goes on in a Dask worker) waits for the first, then finds what
        it did, instead of writing a manifest of items "ended running"."""
        plan = self.plan()
        assert plan is not None
        with _held(self.scratch_dir(plan, overrides) / self.shard_name(k) / "shard.lock"):
            return self._run_shard(k, plan, overrides, delegate, retry_failed, on_item)

    def _run_shard(
        self,
        k: int,
        plan: dict[str, Any],
        overrides: dict[str, Any] | None,
        delegate: Any,
        retry_failed: bool,
        on_item: ItemEnded | None,
    ) -> dict[str, int]:
        previous = self.manifest_lines(k)
        if previous is not None:
            again = self.to_retry(previous, retry_failed)
            if not again:
                return {"skipped_shard": 1}
        entries = [Entry(**e) for e in self.shard_entries(k)]
        if previous is not None:
            entries = [e for e in entries if e.id in again]
        scratch = self.scratch_dir(plan, overrides)
        remote = plan["output"] if is_url(plan["output"]) else None
        folder = scratch / "staging" if remote else Path(plan["output"])
        wanted = {e.id for e in entries}
        uploads = _Uploads(self.store, k, scratch / self.shard_name(k), folder, remote, wanted)
        flags = {
            "state_dir": str(scratch / self.shard_name(k)),
            "download_dir": str(folder),
            "session": "default",
            **(overrides or {}),
        }
        session = Session(load_configuration(flags), delegate)
        records = session.records
        started = time.monotonic()
        heard: set[str] = set()
        telling = threading.Lock()  # (items are told one at a time, from any thread)
        by_id = {e.id: e for e in entries}

        def tell(event: dict[str, Any]) -> None:
            if on_item is not None:
                with telling:
                    heard.add(event["id"])
                    on_item(event)

        def upload(entry: Entry, record: Any) -> None:
            # uploaded as soon as it is here: a shard that moves to another machine finds it
            # in the output (an upload that fails is tried again with the manifest)
            try:
                line = uploads.upload(self._manifest_line(entry, record, started))
            except Exception as exc:  # noqa: BLE001 - any failure: tried again at the end
                log.info("upload of %s deferred: %s", entry.id, exc)
                return
            tell(_item_event(line))

        # (the outcomes are told on the runner's one settling thread: uploads run beside it)
        uploader = _Uploader(session.configuration.max_connections_per_host)

        def ended(outcome: Outcome) -> None:
            record = outcome.record
            if record is None:
                return
            if remote is not None and outcome.status is OutcomeStatus.COMPLETED:
                uploader.submit(upload, by_id[outcome.id], record)
                return
            if on_item is None:
                return
            if outcome.status is OutcomeStatus.COMPLETED:
                event = {"bytes": record.bytes_total or 0, "path": record.path}
            elif outcome.status is OutcomeStatus.FAILED:
                event = {"bytes": 0, "error": str(outcome.error or record.error or "failed")}
                event["http_status"] = getattr(outcome.error, "status", None)
            else:
                return  # (paused: a stop; it ends in a later run)
            tell({"id": outcome.id, "status": str(outcome.status), **event})

        try:
            records.reconcile_dead_owners()  # a shard killed mid-way: its partials are paused
            targets = [
                Target(e.id, e.url, e.title or e.id, _fixed_name(e.name))
                for e in entries
                if e.url is not None and e.name is not None and e.id not in uploads.done
            ]
            owner = records.owner_token()
            claims = records.claim(
                targets,
                owner=owner,
                force=False,
                queue=False,
                download_dir=folder,
                session_kind="default",
            )
            runner = Runner(session, owner)
            runner.start_control()
            try:
                futures = [
                    runner.submit(c.record, ended)
                    for c in claims
                    if c.outcome is ClaimOutcome.CLAIMED and c.record is not None
                ]
                for future in futures:
                    future.result()
            except BaseException:  # Ctrl-C, SIGTERM (SystemExit), an error: pause at a checkpoint
                runner.stop_all("pause")
                runner.shutdown()
                uploader.abandon()  # (a PUT under way is not waited for: the store may hang)
                raise
            runner.shutdown()
            uploader.drain()  # (every item that completed is uploaded, or failed to)
            lines = []
            for e in entries:
                if e.id in uploads.done:
                    line = uploads.done_line(self._manifest_line(e, None, started))
                else:
                    line = self._manifest_line(e, records.get(e.id), started)
                    if remote is not None:
                        line = uploads.upload(line)
                if previous is not None and line["status"] == "failed":
                    line["attempts"] = _attempts(previous, e.id) + 1
                lines.append(line)
        finally:
            session.close()
        if on_item is not None:  # the items that ended without a transfer (or uploaded)
            for line in lines:
                if line["id"] not in heard:
                    on_item(_item_event(line))
        if previous is not None:  # the retried items' lines replace theirs, in place
            fresh = {line["id"]: line for line in lines}
            lines = [fresh.get(line["id"], line) for line in previous]
        name = f"manifests/{self.shard_name(k)}"
        parquet = _parquet_manifest(lines)
        if parquet is not None:  # (before the JSON Lines one, which marks the shard done)
            self.store.write(f"{name}.parquet", parquet)
        self.store.write(f"{name}.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
        uploads.forget()  # (the manifest says it all now)
        counts = {"completed": 0, "failed": 0, "skipped": 0, "bytes": 0}
        for line in lines:
            counts[line["status"]] += 1
            counts["bytes"] += line["bytes"] or 0
        return counts

    @staticmethod
    def _manifest_line(entry: Entry, record: Any, started: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": entry.id,
            "url": entry.url,
            "path": None,
            "status": "failed",
            "bytes": 0,
            "sha256": None,
            "http_status": None,
            "error": entry.error,
            "elapsed": round(time.monotonic() - started, 3),
            "line": entry.line,
            "title": entry.title,
            "artist": entry.artist,
            "album": entry.album,
            "kind": entry.kind,
            "time_to_first_byte": None,  # seconds from the transfer's start (its metrics)
            "bytes_per_second": None,
            # failed for good (no track, an album, 404, 410...): a rerun tries it again only
            # with --retry-failed; any other failure is tried again by every rerun
            "permanent": entry.error is not None,
        }
        if record is None:
            return out
        out["path"] = record.path
        metrics = record.metrics_summary
        if metrics is not None:
            out["time_to_first_byte"] = metrics.get("time_starttransfer")
            out["bytes_per_second"] = metrics.get("speed_download")
        if record.status is RecordStatus.COMPLETED and Path(record.path).exists():
            out.update(
                status="completed",
                bytes=os.path.getsize(record.path),
                sha256=_sha256(Path(record.path)),
                error=None,
            )
        else:
            out["error"] = record.error or f"ended {record.status}"
            out["http_status"] = record.http_status
            out["permanent"] = bool(record.permanent)
        return out

    # -- the whole job -------------------------------------------------------------------------
    def failed_items(self) -> list[dict[str, Any]]:
        """Every failed item of the finished shards, as its manifest line says (plus its
        shard), in the input's order."""
        out = [
            {**item, "shard": k}
            for k, lines in self._manifests()
            for item in lines
            if item["status"] == "failed"
        ]
        return sorted(out, key=lambda item: item.get("line") or 0)

    def _manifests(self) -> list[tuple[int, list[dict[str, Any]]]]:
        """The finished shards of the plan, each with its manifest."""
        plan = self._known_plan()
        done = sorted(k for k in self.done_shards() if k < plan["shards"])
        found = self.manifests_of(done)
        return [(k, lines) for k in done if (lines := found[k]) is not None]

    def _known_plan(self) -> dict[str, Any]:
        plan = self.plan()
        if plan is None:
            raise UsageError(
                f"{self.location} is not a job dir (no plan.json)",
                "start one with `halftunes job run JOB_DIR --input FILE`",
            )
        return plan

    def status(self) -> dict[str, Any]:
        plan = self._known_plan()
        counts = {"completed": 0, "failed": 0, "skipped": 0}
        manifests = self._manifests()
        done, nbytes = len(manifests), 0
        for _, lines in manifests:
            for item in lines:
                counts[item["status"]] = counts.get(item["status"], 0) + 1
                nbytes += item.get("bytes") or 0
        return {
            "shards": plan["shards"],
            "shards_done": done,
            "items": plan["items"],
            **counts,
            "bytes": nbytes,
            "output": plan["output"],
        }


LOOKUP_BATCH = 150  # ids per lookup call
# Apple's rate limit slows a job's lookups down: 15, 30, 60, 120, 240 s, then it gives up.
RATE_LIMITED_LOOKUPS = RetryPolicy(retries=5, base_seconds=15, max_seconds=240, jitter=lambda: 1.0)


def _lookup_patiently(
    client: ITunesClient, ids: list[str], sleep: Callable[[float], object] = time.sleep
) -> list[Track]:
    """One lookup call; Apple's rate limit (403/429) slows the job down instead of failing it."""
    for attempt in RetryLoop(RATE_LIMITED_LOOKUPS, what="an iTunes lookup", sleep=sleep):
        try:
            return client.lookup(ids)
        except RateLimitedError as exc:
            attempt.failed(exc)
    raise AssertionError("the retry loop ends by a return or an error")


ItemEnded = Callable[[dict[str, Any]], object]  # {"id", "status", "bytes", "path" | "error"}


def _item_event(line: dict[str, Any]) -> dict[str, Any]:
    """A manifest line as a progress event."""
    if line["status"] == "completed":
        return {
            "id": line["id"],
            "status": "completed",
            "bytes": line["bytes"],
            "path": line["path"],
        }
    event = {"id": line["id"], "status": line["status"], "bytes": 0, "error": line["error"]}
    return {**event, "http_status": line.get("http_status")}


def _is_permanent(line: dict[str, Any]) -> bool:
    if "permanent" in line:
        return bool(line["permanent"])
    return line.get("url") is None or line.get("http_status") in (404, 410)  # (older manifests)


def _attempts(lines: list[dict[str, Any]], ident: str) -> int:
    return next((line.get("attempts", 1) for line in lines if line["id"] == ident), 1)


def _once(items: list[Item], spec: OutputSpec) -> list[Item]:
    """The input's items, each once (by id or URL: the first line that names it)."""
    seen: set[str] = set()
    out = []
    for item in items:
        key = _item_key(item, spec)
        if key not in seen:
            seen.add(key)
            out.append(item)
    if len(out) < len(items):
        log.info(
            "%d duplicate line(s) in the input: each item is planned once", len(items) - len(out)
        )
    return out


def _item_key(item: Item, spec: OutputSpec) -> str:
    """How the plan knows an input item: its id, or its URL's record id."""
    return url_target(item.value, spec).id if item.is_url else item.value


def _fixed_name(name: str) -> Callable[[str], str]:
    stem, ext = os.path.splitext(name)
    return lambda suffix: f"{stem}{suffix}{ext}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _held(path: Path) -> Iterator[None]:
    """An exclusive flock on `path`, waited for (released when the process ends, however)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class _Uploader:
    """Uploads beside the runner: daemon threads, so that a stop never waits for a PUT to a
    store that hangs (a pool's threads are joined when the interpreter exits)."""

    def __init__(self, count: int):
        self.jobs: queue.Queue[tuple[Callable[..., object], tuple[Any, ...]] | None] = queue.Queue()
        self.threads = [
            threading.Thread(target=self._work, daemon=True, name=f"upload-{i}")
            for i in range(max(1, count))
        ]
        self.started = False

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        if not self.started:
            self.started = True
            for thread in self.threads:
                thread.start()
        self.jobs.put((fn, args))

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                job[0](*job[1])
            finally:
                self.jobs.task_done()
        self.jobs.task_done()

    def drain(self) -> None:
        """Every upload submitted, done; the threads end."""
        if self.started:
            self.jobs.join()
            for _ in self.threads:
                self.jobs.put(None)

    def abandon(self) -> None:
        """No more uploads: what is queued is dropped, one under way is not waited for."""
        with contextlib.suppress(queue.Empty):
            while True:
                self.jobs.get_nowait()
                self.jobs.task_done()
        for _ in self.threads:
            self.jobs.put(None)


class _Uploads:
    """A shard's uploads to an object-store output, each one PUT (an object appears whole or
    not at all). Each is noted durably in the shard's scratch folder as it lands (the same
    machine neither uploads nor downloads it twice) and, every few seconds, in the job
    store's `uploads/<k>.jsonl`: a shard that moves to another machine finds there what is
    in the output already, and fetches only the rest. Thread-safe (transfers end on their
    own threads)."""

    def __init__(
        self,
        store: JobStore,
        k: int,
        scratch: Path,
        staging: Path,
        remote: str | None,
        wanted: set[str],
    ):
        self.store, self.remote, self.staging = store, remote, staging
        self.name = f"uploads/{Job.shard_name(k)}.jsonl"
        self.path = scratch / "uploaded.jsonl"
        self.done: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.writing = threading.Lock()
        self.noted = 0  # entries in the store's note
        self.noted_at = 0.0
        if remote is not None:
            self._found(wanted)

    @staticmethod
    def _parse(text: str) -> dict[str, dict[str, Any]]:
        out = {}
        for line in text.splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                item = json.loads(line)
                out[str(item.pop("id"))] = item
        return out

    def _found(self, wanted: set[str]) -> None:
        """The uploads of earlier runs of the shard, as this machine's note (same machine) or
        the job store's (another machine) has them, each of the `wanted` items trusted only
        when its object is in the output with the noted size (the output may have lost it,
        or the note may be of a job that is gone)."""
        notes: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(HalftunesError):  # (a hint: unreadable, it is none)
            notes.update(self._parse(self.store.read(self.name) or ""))
        with contextlib.suppress(OSError, UnicodeDecodeError):
            notes.update(self._parse(self.path.read_text(encoding="utf-8")))
        fs = filesystem(self.remote or "")
        kept = []
        for ident, note in notes.items():
            if ident not in wanted:
                continue
            try:
                size = fs.info(note["path"])["size"]
            except FileNotFoundError:
                continue
            except (KeyError, TypeError, ValueError):
                continue  # (a note that names no object)
            except Exception as exc:  # (the output unreachable: say so, do not guess)
                raise HalftunesError(f"cannot check {note['path']}: {exc}") from exc
            if size == note.get("bytes"):
                kept.append(json.dumps({"id": ident, **note}) + "\n")
                self.done[ident] = note
        # this machine's note from now on: what was checked, and what is uploaded next
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, "".join(kept))

    def _keep(self, ident: str, note: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"id": ident, **note}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[ident] = note

    def upload(self, line: dict[str, Any]) -> dict[str, Any]:
        """A completed manifest line's file put in the output; the line, now naming it there."""
        if line["status"] != "completed" or self.remote is None:
            return line
        with self.lock:
            if line["id"] in self.done:
                return self.done_line(line)
        local = Path(line["path"])
        target = f"{self.remote}/{local.relative_to(self.staging).as_posix()}"
        fs = filesystem(self.remote)
        try:
            if is_local(fs):  # a copy, then a rename: a reader sees all of it or nothing
                partial = f"{target}.part-{os.getpid()}"
                fs.put_file(str(local), partial)
                fs.mv(partial, target)
            else:  # one PUT: the object is there whole once it returns, or not at all
                fs.put_file(str(local), target)
        except Exception as exc:  # (the store's driver raises its own kinds)
            raise HalftunesError(f"cannot upload {local.name} to {target}: {exc}") from exc
        note = {"path": target, "bytes": line["bytes"], "sha256": line["sha256"]}
        with self.lock:
            self._keep(line["id"], note)
        local.unlink()
        self.note()
        return {**line, **note}

    def done_line(self, line: dict[str, Any]) -> dict[str, Any]:
        """The manifest line of an item that is in the output already."""
        note = self.done[line["id"]]
        return {**line, **note, "status": "completed", "error": None, "permanent": False}

    def note(self) -> None:
        """The uploads so far, in the job store, every UPLOAD_NOTE_SECONDS while uploading (not
        when the shard stops: a stop must not wait for a store that may hang)."""
        with self.writing:  # (one at a time: a later note never lands before an earlier one)
            with self.lock:
                if self.remote is None or len(self.done) == self.noted:
                    return
                if time.monotonic() - self.noted_at < UPLOAD_NOTE_SECONDS:
                    return
                text = "".join(json.dumps({"id": i, **n}) + "\n" for i, n in self.done.items())
                count = len(self.done)
                self.noted_at = time.monotonic()
            with contextlib.suppress(HalftunesError):  # (only a hint for another machine)
                self.store.write(self.name, text)
                self.noted = count

    def forget(self) -> None:
        if self.remote is not None:
            self.store.remove(self.name)


def _parquet_manifest(lines: list[dict[str, Any]]) -> bytes | None:
    """The manifest as Parquet, when pyarrow is installed."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(lines), sink)
    data: bytes = sink.getvalue().to_pybytes()
    return data
