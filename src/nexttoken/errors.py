"""The exceptions a user sees: each message is a single line that says what and where. Subclasses
name the mistakes a caller tells apart (the server answers each with its own code)."""


class NextTokenError(Exception):
    """A user-facing error: bad input, a missing or corrupt file, an unsupported format."""


class ContextWindowExceeded(NextTokenError):
    """More tokens than the model's context window holds: a prompt, a source, or a sequence and its cache."""
