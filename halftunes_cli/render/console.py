"""stderr as the user's side channel (messages, progress), the console that honours -q, -v
and colour, the service's reporter, and JSON on stdout (data)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.status import Status


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal (False when it is closed, or gone)."""
    try:
        return sys.stderr is not None and bool(sys.stderr.isatty())
    except (OSError, ValueError):
        return False


class SideChannel:
    """stderr as progress and messages use it: a side channel. A write that fails (the
    reader went away, EPIPE; a full disk under a redirect) turns this channel off and is
    logged once; it never raises into the code that had something to say (a transfer)."""

    def __init__(self) -> None:
        self.is_broken = False

    @property
    def target(self) -> Any:
        return sys.stderr  # looked up at each write: a test runner may swap it

    def write(self, text: str) -> int:
        target = self.target
        if not self.is_broken and target is not None:  # (None: started with stderr closed)
            try:
                return int(target.write(text))
            except (OSError, ValueError) as exc:  # ValueError: the stream was closed
                self._broke(exc)
        return len(text)

    def flush(self) -> None:
        target = self.target
        if not self.is_broken and target is not None:
            try:
                target.flush()
            except (OSError, ValueError) as exc:
                self._broke(exc)

    def _broke(self, exc: BaseException) -> None:
        import logging

        self.is_broken = True
        logging.getLogger(__name__).warning(
            "stderr cannot be written (%s): progress and messages are off", exc
        )

    def isatty(self) -> bool:
        return stderr_is_terminal()

    def fileno(self) -> int:
        return int(self.target.fileno())

    @property
    def encoding(self) -> str:
        return getattr(self.target, "encoding", None) or "utf-8"


class Console:
    """stderr messages that honour -q, -v and colour settings (colours by click's styles)."""

    def __init__(self, quiet: bool = False, verbose: bool = False, color: bool = True):
        self.quiet = quiet
        self.verbose = verbose
        self.stream = SideChannel()
        self.color = color and self.stream.isatty()
        # While progress bars are drawn, a line goes through them (above the bars, which
        # are drawn again under it), never into them.
        self.sink: Callable[[str], None] | None = None

    def style(self, text: str, **style: Any) -> str:
        return click.style(text, **style) if self.color else text

    def _say(self, text: str) -> None:
        sink = self.sink
        if sink is not None:
            sink(text)
        else:
            print(text, file=self.stream, flush=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            self._say(message)

    def debug(self, message: str) -> None:
        if self.verbose:
            self._say(self.style(message, dim=True))

    def error(self, message: str, hint: str | None = None) -> None:
        self._say(self.style("halftunes: error: ", fg="red", bold=True) + message)
        if hint:
            self._say(self.style("  hint: ", fg="cyan") + hint)

    def announce(self, records: list[Any]) -> None:
        """Background transfers that finished while nobody watched (said once)."""
        if not records:
            return
        names = ", ".join(f"{r.display_name} ({r.status})" for r in records[:5])
        more = f" and {len(records) - 5} more" if len(records) > 5 else ""
        noun = "download" if len(records) == 1 else "downloads"
        self.info(f"{len(records)} background {noun} finished: {names}{more}")


class ConsoleReporter:
    """The service's messages, said on the console."""

    def __init__(self, console: Console):
        self.console = console

    def error(self, error: Any) -> None:
        self.console.error(error.message, error.hint)

    def info(self, message: str) -> None:
        self.console.info(message)

    def debug(self, message: str) -> None:
        self.console.debug(message)


def spinner(text: str, color: bool) -> Status:
    """A started spinner on stderr (call .stop()); no colour codes when colour is off."""
    from rich.console import Console as RichConsole

    status = RichConsole(stderr=True, no_color=not color).status(text)
    status.start()
    return status


def print_json(data: Any) -> None:
    """Data on stdout, as JSON (UTF-8 as it is, indented)."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    sys.stdout.flush()
