"""Errors meant for people: one line, naming what is wrong and what to do."""


class BenchError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line, no traceback."""


def first_line(exc: BaseException) -> str:
    """An exception's message as one line for a warning or error: its first non-blank line, or its type's
    name when it has no message (compiler and loader errors run to pages)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
