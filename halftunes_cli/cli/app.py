"""The Typer app, its global options, and `main` (the console script)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from typer.core import TyperCommand, TyperGroup

from .._version import __version__
from ..errors import ExitStatus
from .common import app_state, fail, set_up

if TYPE_CHECKING:
    from ..render import Console
    from ..service import Interruption

GLOBAL_FLAGS = {"--no-color", "-q", "--quiet", "-v", "--verbose"}
GLOBAL_WITH_VALUE = {"--session"}


def hoist_global_options(args: list[str]) -> list[str]:
    """Global options may stand after the command too (`download 1000001 -q`): move them in
    front of it, as click wants them. `--` ends options, as usual."""
    command_at, i = None, 0
    while i < len(args):  # the command is the first word that is no option and no option's value
        if args[i] in GLOBAL_WITH_VALUE:
            i += 2
        elif args[i].startswith("-"):
            i += 1
        else:
            command_at = i
            break
    if command_at is None:
        return args
    front, rest, hoisted = args[:command_at], args[command_at:], []
    out, i = [], 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--":
            out += rest[i:]
            break
        if arg in GLOBAL_FLAGS or arg.startswith("--session="):
            hoisted.append(arg)
        elif arg in GLOBAL_WITH_VALUE and i + 1 < len(rest):
            hoisted += [arg, rest[i + 1]]
            i += 1
        else:
            out.append(arg)
        i += 1
    return front + hoisted + out


def _plain(formatter: click.HelpFormatter) -> None:
    # typer escapes "[default: …]" for rich whenever rich is installed, even with rich markup
    # off, which shows literal backslashes: undo that in the finished help text.
    formatter.buffer[:] = [part.replace("\\[", "[") for part in formatter.buffer]


class _Command(TyperCommand):
    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help(ctx, formatter)
        _plain(formatter)


class _Group(TyperGroup):
    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help(ctx, formatter)
        _plain(formatter)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(list(args)))

    def invoke(self, ctx: click.Context) -> Any:
        """The final catch-all: an exception that no command turned into an exit status (a
        bug) is said as one line and a hint, exit 1, its traceback under -v; never a raw
        traceback."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BrokenPipeError:
            raise  # stdout's reader went away: `main` ends the process quietly
        except Exception as exc:  # noqa: BLE001 - this is the boundary that catches them all
            fail(app_state(ctx), exc)


class _Typer(typer.Typer):
    """Commands of this app get plain help (see _plain)."""

    def command(self, *args: Any, cls: Any = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or _Command, **kwargs)


EPILOG = (
    "Exit status: 0 success; 1 an operation failed (network, server, disk, a failed "
    "transfer); 2 bad usage or input; 124 wait --timeout expired; 130 interrupted."
)

app = _Typer(
    name="halftunes",
    cls=_Group,
    epilog=EPILOG,
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = _Typer(
    help="Show the effective configuration.\n\nExamples:\n\n  halftunes config "
    "show\n\n  halftunes config path",
    no_args_is_help=True,
    cls=_Group,
    rich_markup_mode=None,
)
app.add_typer(config_app, name="config")


def _version(value: bool) -> None:
    if value:
        print(f"halftunes {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    ctx: typer.Context,
    session: Annotated[
        str | None,
        typer.Option(
            "--session",
            help="Session configuration: default, ephemeral or background.",
            metavar="KIND",
        ),
    ] = None,
    no_color: Annotated[
        bool, typer.Option("--no-color", help="No colours (also NO_COLOR).")
    ] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only errors on stderr.")] = False,
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="Log requests and retries.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Search the iTunes catalog and download song previews, with pause, resume and cancel
    that survive the process (NSURLSession for the terminal).

    Global options may also follow the command (halftunes list -q).

    Examples:

      halftunes search "jack johnson"

      halftunes download 1000001 1000002

      halftunes download -b 1000001 && halftunes wait

      halftunes pause 1000001; halftunes resume 1000001
    """
    set_up(ctx, session, quiet, verbose, no_color)


@contextlib.contextmanager
def interruptible(
    console: Console, before_exit: Callable[[], None] | None = None
) -> Iterator[Interruption]:
    """The process's Ctrl-C and SIGTERM, while a command runs transfers here.

    While the service has transfers running (the interruption is armed), the first Ctrl-C or
    SIGTERM pauses them all at a checkpoint and the command ends with 130 / 143; a second
    Ctrl-C ends the process at once (what is on disk is trusted by the next command on the
    same boot, so nothing is lost), a second SIGTERM waits for the pause. Before and after,
    Ctrl-C interrupts as usual and SIGTERM ends the command with 143. The handlers that were
    there before are put back, whatever happens."""
    from ..service import Interruption  # (start-up speed: the engine loads on demand)

    interruption = Interruption()
    if threading.current_thread() is not threading.main_thread():
        yield interruption  # (signals reach the main thread only: nothing to handle here)
        return

    def on_interrupt(signum: int, frame: object) -> None:
        if interruption.is_requested:
            if before_exit is not None:
                before_exit()  # (the progress drawn so far is left as it stands, tidily)
            console.info(
                "interrupted again: exiting now; `halftunes resume` continues from what is on disk"
            )
            os._exit(ExitStatus.INTERRUPTED)
        if not interruption.is_armed:
            raise KeyboardInterrupt
        interruption.request(ExitStatus.INTERRUPTED)

    def on_terminate(signum: int, frame: object) -> None:
        if not interruption.is_armed and not interruption.is_requested:
            raise SystemExit(ExitStatus.TERMINATED)
        interruption.request(ExitStatus.TERMINATED)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    if previous[signal.SIGINT] is not signal.SIG_IGN:  # (ignored, as in a shell's `&` job)
        signal.signal(signal.SIGINT, on_interrupt)
    signal.signal(signal.SIGTERM, on_terminate)
    try:
        yield interruption
    finally:
        for sig, theirs in previous.items():
            if theirs is not None:  # (None: set outside Python, cannot be put back)
                signal.signal(sig, theirs)


def main() -> None:
    try:
        app(prog_name="halftunes")
    except KeyboardInterrupt:
        sys.exit(ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        # stdout's reader went away (`| head -1`): the data could not be written. Whatever
        # ran has settled; point stdout at nothing so that the exit's flush is quiet too.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(ExitStatus.ERROR)
