"""`halftunes upload`, `play`, `open` and `config`."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ..records import DownloadRecord

from .. import render
from ..config import config_file_path
from ..errors import ExitStatus, HalftunesError, UsageError
from .app import app, config_app
from .common import (
    JsonOption,
    ProgressOption,
    app_state,
    call_service,
    complete_ids,
    configuration,
    exit_with,
    fail,
    open_service,
    progress_for,
)

IdArgument = Annotated[
    str, typer.Argument(metavar="ID", help="A download's id.", autocompletion=complete_ids)
]
PLAYERS = (
    ["ffplay", "-nodisp", "-autoexit", "-loglevel", "error"],
    ["mpv", "--no-video"],
    ["afplay"],
    ["xdg-open"],
    ["open"],
)


def _headers(values: list[str]) -> dict[str, str]:
    headers = {}
    for h in values:
        key, sep, value = h.partition(":")
        if not sep or not key.strip():
            raise UsageError(f"--header must look like 'Name: value', not {h!r}")
        headers[key.strip()] = value.strip()
    return headers


@app.command()
def upload(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="File to send.", show_default=False)],
    url: Annotated[str, typer.Argument(help="Where to send it.", show_default=False)],
    method: Annotated[str, typer.Option("--method", help="PUT or POST.")] = "PUT",
    header: Annotated[
        list[str] | None, typer.Option("--header", help="Extra header 'K: V' (repeatable).")
    ] = None,
    json_out: JsonOption = False,
    progress: ProgressOption = "auto",
) -> None:
    """Upload a file with PUT or POST (streamed, with progress; only PUT is retried).

    Example:

      halftunes upload song.m4a https://example.com/upload/song.m4a --header 'X-Token: abc'
    """
    state = app_state(ctx)
    config = configuration(state)
    bars = progress_for(state, progress)
    service = None
    try:
        headers = _headers(header or [])
        service = open_service(state, config)
        from ..events import TaskEvents  # (start-up speed: with the engine)

        task = service.upload(file, url, method=method, headers=headers, delegate=TaskEvents(bars))
    except HalftunesError as exc:
        bars.close()
        fail(state, exc)
    finally:
        bars.close()
        if service is not None:
            service.close()
    response = task.response
    result = {
        "url": url,
        "file": str(file),
        "method": task.method,
        "status": response.status_code if response is not None else None,
        "bytes_sent": task.bytes_sent,
    }
    if json_out:
        render.print_json(result)
    else:
        print(f"{result['status']} {url}")


def _record(ctx: typer.Context, record_id: str) -> DownloadRecord:
    return call_service(app_state(ctx), lambda s: s.record(record_id))


@app.command()
def play(ctx: typer.Context, id_: IdArgument) -> None:
    """Play a finished download with the first player found (ffplay, mpv, afplay, xdg-open).

    Example:

      halftunes play 1000001
    """
    import subprocess  # (start-up speed: only these commands start a program)

    state = app_state(ctx)
    record = _record(ctx, id_)
    path = Path(record.path)
    if not record.is_finished_on_disk:
        fail(
            state,
            HalftunesError(f"{id_} is not downloaded yet", f"run `halftunes download {id_}` first"),
        )
    for cmd in PLAYERS:
        if shutil.which(cmd[0]):
            state.console.info(f"playing {path} with {cmd[0]}")
            try:
                code = subprocess.call([*cmd, str(path)])
            except KeyboardInterrupt:
                exit_with(ExitStatus.INTERRUPTED)
            exit_with(ExitStatus.OK if code == 0 else ExitStatus.ERROR)
    fail(
        state,
        HalftunesError(
            "no audio player found (looked for ffplay, mpv, afplay, xdg-open, open)",
            "install ffmpeg or mpv",
        ),
    )


@app.command("open")
def open_(
    ctx: typer.Context,
    id_: IdArgument,
    reveal: Annotated[
        bool, typer.Option("--reveal", help="Open the folder in the file manager.")
    ] = False,
) -> None:
    """Print the folder that holds a download (or open it with --reveal).

    Examples:

      cd "$(halftunes open 1000001)"

      halftunes open 1000001 --reveal
    """
    import subprocess  # (start-up speed: only these commands start a program)

    state = app_state(ctx)
    folder = str(Path(_record(ctx, id_).path).parent)
    print(folder)
    if reveal:
        opener = next((c for c in ("xdg-open", "open") if shutil.which(c)), None)
        if opener is None:
            fail(state, HalftunesError("no file manager opener found (looked for xdg-open, open)"))
        exit_with(ExitStatus.OK if subprocess.call([opener, folder]) == 0 else ExitStatus.ERROR)


@config_app.command("show")
def config_show(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Print each setting, its value and where it came from (flag, env, file, default).

    A bad value is shown too: the setting takes the next source's value, the problem is said
    on stderr (and as "problem" in --json), and the exit status is 2.

    Example:

      halftunes config show --json | jq '.download_dir.value'
    """
    state = app_state(ctx)
    problems: dict[str, UsageError] = {}
    described = configuration(state, problems=problems).describe()
    for key, problem in problems.items():
        if key in described:
            described[key]["problem"] = problem.message
    if json_out:
        render.print_json(described)
    else:
        render.config_table(described, state.color if sys.stdout.isatty() else False)
    for problem in problems.values():
        state.console.error(problem.message, problem.hint)
    exit_with(ExitStatus.USAGE if problems else ExitStatus.OK)


@config_app.command("path")
def config_path() -> None:
    """Print the config file's path (it may not exist yet).

    Example:

      $EDITOR "$(halftunes config path)"
    """
    print(config_file_path()[0])
