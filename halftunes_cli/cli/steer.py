"""`halftunes pause` and `halftunes cancel`: steer transfers, also in other processes."""

from __future__ import annotations

import typer

from .. import render
from .app import app
from .common import (
    AllOption,
    IdsArgument,
    JsonOption,
    app_state,
    call_service,
    exit_with,
    expand_ids,
)


def _steer(ctx: typer.Context, ids: list[str], all_: bool, action: str, json_out: bool) -> None:
    from ..records import StopRequest  # (start-up speed)

    state = app_state(ctx)
    result = call_service(state, lambda s: s.steer(ids, all_=all_, action=StopRequest(action)))
    if json_out:
        render.print_json(result.records)
    else:
        for r in result.records:
            at = f" at {r['bytes_received']} bytes" if r["status"] == "paused" else ""
            state.console.info(f"{r['id']}: {r['status']}{at}")
    exit_with(result.exit_code)


@app.command()
def pause(
    ctx: typer.Context,
    ids: IdsArgument = None,
    all_: AllOption = False,
    json_out: JsonOption = False,
) -> None:
    """Pause downloads, also ones running in another process or the worker.

    Returns once the transfer has stopped and its checkpoint is saved.

    Examples:

      halftunes pause 1000001

      halftunes pause --all
    """
    _steer(ctx, expand_ids(ids), all_, "pause", json_out)


@app.command()
def cancel(
    ctx: typer.Context,
    ids: IdsArgument = None,
    all_: AllOption = False,
    json_out: JsonOption = False,
) -> None:
    """Stop downloads and delete their partial files and records (never a finished file).

    --all cancels every unfinished download.

    Examples:

      halftunes cancel 1000001

      halftunes cancel --all
    """
    _steer(ctx, expand_ids(ids), all_, "cancel", json_out)
