"""halftunes: Apple's URL-loading model (NSURLSession) for the terminal, and the HalfTunes app on it."""

import logging

from ._version import __version__
from .config import SessionConfiguration
from .session import Session
from .tasks import ResumeData

# A library logs; the application decides where to (the CLI's -v, the worker's log file).
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ResumeData",
    "Session",
    "SessionConfiguration",
    "__version__",
]
