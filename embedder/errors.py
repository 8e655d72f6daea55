"""Errors a user can act on; the CLIs print them as one line and exit non-zero."""


class UserError(Exception):
    """Base class of every error whose message is meant for the user, not a traceback."""
