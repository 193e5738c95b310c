"""What every progress style is: a subscriber of transfer events that shows nothing."""

from __future__ import annotations

from collections.abc import Callable

from ..events import TransferEvent

Clock = Callable[[], float]


class Progress:
    """Shows nothing: the base of every progress style. `begin(count)` before a command's
    transfers, `handle(event)` for each event, `close()` at the end."""

    def begin(self, count: int) -> None:
        """How many transfers this command runs (for an overall line)."""

    def handle(self, event: TransferEvent) -> None:
        """One event of one transfer."""

    def close(self) -> None:
        """Nothing more will come: leave the screen tidy."""
