"""`halftunes download` and `halftunes resume`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
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
    progress_for,
)


def _report(
    state: AppState,
    service: DownloadService,
    result: BatchResult,
    json_out: bool,
    given: int,
    elapsed: float,
) -> None:
    pairs = service.outcome_records(result)
    if json_out:
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


def _run(
    ctx: typer.Context,
    action: str,
    ids: list[str],
    json_out: bool,
    background: bool,
    progress_mode: str,
    **kw: Any,
) -> None:
    state = app_state(ctx)
    began = time.monotonic()
    progress = progress_for(state, progress_mode)
    flags: dict[str, Any] = {}
    if background:
        flags["session"] = "background"
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
            _report(state, service, result, json_out, given, time.monotonic() - began)
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
    """
    _run(
        ctx,
        "download",
        expand_ids(items),
        json_out,
        background,
        progress,
        force=force,
        output_dir=output_dir,
        output=output,
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
