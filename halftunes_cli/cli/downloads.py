"""`halftunes download` and `halftunes resume`."""

from __future__ import annotations

import re
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..config import PRIORITIES
from ..errors import HalftunesError, UsageError

if TYPE_CHECKING:
    from ..records import DownloadRecord, Schedule
    from ..render.writeout import WriteOut
    from ..runner import Outcome
    from ..service import BatchResult, DownloadService

from .. import render
from .app import app, interruptible
from .common import (
    AllOption,
    AppState,
    BackgroundOption,
    IdsArgument,
    JsonOption,
    ProgressOption,
    app_state,
    call_service,
    configuration,
    exit_with,
    expand_ids,
    fail,
    progress_for,
)


def _report(
    state: AppState,
    service: DownloadService,
    result: BatchResult,
    json_out: bool,
    given: int,
    elapsed: float,
    write_out: WriteOut | None = None,
    ids: list[str] | None = None,
) -> None:
    pairs = service.outcome_records(result)
    if write_out is not None:
        for values in _in_given_order(ids or [], pairs, result.failures):
            print(write_out.render(values), end="")
    elif json_out:
        errors = [
            {"id": item, "status": "error", "error": error.message}
            for item, error in result.failures
        ]
        render.print_json([record.public() for _, record in pairs] + errors)
    else:
        for outcome, record in pairs:
            if result.background and outcome.status == "queued":
                print(record.id)
            elif str(record.status) == "completed" and not result.background:
                print(record.path)
    if not result.background and given > 1:
        state.console.info(render.summary(given, [o.status for o in result.outcomes], elapsed))


def _in_given_order(
    ids: list[str],
    pairs: list[tuple[Outcome, DownloadRecord]],
    failures: list[tuple[str, HalftunesError]],
) -> list[dict[str, Any]]:
    """-w's values for each id, in the order the ids were given (a URL is found by its
    record's id); anything not matched follows."""
    from ..targets import url_record_id

    ran = {outcome.id: (outcome, record) for outcome, record in pairs}
    bad = {item: error.message for item, error in failures}
    out = []
    for item in ids:
        if item in bad:
            out.append(_write_out_variables(None, None, item, bad.pop(item)))
            continue
        key = url_record_id(item) if "://" in item and item not in ran else item
        if key in ran:
            out.append(_write_out_variables(*ran.pop(key)))
    out += [_write_out_variables(outcome, record) for outcome, record in ran.values()]
    out += [_write_out_variables(None, None, item, message) for item, message in bad.items()]
    return out


def _write_out_variables(
    outcome: Outcome | None,
    record: DownloadRecord | None,
    item: str = "",
    error: str = "",
) -> dict[str, Any]:
    """What -w shows of one id: the metrics of its transfer in this command (zeros when none
    ran: already downloaded, refused, bad input), its id, how it ended, and why it failed."""
    from ..metrics import TaskMetrics

    values = TaskMetrics(0.0, 0.0).summary()
    values.update(id=item, status="error", errormsg=error)
    if outcome is not None and record is not None:
        if outcome.status in ("completed", "paused", "failed"):  # (a transfer ran)
            values.update(record.metrics_summary or {})
        values.update(
            id=record.id,
            status=str(outcome.status),
            errormsg=(str(outcome.error) if outcome.error else record.error or "")
            if outcome.status == "failed"
            else "",
        )
        values["url_effective"] = values["url_effective"] or record.url
        if outcome.status in ("completed", "skipped"):
            values["filename_effective"] = record.path
    values["response_code"] = values["http_code"]
    return values


def _run(
    ctx: typer.Context,
    action: str,
    ids: list[str],
    json_out: bool,
    background: bool,
    progress_mode: str,
    write_out: WriteOut | None = None,
    wait_for_network: bool = False,
    limit_rate: str | None = None,
    flags: dict[str, Any] | None = None,
    **kw: Any,
) -> None:
    state = app_state(ctx)
    began = time.monotonic()
    progress = progress_for(state, progress_mode)
    flags = {k: v for k, v in (flags or {}).items() if v}  # (a flag not given: config decides)
    if background:
        flags["session"] = "background"
    if wait_for_network:
        flags["waits_for_connectivity"] = True
    if limit_rate is not None:
        flags["limit_rate"] = limit_rate
    config = configuration(state, **flags)

    def run(service: DownloadService) -> BatchResult:
        from ..events import TaskEvents  # (start-up speed: with the engine)

        try:
            with interruptible(state.console, before_exit=progress.abort) as interruption:
                call = service.download if action == "download" else service.resume
                result = call(
                    ids,
                    background=background,
                    delegate=TaskEvents(progress),
                    interruption=interruption,
                    **kw,
                )
            progress.close()
            given = len(ids) if action == "download" or not kw.get("all_") else len(result.outcomes)
            _report(
                state, service, result, json_out, given, time.monotonic() - began, write_out, ids
            )
            return result
        finally:
            progress.close()

    exit_with(call_service(state, run, config).exit_code)


