"""The one error type of weight loading, so callers can tell bad checkpoint files from other failures."""
from __future__ import annotations


class WeightsError(ValueError):
    """A checkpoint file that cannot be read or does not match its config; the message names the file."""
