"""`halftunes list` (alias `status`) and `halftunes wait`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .. import render
from ..errors import ExitStatus, HalftunesError, UsageError
from .app import app
from .common import (
    IdsArgument,
    JsonOption,
    ProgressOption,
    app_state,
    call_service,
    configuration,
    exit_with,
    expand_ids,
    fail,
    open_service,
    progress_for,
)

StatusOption = Annotated[
    list[str] | None,
    typer.Option(
        "--status",
        metavar="STATUS",
        help="Only these (repeatable): queued, running, paused, completed, failed.",
    ),
]


def _list(ctx: typer.Context, json_out: bool, statuses: list[str] | None) -> None:
    state = app_state(ctx)
    from ..records import RecordStatus  # (start-up speed)

    wanted = set(statuses or [])
    bad = wanted - {str(s) for s in RecordStatus}
    if bad:
        fail(
            state,
            UsageError(
                f"--status {sorted(bad)[0]!r} is not a status",
                "statuses: " + ", ".join(str(s) for s in RecordStatus),
            ),
        )
    records = [
        r
        for r in call_service(state, lambda s: s.all_records())
        if not wanted or str(r.status) in wanted
    ]
    if json_out:
        render.print_json([r.public() for r in records])
    elif not records and wanted:
        state.console.info(f"No downloads with the status {' or '.join(sorted(wanted))}.")
    elif not records:
        state.console.info("No downloads yet. Try: halftunes download TRACK_ID")
    elif sys.stdout.isatty():
        render.records_table(records, state.color)
    else:
        render.records_lines(records)


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOption = False, status: StatusOption = None) -> None:
    """List downloads with their status and progress (alias: status).

    Examples:

      halftunes list --status paused --status failed

      halftunes list --json | jq '.[] | select(.status == "paused") | .id'
    """
    _list(ctx, json_out, status)


@app.command("status", hidden=True)
def status_(ctx: typer.Context, json_out: JsonOption = False, status: StatusOption = None) -> None:
    """Alias of list."""
    _list(ctx, json_out, status)


@app.command()
def wait(
    ctx: typer.Context,
    ids: IdsArgument = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Give up after SECONDS (exit 124).", metavar="SECONDS"),
    ] = None,
    json_out: JsonOption = False,
    progress: ProgressOption = "auto",
) -> None:
    """Block until downloads are completed or failed (exit 1 if any failed).

    Without ids: the downloads queued or running now, and every outcome nobody has been
    told about yet (a background download that ended since it was queued). An outcome
    already reported no longer changes the exit status.

    Examples:

      halftunes download -b 1000001 1000002 && halftunes wait --timeout 600

      halftunes wait 1000001
    """
    state = app_state(ctx)
    config = configuration(state)
    if not config.persists_state:
        exit_with(ExitStatus.OK)
    bars = progress_for(state, progress)
    service = open_service(state, config, announce=False)  # wait reports them itself
    try:
        result = service.wait(expand_ids(ids), timeout_seconds=timeout, progress=bars)
        if result.timed_out:
            bars.close()
            state.console.error(
                f"timed out after {timeout:g} s with {result.still_active} download(s) still active"
            )
            exit_with(ExitStatus.TIMEOUT)
    except KeyboardInterrupt:
        bars.abort("still running")
        state.console.info(
            "interrupted: the background worker goes on; `halftunes wait` watches again, "
            "`halftunes list` shows where it is"
        )
        exit_with(ExitStatus.INTERRUPTED)
    except HalftunesError as exc:
        fail(state, exc)
    finally:
        bars.close()
        service.close()
    if json_out:
        render.print_json([r.public() for r in result.records])
    for r in result.failed:
        state.console.error(f"{r.id}: {r.status}" + (f": {r.error}" if r.error else ""))
    exit_with(ExitStatus.ERROR if result.failed else ExitStatus.OK)


@app.command()
def clean(
    ctx: typer.Context,
    ids: IdsArgument = None,
    completed: Annotated[bool, typer.Option("--completed", help="Completed downloads.")] = False,
    failed: Annotated[
        bool, typer.Option("--failed", help="Failed downloads (and partials).")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Forget finished downloads: their records, and the partials of failed ones.

    Never deletes a finished file. Without --completed or --failed both kinds go.

    Examples:

      halftunes clean --failed

      halftunes clean 1000001 --json
    """
    state = app_state(ctx)
    ids = expand_ids(ids)
    result = call_service(state, lambda s: s.clean(ids, completed=completed, failed=failed))
    if json_out:
        render.print_json(result.records)
    else:
        for r in result.records:
            state.console.info(f"{r['id']}: forgot the {r['status']} download")
    exit_with(result.exit_code)
