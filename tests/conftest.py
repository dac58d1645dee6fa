"""Real models load once per test session; everything else uses tiny random configs."""

import pytest

from nexttoken.errors import NextTokenError
from nexttoken.packaged import GEMMA3_INSTALL, gemma3_270m_path
from nexttoken.pretrained import LanguageModel, builtin_model_path, load


@pytest.fixture(scope="session")
def smollm2_path():
    return builtin_model_path()


@pytest.fixture(scope="session")
def smollm2(smollm2_path) -> LanguageModel:
    return load(smollm2_path, dtype="float32")  # the reference: float32 weights, as the file stores them


@pytest.fixture(scope="session")
def reference_model(smollm2_path):
    """Hugging Face transformers' Llama on the same GGUF, dequantized to float32: the reference."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name,
                                                dtype="float32").eval()


@pytest.fixture(scope="session")
def reference_tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name)


@pytest.fixture(scope="session")
def minilm():
    from nexttoken.encoder.sentence import load_encoder

    return load_encoder()


@pytest.fixture(scope="session")
def reference_sentence_model(minilm):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm.path), device="cpu")


@pytest.fixture(scope="session")
def gemma3_path():
    """Gemma 3 270M's GGUF: an opt-in extra (Gemma Terms of Use) that CI does not install."""
    try:
        return gemma3_270m_path()
    except NextTokenError:
        pytest.skip(f"Gemma 3 270M is not installed (opt-in): {GEMMA3_INSTALL}")


@pytest.fixture(scope="session")
def gemma3_file(gemma3_path):
    from nexttoken.loaders.gguf_file import read_gguf

    return read_gguf(gemma3_path)


@pytest.fixture(scope="session")
def gemma3_reference_tokenizer(gemma3_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gemma3_path.parent, gguf_file=gemma3_path.name)
