"""Errors a user can act on (the CLIs print them as one line and exit non-zero), and how a
file that could not be read is described in reports."""


class UserError(Exception):
    """Base class of every error whose message is meant for the user, not a traceback."""


class WeightsError(UserError, RuntimeError):
    """Weights cannot be loaded (missing file, corrupt file, no network for a pretrained tag)."""


def first_line(exc: BaseException) -> str:
    """An error's message as one line: its first line, or its type's name when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def describe_failure(exc: BaseException) -> str:
    """One short line for a file that failed: the exception's type and first line."""
    text = first_line(exc) if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300]


class BadBox(UserError, ValueError):
    """A box a user drew or typed that lies outside the photo or is too small to be a garment."""


class TooThin(UserError, ValueError):
    """A photo (or the part of it in its box) far longer than wide: resized for the model it
    would need unbounded memory (a 40000×1 PNG is a few bytes)."""
