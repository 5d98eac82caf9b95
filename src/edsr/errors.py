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


class Cancelled(Exception):
    """Work stopped because its caller asked (``should_stop``): a server's timeout or shutdown."""
