"""Errors shared across layers, in a leaf module so that any command can raise them."""


class CliError(Exception):
    """A user-facing error of the ``seedfast`` command: printed as one line, exit status 2, no traceback."""
