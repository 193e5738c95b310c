"""A job dir: its plan, its shards and their manifests.

    JOB_DIR/plan.json              what the job is (input, output folder, shard size, counts)
    JOB_DIR/shards/<k>.json        the items of shard k, resolved (id, url, file name, metadata)
    JOB_DIR/state/<k>/             shard k's download records (resume of its partials)
    JOB_DIR/manifests/<k>.jsonl    written last and atomically: shard k is done
    JOB_DIR/downloads.db           lookups cached for reruns, and the API pacing bucket

A shard is a pure, idempotent unit of work: plain data in (the job dir and its number), files
and one manifest out. Running it again after its manifest exists does nothing; running it
after an interruption finishes what is missing, resuming partials like `download`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
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

log = logging.getLogger(__name__)
PLAN_VERSION = 1
DEFAULT_SHARD_SIZE = 1000


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


def write_atomically(path: Path, text: str) -> None:
    """A temp file in the same folder, fsync, rename: a reader sees all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Job:
    def __init__(self, job_dir: Path):
        self.dir = Path(job_dir).absolute()

    @property
    def plan_path(self) -> Path:
        return self.dir / "plan.json"

    def shard_path(self, k: int) -> Path:
        return self.dir / "shards" / f"{k:06d}.json"

    def manifest_path(self, k: int) -> Path:
        return self.dir / "manifests" / f"{k:06d}.jsonl"

    def lock(self) -> Any:
        """Hold the job for one `job run` (flock on JOB_DIR/job.lock, released when the
        process ends however it ends); another run of the same job is refused."""
        import fcntl

        path = self.dir / "job.lock"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")  # noqa: SIM115 - held until released
        except OSError as exc:
            where = exc.filename or path
            raise HalftunesError(f"cannot use {where}: {exc.strerror}") from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise HalftunesError(
                f"another `halftunes job run` is running the job in {self.dir}",
                "wait for it to end (or stop it), then run this again",
            ) from None
        return handle

    def plan(self) -> dict[str, Any] | None:
        try:
            plan: dict[str, Any] = json.loads(self.plan_path.read_text())
            return plan
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise HalftunesError(f"job plan {self.plan_path} is unreadable: {exc}") from exc

    @property
    def staging(self) -> Path:
        """Where shards download before uploading, for an object-store output."""
        return self.dir / "staging"

    def is_done(self, k: int) -> bool:
        return self.manifest_path(k).exists()

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
        remote = "://" in output
        if remote:
            _filesystem(output)  # fails early (exit 2) without the extra
        folder = self._folder(output)
        items = _once(read_items(input_path), OutputSpec(folder))
        entries = self._resolve(items, folder, config)
        shards = [entries[i : i + shard_size] for i in range(0, len(entries), shard_size)]
        for k, shard in enumerate(shards):
            write_atomically(self.shard_path(k), json.dumps([asdict(e) for e in shard]))
        plan = {
            "version": PLAN_VERSION,
            "input": str(input_path.absolute()),
            "output": output.rstrip("/") if remote else str(folder),
            "shard_size": shard_size,
            "items": len(entries),
            "shards": len(shards),
            "created": time.time(),
        }
        write_atomically(self.plan_path, json.dumps(plan, indent=1))
        growth = {"added": len(entries), "gone": 0, "new_shards": len(shards), "new_job": 1}
        return {**plan, "growth": growth}

    def _folder(self, output: str) -> Path:
        return self.staging if "://" in output else Path(os.path.abspath(Path(output).expanduser()))

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
            wanted = output.rstrip("/") if "://" in output else str(self._folder(output))
            if wanted != plan["output"]:
                differs.append(f"-P {wanted} (the job's: {plan['output']})")
        if shard_size is not None and shard_size != plan["shard_size"]:
            differs.append(f"--shard-size {shard_size} (the job's: {plan['shard_size']})")
        if differs:
            raise UsageError(
                f"{self.dir} was planned otherwise: " + "; ".join(differs),
                "run it as it was planned (or leave those options out), or start another "
                "job in another JOB_DIR",
            )
        folder = self._folder(plan["output"])
        items = _once(read_items(input_path), OutputSpec(folder))
        planned = [Entry(**e) for k in range(plan["shards"]) for e in self.shard_entries(k)]
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
                write_atomically(self.shard_path(first + n), json.dumps([asdict(e) for e in shard]))
            # the plan last: shard files beyond its count are ignored (and written again)
            plan = {
                **plan,
                "input": str(input_path.absolute()),
                "items": plan["items"] + len(entries),
                "shards": first + len(shards),
            }
            write_atomically(self.plan_path, json.dumps(plan, indent=1))
            growth.update(added=len(entries), new_shards=len(shards))
        return {**plan, "growth": growth}

    def resolve_again(self, config: SessionConfiguration) -> int:
        """`--retry-failed`: the ids that found no downloadable track when planned (unknown,
        no preview) are looked up again, and their shard files rewritten with what is found
        now. Returns how many were resolved."""
        plan = self._known_plan()
        folder = self._folder(plan["output"])
        shards = {k: [Entry(**e) for e in self.shard_entries(k)] for k in range(plan["shards"])}
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
                write_atomically(self.shard_path(k), json.dumps([asdict(e) for e in merged]))
                found += len(better)
        return found

    def shard_entries(self, k: int) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = json.loads(self.shard_path(k).read_text())
        return entries

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
            session = Session(config)  # its state file is the job's lookup cache and pacing
            try:
                cache = session.cache
                assert cache is not None
                # (a job keeps what it looked up for good: a rerun sends no request)
                cached = cache.get_tracks(config.api_url, ids)
                tracks = {ident: raw for ident, (raw, _) in cached.items()}
                missing = [i for i in ids if i not in tracks]
                client = ITunesClient(session)
                for start in range(0, len(missing), LOOKUP_BATCH):
                    for track in _lookup_patiently(client, missing[start : start + LOOKUP_BATCH]):
                        tracks[str(track.trackId)] = track.raw
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
    def manifest_lines(self, k: int) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.manifest_path(k).read_text().splitlines()]

    def to_retry(self, k: int, retry_failed: bool) -> set[str]:
        """Ids of a finished shard's failed items to run again: the transient failures (a 5xx,
        429, a timeout, a reset), and with `retry_failed` the permanent ones too."""
        if not self.is_done(k):
            return set()
        return {
            line["id"]
            for line in self.manifest_lines(k)
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
        hears every item this run ends, once, as it ends (an upload's: once uploaded)."""
        previous: list[dict[str, Any]] | None = None
        if self.is_done(k):
            again = self.to_retry(k, retry_failed)
            if not again:
                return {"skipped_shard": 1}
            previous = self.manifest_lines(k)
        plan = self.plan()
        assert plan is not None
        entries = [Entry(**e) for e in self.shard_entries(k)]
        if previous is not None:
            entries = [e for e in entries if e.id in again]
        remote = plan["output"] if "://" in plan["output"] else None
        folder = self.staging if remote else Path(plan["output"])
        uploads = _Uploads(self.dir / "state" / f"{k:06d}" / "uploaded.jsonl")
        flags = {
            "state_dir": str(self.dir / "state" / f"{k:06d}"),
            "download_dir": str(folder),
            "session": "default",
            **(overrides or {}),
        }
        session = Session(load_configuration(flags), delegate)
        records = session.records
        started = time.monotonic()
        heard: set[str] = set()

        def ended(outcome: Outcome) -> None:
            # (a remote output's item ends when it is uploaded: said with the manifest)
            if on_item is None or remote is not None or outcome.record is None:
                return
            record = outcome.record
            if outcome.status is OutcomeStatus.COMPLETED:
                event = {"bytes": record.bytes_total or 0, "path": record.path}
            elif outcome.status is OutcomeStatus.FAILED:
                event = {"bytes": 0, "error": str(outcome.error or record.error or "failed")}
                event["http_status"] = getattr(outcome.error, "status", None)
            else:
                return  # (paused: a stop; it ends in a later run)
            heard.add(outcome.id)
            on_item({"id": outcome.id, "status": str(outcome.status), **event})

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
                raise
            finally:
                runner.shutdown()
            lines = []
            for e in entries:
                line = self._manifest_line(e, records.get(e.id), started)
                if previous is not None and line["status"] == "failed":
                    line["attempts"] = _attempts(previous, e.id) + 1
                if remote is not None:
                    line = (
                        uploads.upload(e.id, line, remote)
                        if e.id not in uploads.done
                        else {**line, **uploads.done[e.id], "status": "completed", "error": None}
                    )
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
        _parquet_manifest(self.manifest_path(k).with_suffix(".parquet"), lines)
        write_atomically(self.manifest_path(k), "".join(json.dumps(x) + "\n" for x in lines))
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
        plan = self._known_plan()
        out = []
        for k in range(plan["shards"]):
            with contextlib.suppress(FileNotFoundError):
                for line in self.manifest_path(k).read_text().splitlines():
                    item = json.loads(line)
                    if item["status"] == "failed":
                        out.append({**item, "shard": k})
        return sorted(out, key=lambda item: item.get("line") or 0)

    def _known_plan(self) -> dict[str, Any]:
        plan = self.plan()
        if plan is None:
            raise UsageError(
                f"{self.dir} is not a job dir (no plan.json)",
                "start one with `halftunes job run JOB_DIR --input FILE`",
            )
        return plan

    def status(self) -> dict[str, Any]:
        plan = self._known_plan()
        counts = {"completed": 0, "failed": 0, "skipped": 0}
        done, nbytes = 0, 0
        for k in range(plan["shards"]):
            path = self.manifest_path(k)
            if not path.exists():
                continue
            done += 1
            for line in path.read_text().splitlines():
                item = json.loads(line)
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


def _filesystem(url: str) -> Any:
    """The fsspec file system of an output URL (s3:// needs the s3 extra)."""
    try:
        import fsspec

        return fsspec.filesystem(url.split("://", 1)[0])
    except ImportError as exc:
        raise UsageError(
            f"output {url!r} needs fsspec and its driver ({exc.name})",
            "pip install 'halftunes[s3]'",
        ) from None
    except ValueError as exc:
        raise UsageError(f"output {url!r}: {exc}") from exc


class _Uploads:
    """A shard's uploads to an object store, noted durably one by one: an interrupted shard
    neither uploads nor downloads a finished item twice."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text().splitlines():
                if line.strip():
                    item = json.loads(line)
                    self.done[item.pop("id")] = item

    def upload(self, ident: str, line: dict[str, Any], remote: str) -> dict[str, Any]:
        if line["status"] != "completed":
            return line
        local = Path(line["path"])
        target = f"{remote}/{local.relative_to(self.path.parents[2] / 'staging').as_posix()}"
        fs = _filesystem(remote)
        # One PUT: the object appears whole or not at all (never half-written).
        fs.put_file(str(local), target)
        if fs.info(target)["size"] != line["bytes"]:
            raise HalftunesError(f"upload of {local.name} to {target} came out the wrong size")
        note = {"path": target, "bytes": line["bytes"], "sha256": line["sha256"]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"id": ident, **note}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[ident] = note
        local.unlink()
        return {**line, **note}


def _parquet_manifest(path: Path, lines: list[dict[str, Any]]) -> None:
    """The manifest as Parquet too, when pyarrow is installed (written before the JSON Lines
    one, which marks the shard done)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        pq.write_table(pa.Table.from_pylist(lines), tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
