"""Reading a Hugging Face config.json, shared by the families that load from one."""

from typing import Any

from nexttoken.errors import NextTokenError


def required(config: dict[str, Any], key: str) -> Any:
    """config[key], or a one-line error naming the missing key."""
    if key not in config:
        raise NextTokenError(f"config.json lacks '{key}'")
    return config[key]
