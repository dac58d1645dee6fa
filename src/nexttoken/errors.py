"""The exceptions a user sees: each message is a single line that says what and where. Subclasses
name the mistakes a caller tells apart (the server answers each with its own code)."""


class NextTokenError(Exception):
    """A user-facing error: bad input, a missing or corrupt file, an unsupported format."""


class ContextWindowExceeded(NextTokenError):
    """More tokens than the model's context window holds: a prompt, a source, or a sequence and its cache."""


class InvalidOption(NextTokenError):
    """A decoding setting out of its bounds or of the wrong form; `option` names the setting's
    field, which the CLI and the server translate into their own names."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


class InvalidGrammar(InvalidOption):
    """A grammar that cannot constrain decoding: a schema that is not JSON Schema or uses what the
    engine does not support, a pattern or grammar that does not compile, or one beyond the
    engine's limits. `parameter` names what carried it ("json_schema", "regex", "choice", "lark")."""

    @property
    def parameter(self) -> str:
        return self.option
