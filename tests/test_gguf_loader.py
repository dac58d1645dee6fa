"""The GGUF loader on tiny random Llamas written the way llama.cpp's converter writes them, and its
errors on files that are missing, foreign, cut short or of an unsupported kind."""

import gguf
import numpy as np
import pytest
import torch

from nexttoken.errors import NextTokenError
from nexttoken.loaders.gguf import load_gguf_model
from nexttoken.loaders.gguf_file import read_gguf
from tiny_gguf import T, tiny_llama, write_llama_gguf


@pytest.mark.parametrize("tie", [True, False])
def test_tiny_llama_matches_transformers(tmp_path, tie):
    """Weights copied through the loader's own name table, q/k permuted as llama.cpp stores them."""
    reference = tiny_llama(tie)
    model, _ = load_gguf_model(write_llama_gguf(tmp_path / "tiny.gguf", reference))
    assert model.config.tie_embeddings == tie and model.config.n_kv_head == 2
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), reference(ids).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("matrix_type", [T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1])
def test_quantized_tiny_llama_matches_transformers_on_the_same_file(tmp_path, matrix_type):
    from transformers import AutoModelForCausalLM

    path = write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama(tie=False), matrix_type)
    model, _ = load_gguf_model(path)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype="float32").eval()
    ids = torch.randint(0, 96, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), reference(ids).logits, rtol=0, atol=1e-5)


def test_cache_prefill_then_decode_equals_full_forward(tmp_path):
    model, _ = load_gguf_model(write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama()))
    ids = torch.randint(0, 96, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        full = model(ids)
        cache = model.new_cache(batch_size=2, capacity=8)
        cache.reserve(30)
        steps = [model(ids[:, :12], cache), model(ids[:, 12:20], cache)]  # a prefill that continues a cache
        steps += [model(ids[:, t : t + 1], cache) for t in range(20, 30)]  # one-token decode steps
    assert cache.length == 30
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)


def test_missing_file():
    with pytest.raises(NextTokenError, match="model file not found: .*nowhere.gguf"):
        load_gguf_model("/nowhere.gguf")


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    with pytest.raises(NextTokenError, match="not a GGUF file"):
        load_gguf_model(path)


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.02])
def test_truncated_file(tmp_path, keep):
    path = write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(NextTokenError, match="truncated"):
        load_gguf_model(path)


def test_unsupported_architecture(tmp_path):
    path = write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama(), architecture="mamba")
    with pytest.raises(NextTokenError, match="unsupported model architecture 'mamba'"):
        load_gguf_model(path)


def test_unsupported_tensor_type(tmp_path):
    q8_1 = np.zeros((64, 64 // 32 * 40), np.uint8)  # Q8_1: 40-byte blocks of 32, a type nothing here decodes
    path = write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama(), extra_tensors={"blk.0.attn_q.weight": (q8_1, T.Q8_1)})
    with pytest.raises(NextTokenError, match="tensor 'blk.0.attn_q.weight' has type Q8_1"):
        load_gguf_model(path)


def test_missing_tensor(tmp_path):
    path = write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama(), extra_tensors={"blk.1.ffn_up.weight": None})
    with pytest.raises(NextTokenError, match="missing tensor 'blk.1.ffn_up.weight'"):
        load_gguf_model(path)


def test_unexpected_tensor(tmp_path):
    extra = {"rope_freqs.weight": (np.ones(5, np.float32), None)}  # Llama 3's scaling, for heads of 10
    path = write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama(), extra_tensors=extra)
    with pytest.raises(NextTokenError, match="rope_freqs.weight holds 5 factors; heads of 16 need 8"):
        load_gguf_model(path)
    extra = {"blk.0.attn_q.bias": (np.ones(64, np.float32), None)}
    path = write_llama_gguf(tmp_path / "tiny2.gguf", tiny_llama(), extra_tensors=extra)
    with pytest.raises(NextTokenError, match="unexpected tensors for a llama model: blk.0.attn_q.bias"):
        load_gguf_model(path)


def test_long_string_arrays_are_read_when_first_used(tmp_path):
    """An array of thousands of strings (a vocabulary) is skipped when the file opens and read on
    first use, giving the strings written; one that is not UTF-8 is then a one-line error naming
    its key."""
    words = [f"w{i}" for i in range(3000)] + ["@@BAD@@"]
    path = tmp_path / "strings.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_array("test.words", words)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    read = read_gguf(path).metadata["test.words"]
    assert len(read) == len(words) and list(read) == words and read[-1] == "@@BAD@@"
    path.write_bytes(path.read_bytes().replace(b"@@BAD@@", b"@@\xff\xfe\xfd@"))
    corrupt = read_gguf(path).metadata["test.words"]
    with pytest.raises(NextTokenError, match="'test.words' holds a string that is not UTF-8"):
        corrupt[0]
