"""User-facing errors.

Anything a user can cause (a bad path, a wrong checkpoint, an unsupported scale) raises
:class:`EdsrError` with a one-line message that says what to do. The CLI prints exactly that
line and exits non-zero; anything else escaping is a bug in this package.
"""


class EdsrError(Exception):
    """An error caused by the user's input, with a message meant to be shown as is."""


class CheckpointError(EdsrError):
    """A checkpoint could not be read or does not match an EDSR/MDSR layout."""


class ImageError(EdsrError):
    """An image could not be read or written."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, docker stop, SLURM), stopping work as Ctrl-C does; the CLI exits with
    143, a terminated process's status, where Ctrl-C gives 130."""


class Cancelled(Exception):
    """Work stopped because its caller asked (``should_stop``): a server's timeout or shutdown."""


def one_line(error: object, limit: int = 200) -> str:
    """An exception (or a text) as one short line for a message a user reads.

    An OS error gives its reason (``strerror``) without the file name, which the message names
    itself; other errors their first non-empty line with whitespace collapsed (a library's later
    lines are advice for its own developers); an empty error its type's name.
    """
    text = str(getattr(error, "strerror", None) or error)
    first = next((" ".join(line.split()) for line in text.splitlines() if line.strip()), "")
    if not first and isinstance(error, BaseException):
        first = type(error).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."
