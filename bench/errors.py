"""Errors meant for people: one line, naming what is wrong and what to do."""


class BenchError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line, no traceback."""
