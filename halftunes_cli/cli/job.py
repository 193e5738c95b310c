"""`halftunes job run` and `halftunes job status`: catalog-scale downloads."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import render
from ..errors import HalftunesError, UsageError
from .app import _Group, _Typer, app, interruptible
from .common import (
    AppState,
    JsonOption,
    ProgressOption,
    app_state,
    configuration,
    exit_with,
    fail,
)

job_app = _Typer(
    help="Download lists too large for one command line, resumably, in shards.\n\n"
    "Examples:\n\n  halftunes job run ./job --input ids.txt -P ./previews\n\n"
    "  halftunes job status ./job --json",
    no_args_is_help=True,
    cls=_Group,
    rich_markup_mode=None,
)
app.add_typer(job_app, name="job")


@job_app.command("run")
def job_run(
    ctx: typer.Context,
    job_dir: Annotated[
        str,
        typer.Argument(
            metavar="JOB_DIR",
            help="Where the plan and the manifests live, a folder or a URL (s3://bucket/jobs/x); "
            "created; run again to continue.",
        ),
    ],
    input_file: Annotated[
        Path,
        typer.Option(
            "--input",
            metavar="FILE",
            help="One trackId or URL a line; CSV/TSV with a trackId, id or url column; JSON Lines.",
        ),
    ],
    output_dir: Annotated[
        str | None,
        typer.Option(
            "-P",
            "--output-dir",
            metavar="DIR",
            help="Where the files go, a folder or a URL (default: the download dir).",
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            metavar="local|dask",
            help="local: this machine; dask: a Dask cluster (the dask extra).",
        ),
    ] = "local",
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            metavar="ADDRESS",
            help="The Dask scheduler (default: a LocalCluster of 2 processes).",
        ),
    ] = None,
    shard_size: Annotated[
        int | None,
        typer.Option(
            "--shard-size", metavar="N", help="Items per shard (default 1000; fixed by the plan)."
        ),
    ] = None,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Also try again the items that failed for good (404, 410, no track): every "
            "run tries the others (5xx, 429, timeouts, resets) again anyway.",
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            metavar="N",
            help="local engine: shards at once, each in its own process (default: one per core).",
        ),
    ] = None,
    scratch: Annotated[
        str | None,
        typer.Option(
            "--scratch",
            metavar="DIR",
            help="Each worker machine's folder for the shards' transfer records and partials "
            "(default: JOB_DIR/state, or for a JOB_DIR URL <state dir>/jobs there).",
        ),
    ] = None,
    json_out: JsonOption = False,
    progress: ProgressOption = "auto",
) -> None:
    """Download every item of a list in shards; a manifest per finished shard.

    Running the same command again continues the job (and plans the input's new items, and
    retries what failed for a passing reason); with nothing to do it sends nothing.

    Examples:

      halftunes job run ./job --input ids.txt -P ./previews

      halftunes job run ./job --input tracks.csv --shard-size 500 --json

      halftunes job run s3://bucket/jobs/x --input ids.txt -P s3://bucket/previews \\
          --engine dask --scheduler tcp://10.0.0.5:8786
    """
    from ..jobs.engines import Hooks
    from ..service import run_job  # (start-up speed)

    state = app_state(ctx)
    if progress not in render.PROGRESS_MODES:
        fail(state, UsageError(f"--progress must be one of {', '.join(render.PROGRESS_MODES)}"))
    config = configuration(state)
    bar = render.JobProgress(state.console, progress, render.stderr_is_terminal())
    hooks = Hooks(
        on_planned=lambda growth: _say_growth(state, growth),
        on_start=bar.start,
        on_item=bar.item,
        on_shard=bar.shard,
        on_dashboard=lambda link: state.console.info(f"Dask dashboard: {link}"),
    )
    try:
        # (Ctrl-C raises KeyboardInterrupt, SIGTERM SystemExit(143): either way the shards
        # pause their transfers at a checkpoint and the worker processes are stopped)
        with interruptible(state.console, before_exit=bar.close):
            result = run_job(
                job_dir,
                input_file,
                configuration=config,
                output=output_dir,
                engine=engine,
                shard_size=shard_size,
                scheduler=scheduler,
                hooks=hooks,
                workers=workers,
                retry_failed=retry_failed,
                scratch=scratch,
            )
    except HalftunesError as exc:
        fail(state, exc)
    except KeyboardInterrupt:
        bar.close()
        state.console.info("interrupted: the same command continues the job")
        exit_with(130)
    except SystemExit:
        bar.close()
        state.console.info("terminated: the same command continues the job")
        raise
    finally:
        bar.close()
    _show(state, result.status, json_out)
    if result.status["failed"]:
        _name_failures(state, job_dir)
    exit_with(result.exit_code)


@job_app.command("status")
def job_status(
    ctx: typer.Context,
    job_dir: Annotated[str, typer.Argument(metavar="JOB_DIR", help="A folder or a URL.")],
    json_out: JsonOption = False,
    failed: Annotated[
        bool,
        typer.Option(
            "--failed", help="List every failed item (id, HTTP status, error, url, shard)."
        ),
    ] = False,
) -> None:
    """Counts of a job: shards (done), items, completed, failed, skipped, bytes.

    Examples:

      halftunes job status ./job --json

      halftunes job status ./job --failed
    """
    from ..service import job_failures
    from ..service import job_status as status_of  # (start-up speed)

    state = app_state(ctx)
    try:
        if failed:
            items = job_failures(job_dir)
        else:
            status = status_of(job_dir)
    except HalftunesError as exc:
        fail(state, exc)
    if not failed:
        _show(state, status, json_out)
    elif json_out:
        render.print_json(items)
    elif not items:
        state.console.info("no failed items")
    else:
        for item in items:
            print(_failure_line(item))


def _say_growth(state: AppState, growth: dict[str, int]) -> None:
    """What a rerun changed in the plan (nothing said for a new job or an unchanged input)."""
    added, gone = growth.get("added", 0), growth.get("gone", 0)
    if added and not growth.get("new_job"):
        shards = growth.get("new_shards", 0)
        state.console.info(f"{added} new item(s) of the input planned into {shards} new shard(s)")
    if gone:
        state.console.info(
            f"{gone} item(s) of the job are no longer in the input: they stay as they are"
        )


FAILURES_NAMED = 10  # in the summary of a run; `job status --failed` lists them all


def _failure_line(item: dict[str, Any]) -> str:
    status = f"HTTP {item['http_status']}" if item.get("http_status") else "-"
    return f"{item['id']}\t{status}\t{item.get('error') or 'failed'}"


def _name_failures(state: AppState, job_dir: str) -> None:
    """Up to FAILURES_NAMED failed items with their reasons on stderr, and where the rest are."""
    from ..service import job_failures

    try:
        items = job_failures(job_dir)
    except HalftunesError:
        return
    for item in items[:FAILURES_NAMED]:
        state.console.info(f"failed: {_failure_line(item)}".replace("\t", "  "))
    more = f" (and {len(items) - FAILURES_NAMED} more)" if len(items) > FAILURES_NAMED else ""
    where = shlex.quote(job_dir)
    state.console.info(f"all failed items{more}: halftunes job status {where} --failed")


def _show(state: AppState, status: dict[str, Any], json_out: bool) -> None:
    if json_out:
        render.print_json(status)
        return
    print(
        f"{status['shards_done']} of {status['shards']} shards done; {status['items']} items: "
        f"{status['completed']} completed, {status['failed']} failed, {status['skipped']} "
        f"skipped; {render.human_bytes(status['bytes'])}"
    )
