"""What every progress style is: a subscriber of transfer events that shows nothing."""

from __future__ import annotations

from collections.abc import Callable

from ..events import TransferEvent

Clock = Callable[[], float]


class Progress:
    """Shows nothing: the base of every progress style. `begin(count)` before a command's
    transfers, `handle(event)` for each event, `close()` at the end."""

    def begin(self, count: int, labels: list[str] | None = None) -> None:
        """How many transfers this command runs (for an overall line), and their labels."""

    def handle(self, event: TransferEvent) -> None:
        """One event of one transfer."""

    def abort(self, note: str = "stopped") -> None:
        """The process is about to end at once (a second Ctrl-C, an interrupted `wait`):
        leave the screen tidy; what still moves is said to be `note`."""
        self.close()

    def close(self) -> None:
        """Nothing more will come: leave the screen tidy."""
