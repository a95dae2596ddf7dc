"""The one error a bad setting raises, whichever reader (command line, and later a file or the environment) met it."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting is invalid; the message names the option and what to write instead."""
