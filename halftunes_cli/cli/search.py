"""`halftunes search`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .. import render
from ..errors import HalftunesError
from .app import app
from .common import JsonOption, app_state, configuration, fail, open_service


@app.command()
def search(
    ctx: typer.Context,
    term: Annotated[
        list[str],
        typer.Argument(help="Words to search for.", show_default=False, metavar="TERM..."),
    ],
    limit: Annotated[
        int | None,
        typer.Option("--limit", help="1 to 200 results.  [default: 25, or `limit` in the config]"),
    ] = None,
    country: Annotated[
        str | None,
        typer.Option(
            "--country", help="Store country code.  [default: US, or `country` in the config]"
        ),
    ] = None,
    json_out: JsonOption = False,
    offline: Annotated[bool, typer.Option("--offline", help="Answer from the cache only.")] = False,
) -> None:
    """Search the iTunes catalog for songs.

    On a terminal: a table (id, E for explicit or clean editions, title, artist, album, time,
    and whether you have it); on a pipe: tab-separated lines; --json: Apple's objects.

    Examples:

      halftunes search jack johnson --limit 5

      halftunes search "王菲" --json | jq '.[].trackId'
    """
    state = app_state(ctx)
    text = " ".join(term)
    config = configuration(state, limit=limit, country=country)
    service = open_service(state, config)
    spinner = None
    try:
        if render.stderr_is_terminal() and not json_out and not state.quiet:
            spinner = render.spinner("Searching iTunes…", state.color)
        tracks = service.search(text, limit=config.limit, country=config.country, offline=offline)
        downloaded = service.downloaded_ids()
    except HalftunesError as exc:
        fail(state, exc)
    finally:
        if spinner is not None:
            spinner.stop()
        service.close()
    if json_out:
        render.print_json([t.raw for t in tracks])
    elif not tracks:
        state.console.info(f"No songs found for {text!r}. Try fewer or other words.")
    elif sys.stdout.isatty():
        render.search_table(tracks, state.color, downloaded)
    else:
        render.search_lines(tracks)
