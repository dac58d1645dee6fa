"""The exceptions a user sees: each message is a single line that says what and where."""


class NextTokenError(Exception):
    """A user-facing error: bad input, a missing or corrupt file, an unsupported format."""


class InvalidOption(NextTokenError):
    """A decoding setting out of its bounds or of the wrong form; `option` names the setting's
    field, which the CLI and the server translate into their own names."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option
