"""Files written whole: a reader (a search cache, a run folder read while it trains) sees the old
file or the new one, never half of one. And the folder our caches live in: compiled kernels, the
tokenizers built from GGUF metadata, search embeddings."""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("NEXTTOKEN_CACHE") or Path.home() / ".cache" / "nexttoken")


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """`write` a temporary file beside `path`, then rename it over `path`. The temporary name ends
    in `path`'s suffix, so writers that add a missing one (np.save) add none."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
