"""Test tooling that ships with halftunes: the offline iTunes-compatible catalog server.

It plays the other side of the wire and shares no code with the client."""
