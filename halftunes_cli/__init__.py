"""halftunes: Apple's URL-loading model (NSURLSession) for the terminal, and the HalfTunes app on it."""

from ._version import __version__

__all__ = [
    "ResumeData",
    "Session",
    "SessionConfiguration",
    "__version__",
]


def __getattr__(name: str) -> object:
    # Lazy, for start-up speed only: `halftunes --version` must not pay for the engine.
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
