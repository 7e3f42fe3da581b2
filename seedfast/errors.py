"""Errors shared across layers, in a leaf module so that any command can raise them."""


class CliError(Exception):
    """A user-facing error of the ``seedfast`` command: printed as one line, exit status 2, no traceback."""


def os_error_message(err: OSError, doing: str) -> str:
    """One line for an OS error met while ``doing`` something (``"writing the run folder runs/a"``).

    Parameters
    ----------
    err : OSError
        Its ``strerror`` ("No space left on device", "Read-only file system", ...), or
        ``str(err)`` when unset, and its ``filename`` when set, are shown.
    doing : str
        What was being done, named by the argument or path the user gave.

    Returns
    -------
    str
        ``"<doing>: <reason> (<path>)"``, without a newline.
    """
    reason = err.strerror or str(err) or type(err).__name__
    where = f" ({err.filename})" if err.filename else ""
    return " ".join(f"{doing}: {reason}{where}".split())
