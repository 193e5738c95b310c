"""Everything the user sees, in rooms: `formats` (sizes, durations, cells), `console`
(stderr as a side channel, messages, JSON on stdout), `tables` (search results, records,
configuration), `progress` (event subscribers: nothing, lines, JSON Lines; the summary),
`jobs` (a job's progress) and `bars` (tqdm, loaded only when bars are drawn). It decides nothing."""

from .base import Progress
from .console import (
    Console,
    ConsoleReporter,
    SideChannel,
    print_json,
    spinner,
    stderr_is_terminal,
)
from .formats import duration, fit, human_bytes, percent, printable
from .jobs import JobProgress
from .progress import (
    PROGRESS_MODES,
    JsonProgress,
    LineProgress,
    make_progress,
    summary,
)
from .tables import config_table, records_lines, records_table, search_lines, search_table

__all__ = [
    "PROGRESS_MODES",
    "Console",
    "ConsoleReporter",
    "JobProgress",
    "JsonProgress",
    "LineProgress",
    "Progress",
    "SideChannel",
    "config_table",
    "duration",
    "fit",
    "human_bytes",
    "make_progress",
    "percent",
    "print_json",
    "printable",
    "records_lines",
    "records_table",
    "search_lines",
    "search_table",
    "spinner",
    "stderr_is_terminal",
    "summary",
]
