"""halftunes: Apple's URL-loading model (NSURLSession) for the terminal, and the HalfTunes app on it."""

__version__ = "0.1.0"

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
