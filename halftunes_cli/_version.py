"""The version of halftunes (one place; pyproject reads it)."""

__version__ = "0.1.0"
