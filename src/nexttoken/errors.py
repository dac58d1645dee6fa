"""The one exception type a user sees: its message is a single line that says what and where."""


class NextTokenError(Exception):
    """A user-facing error: bad input, a missing or corrupt file, an unsupported format."""
