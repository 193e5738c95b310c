"""`python -m halftunes_cli.catalog`: runs the offline catalog server (see `testing.catalog`)."""

from .testing.catalog import main

if __name__ == "__main__":
    main()
