"""The `halftunes` command line: each command parses, makes one service call, and renders."""

# The import order is the order --help lists the commands in (each module registers its own).
from . import search, downloads, steer, listing, misc, job  # noqa: F401, I001 - (as above)
from .app import app, main

__all__ = ["app", "main"]