@app.command()
def download(
    ctx: typer.Context,
    items: Annotated[
        list[str],
        typer.Argument(
            help="Track ids or URLs; - reads ids from stdin.",
            show_default=False,
            metavar="ID_OR_URL...",
        ),
    ],
    background: BackgroundOption = False,
    output_dir: Annotated[
        str | None,
        typer.Option(
            "-P", "--output-dir", metavar="DIR", help="Download folder (created if missing)."
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "-o",
            "--output",
            metavar="NAME_OR_TEMPLATE",
            help="File name for one id, or a template with {artist} {title} {album} "
            "{collection} {id} {ext} ('/' makes subfolders); relative to -P "
            "when given, else to the current directory.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even if done.")] = False,
    json_out: JsonOption = False,
    progress: ProgressOption = "auto",
    write_out: Annotated[
        str | None,
        typer.Option(
            "-w",
            "--write-out",
            metavar="FORMAT",
            help="When the downloads end, print this per id, with curl's variables: "
            "%{time_starttransfer} %{time_total} %{speed_download} %{remote_ip} "
            "%{http_version} %{num_connects} %{json} ...; @FILE reads it from FILE.",
        ),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            metavar="TIME",
            help="With -b: start no earlier than TIME (HH:MM, the next one to come, or ISO "
            "8601 such as 2026-12-24T03:00; local time unless it says otherwise).",
        ),
    ] = None,
    priority: Annotated[
        str | None,
        typer.Option(
            "--priority",
            metavar="low|default|high",
            help="With -b: the worker starts higher priorities first (also 0.0-1.0).",
        ),
    ] = None,
    connections: Annotated[
        str | None,
        typer.Option(
            "-x",
            "--connections",
            metavar="N|auto",
            help="Fetch each file over up to N connections at once (1-16; auto: 8 for files "
            "of 64 MiB or more), where the server serves ranges; resumable per range.",
        ),
    ] = None,
    limit_rate: Annotated[
        str | None,
        typer.Option(
            "--limit-rate",
            metavar="RATE",
            help="At most RATE bytes per second for all transfers together: 500k, 2M "
            "(1024-based, as curl).",
        ),
    ] = None,
    checksum: Annotated[
        str | None,
        typer.Option(
            "--checksum",
            metavar="ALGO=HEX",
            help="The file must have this sha256, sha1 or md5 digest, or it is not kept "
            "(one id or URL).",
        ),
    ] = None,
    embed_metadata: Annotated[
        bool,
        typer.Option(
            "--embed-metadata",
            help="Write the track's title, artist, album, numbers, genre, date and iTunes ids "
            "into the file (MP4 atoms, ID3 for .mp3; needs the tags extra).",
        ),
    ] = False,
    embed_artwork: Annotated[
        bool,
        typer.Option("--embed-artwork", help="Write the album artwork (600x600) into the file."),
    ] = False,
    wait_for_network: Annotated[
        bool,
        typer.Option(
            "--wait-for-network",
            help="When the host cannot be reached, wait (and probe) until it can, up to the "
            "resource timeout, instead of failing (the background session does by default).",
        ),
    ] = False,
) -> None:
    """Download song previews (by trackId) or URLs, resumably.

    Examples:

    \b
      halftunes download 1000001
      halftunes download -b 1000001 1000002 -P ~/Music/previews
      halftunes download 1000001 -o song.m4a
      halftunes download 1000001 1000002 -o '{artist}/{title}.{ext}'
      halftunes search jack johnson --json |
        jq '.[].trackId' | halftunes download -
      halftunes download 1000001 -w '%{time_starttransfer} %{speed_download}\\n'
      halftunes download -x 8 https://example.org/big.iso
    """
    template = _write_out(ctx, write_out, json_out, background, "-" in items)
    digest = _checksum(ctx, checksum)
    settings: dict[str, Any] = {}
    if embed_metadata or embed_artwork:
        from ..tagging import check_available

        try:
            check_available()
        except UsageError as exc:
            fail(app_state(ctx), exc)
        settings = {"embed_metadata": embed_metadata, "embed_artwork": embed_artwork}
    if connections is not None:
        from ..config import parse_connections

        if parse_connections(connections) is None:
            fail(
                app_state(ctx),
                UsageError(
                    f"-x/--connections must be a number from 1 to 16 or auto, not {connections!r}"
                ),
            )
        settings["connections_per_file"] = connections
    schedule = _schedule(ctx, at, priority, background)
    _run(
        ctx,
        "download",
        expand_ids(items),
        json_out,
        background,
        progress,
        template,
        wait_for_network,
        force=force,
        output_dir=output_dir,
        output=output,
        schedule=schedule,
        checksum=digest,
        limit_rate=limit_rate,
        flags=settings,
    )


