"""The web console: server-rendered pages at /ui/ on the API's address (see console.py)."""

from .console import Console

__all__ = ["Console"]
