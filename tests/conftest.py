"""Real models load once per test session; everything else uses tiny random configs."""

import pytest

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