@app.command()
def resume(
    ctx: typer.Context,
    ids: IdsArgument = None,
    all_: AllOption = False,
    background: BackgroundOption = False,
    json_out: JsonOption = False,
    progress: ProgressOption = "auto",
) -> None:
    """Continue paused or failed downloads from their checkpoint.

    Examples:

      halftunes resume 1000001

      halftunes resume --all -b
    """
    _run(ctx, "resume", expand_ids(ids), json_out, background, progress, all_=all_)


def _write_out(
    ctx: typer.Context, value: str | None, json_out: bool, background: bool, ids_on_stdin: bool
) -> WriteOut | None:
    """The -w template, checked before anything is downloaded (bad: exit 2)."""
    if value is None:
        return None
    from ..render.writeout import WriteOut

    try:
        if background:
            raise UsageError(
                "--write-out shows transfers this command runs, not the background worker's",
                "`halftunes list --json` shows each download's metrics",
            )
        if json_out:
            raise UsageError(
                "--write-out and --json both print on standard output: choose one",
                "the --json records carry a metrics object",
            )
        if value == "@-" and ids_on_stdin:
            raise UsageError("-w @- and the ids (-) cannot both come from standard input")
        if value.startswith("@"):
            value = _template_file(value[1:])
        return WriteOut(value)
    except UsageError as exc:
        fail(app_state(ctx), exc)


TEMPLATE_MAX_BYTES = 64 * 1024


def _template_file(name: str) -> str:
    """-w @FILE (@- for stdin, as curl): at most 64 KiB of UTF-8."""
    if not name:
        raise UsageError("-w @ needs a file name after the @ (or @- for standard input)")
    try:
        if name == "-":
            data = sys.stdin.buffer.read(TEMPLATE_MAX_BYTES + 1)
        else:
            with open(Path(name).expanduser(), "rb") as f:
                data = f.read(TEMPLATE_MAX_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read the --write-out template {name}: {exc.strerror}") from None
    if len(data) > TEMPLATE_MAX_BYTES:
        raise UsageError(f"the --write-out template {name} is over 64 KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"the --write-out template {name} is not UTF-8") from None


DIGEST_LENGTHS = {"sha256": 64, "sha1": 40, "md5": 32}


def _checksum(ctx: typer.Context, value: str | None) -> str | None:
    """--checksum ALGO=HEX, checked (bad: exit 2); returned as algo=lowercase hex."""
    if value is None:
        return None
    algorithm, _, digest = value.strip().partition("=")
    algorithm, digest = algorithm.strip().lower().replace("-", ""), digest.strip().lower()
    size = DIGEST_LENGTHS.get(algorithm)
    if size is None or len(digest) != size or not re.fullmatch(r"[0-9a-f]+", digest):
        fail(
            app_state(ctx),
            UsageError(
                f"--checksum must be sha256=HEX, sha1=HEX or md5=HEX, not {value!r}",
                "for example --checksum sha256=" + "0" * 8 + "... (64 hex digits)",
            ),
        )
    return f"{algorithm}={digest}"


def _schedule(
    ctx: typer.Context, at: str | None, priority: str | None, background: bool
) -> Schedule | None:
    """--at and --priority, checked before anything is queued (bad: exit 2)."""
    if at is None and priority is None:
        return None
    from ..records import Schedule

    try:
        if not background:
            flag = "--at" if at is not None else "--priority"
            raise UsageError(
                f"{flag} schedules a background download: add -b",
                "a download in this terminal starts now, in the order the ids are given",
            )
        return Schedule(
            parse_start_time(at) if at is not None else None,
            parse_priority(priority) if priority is not None else None,
        )
    except UsageError as exc:
        fail(app_state(ctx), exc)


def parse_priority(text: str) -> float:
    value = PRIORITIES.get(text.strip().lower())
    if value is None:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"--priority must be low, default, high or 0.0-1.0, not {text!r}")
    return value


def parse_start_time(text: str, now: datetime | None = None) -> float:
    """--at TIME as seconds since the epoch: HH:MM[:SS] is the next such local time (today,
    or tomorrow once it has passed); otherwise ISO 8601, local time unless it has an offset."""
    now = now or datetime.now().astimezone()
    value = text.strip()
    try:
        if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", value):
            clock = datetime.strptime(value, "%H:%M:%S" if value.count(":") == 2 else "%H:%M")
            when = now.replace(
                hour=clock.hour, minute=clock.minute, second=clock.second, microsecond=0
            )
            if when <= now:
                when += timedelta(days=1)
            return when.timestamp()
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.astimezone()  # (a naive time is local time)
        return when.timestamp()
    except (ValueError, OverflowError, OSError):  # (OverflowError: year 1 or 9999 in a zone)
        raise UsageError(
            f"--at must be HH:MM or an ISO 8601 date and time, not {text!r}",
            "for example --at 03:30 or --at 2026-12-24T03:00",
        ) from None
