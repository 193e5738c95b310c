"""halftunes: Apple's URL-loading model (NSURLSession) for the terminal, and the HalfTunes app on it."""

import logging

__version__ = "0.1.0"

# A library logs; the application decides where to (the CLI's -v, the worker's log file).
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Session",
    "SessionConfiguration",
    "ResumeData",
    "__version__",
]


def __getattr__(name: str):
    # Lazy, so `halftunes --version` does not pay for requests.
    if name == "Session":
        from .session import Session

        return Session
    if name == "SessionConfiguration":
        from .config import SessionConfiguration

        return SessionConfiguration
    if name == "ResumeData":
        from .tasks import ResumeData

        return ResumeData
    raise AttributeError(name)
