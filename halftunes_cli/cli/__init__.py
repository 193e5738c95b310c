"""The `halftunes` command line: each command parses, makes one service call, and renders."""
# isort: skip_file  (import order is the order commands are listed in --help)

from . import downloads, listing, misc, search, steer  # noqa: F401  (registers the commands)
from .app import app, main

__all__ = ["app", "main"]
