"""What every command shares: the app state on `ctx.obj`, option types declared once, the one
error-to-exit boundary, and the service each command calls."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import click
import typer

from ..config import SESSION_KINDS, SessionConfiguration, load_configuration
from ..errors import ExitStatus, HalftunesError, UsageError, internal_error
from ..render import (
    PROGRESS_MODES,
    Console,
    ConsoleReporter,
    Progress,
    make_progress,
    stderr_is_terminal,
)

if TYPE_CHECKING:
    from ..service import DownloadService

T = TypeVar("T")

# -- options declared once --------------------------------------------------------------------
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
IdsArgument = Annotated[
    list[str] | None,
    typer.Argument(
        help="Download ids (- reads them from stdin).",
        show_default=False,
        metavar="ID...",
        autocompletion=lambda incomplete: complete_ids(incomplete),
    ),
]
AllOption = Annotated[bool, typer.Option("--all", help="Every download it applies to.")]


def _complete_progress(incomplete: str) -> list[str]:
    return [mode for mode in PROGRESS_MODES if mode.startswith(incomplete)]


ProgressOption = Annotated[
    str,
    typer.Option(
        "--progress",
        metavar="|".join(PROGRESS_MODES),
        autocompletion=_complete_progress,
        show_default=True,
        help="auto: bars on a terminal, nothing otherwise; line: plain lines for logs; json: "
        "JSON Lines events on stderr.",
    ),
]
BackgroundOption = Annotated[
    bool, typer.Option("-b", "--background", help="Hand the transfers to the background worker.")
]


@dataclass
class AppState:
    """The global options of one invocation (lives on ctx.obj; no module globals)."""

    session_kind: str | None = None
    quiet: bool = False
    verbose: bool = False
    color: bool = True
    _console: Console | None = field(default=None, repr=False)

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = Console(self.quiet, self.verbose, self.color)
        return self._console


def app_state(ctx: click.Context) -> AppState:
    root = ctx.find_root()
    if not isinstance(root.obj, AppState):
        root.obj = AppState(color=not os.environ.get("NO_COLOR"))
    return root.obj


def set_up(
    ctx: typer.Context, session: str | None, quiet: bool, verbose: bool, no_color: bool
) -> AppState:
    state = AppState(session, quiet, verbose, not no_color and not os.environ.get("NO_COLOR"))
    if session is not None and session not in SESSION_KINDS:
        state.console.error(f"--session must be default, ephemeral or background, not {session!r}")
        raise typer.Exit(ExitStatus.USAGE)
    ctx.obj = state
    if verbose or "logging" in sys.modules:  # (logging loads only when it is needed)
        _log_to_stderr(state.console if verbose else None)
    return state


def _log_to_stderr(console: Console | None) -> None:
    """-v: the library's log (requests, status lines, retries) on stderr; else nothing."""
    import logging

    logger = logging.getLogger("halftunes_cli")
    for handler in list(logger.handlers):
        if getattr(handler, "is_halftunes_console", False):
            logger.removeHandler(handler)
    if console is None:
        logger.setLevel(logging.WARNING)
        return
    shown = console

    class ConsoleLog(logging.Handler):
        """Log records as dim lines on stderr; a record's traceback under it."""

        is_halftunes_console = True

        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            shown.debug(text)

    logger.addHandler(ConsoleLog(logging.DEBUG))
    logger.setLevel(logging.DEBUG)


# -- the one error-to-exit boundary ---------------------------------------------------------
def fail(state: AppState, exc: BaseException) -> NoReturn:
    """Say an error in one line (and a hint), exit with its status. The only place that maps
    errors to exit codes; a bug is said as one, with the traceback under -v."""
    if not isinstance(exc, HalftunesError):
        if isinstance(exc, typer.Exit | KeyboardInterrupt | SystemExit):
            raise exc
        if state.verbose:
            import traceback

            traceback.print_exception(exc, file=state.console.stream)
        exc = internal_error(exc)
    assert isinstance(exc, HalftunesError)
    if state.verbose and exc.__cause__ is not None:
        state.console.debug(f"caused by {type(exc.__cause__).__name__}: {exc.__cause__}")
    state.console.error(exc.message, exc.hint)
    raise typer.Exit(int(exc.exit_code)) from None


def exit_with(code: int) -> NoReturn:
    raise typer.Exit(int(code))


def configuration(
    state: AppState, problems: dict[str, UsageError] | None = None, **flags: Any
) -> SessionConfiguration:
    """The command's configuration; a bad value ends the command, unless `problems` is given
    to collect them (`config show`)."""
    flags = dict(flags)
    if state.session_kind:
        flags.setdefault("session", state.session_kind)
    try:
        return load_configuration(flags, problems=problems)
    except HalftunesError as exc:
        fail(state, exc)


def open_service(
    state: AppState, config: SessionConfiguration, announce: bool = True
) -> DownloadService:
    """The command's service, after noticing dead owners and announcing, on a terminal only,
    background transfers that ended unwatched."""
    from ..service import DownloadService  # (start-up speed: the engine loads on demand)

    service = DownloadService(config, ConsoleReporter(state.console))
    try:
        service.recover()
        if announce and stderr_is_terminal():
            state.console.announce(service.announcements())
    except HalftunesError as exc:
        service.close()
        fail(state, exc)
    return service


def call_service(
    state: AppState,
    call: Callable[[DownloadService], T],
    config: SessionConfiguration | None = None,
    announce: bool = True,
) -> T:
    """Open the command's service, make its one call, close it; an error ends the command
    with its message and exit status (never a traceback)."""
    service = open_service(state, config or configuration(state), announce)
    try:
        return call(service)
    except HalftunesError as exc:
        fail(state, exc)
    finally:
        service.close()


def expand_ids(items: list[str] | None) -> list[str]:
    """Ids in order, once each; `-` reads more from stdin (one a line)."""
    out: list[str] = []
    for item in items or []:
        if item == "-":
            out += [line.strip().strip('"') for line in sys.stdin if line.strip()]
        else:
            out.append(item.strip())
    return list(dict.fromkeys(out))


def complete_ids(incomplete: str) -> list[str]:
    """Shell completion of download ids from the state file (read only, never fails)."""
    try:
        from ..service import record_ids

        return record_ids(load_configuration({}), incomplete)
    except Exception:  # noqa: BLE001 - completion must never print a traceback
        return []


def progress_for(state: AppState, mode: str) -> Progress:
    if mode not in PROGRESS_MODES:
        state.console.error(f"--progress must be one of {', '.join(PROGRESS_MODES)}, not {mode!r}")
        raise typer.Exit(ExitStatus.USAGE)
    return make_progress(mode, state.console, stderr_is_terminal())
