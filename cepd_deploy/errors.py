"""The one exception type for user errors."""


class CEPDError(Exception):
    """A user error: bad input, impossible target, missing tool. The CLI prints it as one line and exits 2."""
