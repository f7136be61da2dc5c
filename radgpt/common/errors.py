"""Errors that end a command with one clear line (exit code 2) instead of a traceback."""


class FatalError(Exception):
    """A misuse the run cannot continue from: no input found, unknown source type, unwritable output."""
