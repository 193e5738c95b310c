"""The Typer app, its global options, and `main` (the console script)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .._version import __version__
from ..errors import ExitStatus
from .common import set_up

app = typer.Typer(
    name="halftunes",
    help="Search the iTunes catalog and download song previews, with pause, resume and "
    "cancel that survive the process (NSURLSession for the terminal).",
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True,
                         rich_markup_mode=None)  # fmt: skip
app.add_typer(config_app, name="config")


def _version(value: bool) -> None:
    if value:
        print(f"halftunes {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    ctx: typer.Context,
    session: Annotated[str | None, typer.Option(
        "--session", help="Session configuration: default, ephemeral or background.",
        metavar="KIND")] = None,
    no_color: Annotated[bool, typer.Option("--no-color", help="No colours (also NO_COLOR).")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only errors on stderr.")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose",
                                          help="Log requests and retries.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:  # fmt: skip
    """halftunes: search iTunes, download previews, pause / resume / cancel them.

    Examples:

      halftunes search "jack johnson"

      halftunes download 1000001 1000002

      halftunes download -b 1000001 && halftunes wait
    """
    set_up(ctx, session, quiet, verbose, no_color)


def main() -> None:
    try:
        app(prog_name="halftunes")
    except KeyboardInterrupt:
        sys.exit(ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        sys.exit(ExitStatus.ERROR)
