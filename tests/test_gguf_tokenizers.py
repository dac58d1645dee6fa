"""The tokenizers of the GGUF families beyond SmolLM2, against transformers' tokenizers loaded from
the same file: byte-level BPE under each pre-tokenizer llama.cpp names (small GGUFs written here
with the `gguf` writer), and Gemma 3's SentencePiece vocabulary (the real file, when its opt-in
extra is installed). Then each family's end tokens, and tokens that hold part of a character."""

from pathlib import Path
from typing import Any

import gguf
import pytest

from nexttoken.errors import NextTokenError
from nexttoken.loaders.gguf_file import read_gguf
from nexttoken.tokenizer import Tokenizer
from nexttoken.tokenizer.gguf_metadata import TokenType
from nexttoken.tokenizer.token_text import Spelling, readable, token_bytes

from mixed_texts import TEXTS

KEPT_TOKENS = 4000  # SmolLM2's first tokens: its specials, the 256 bytes and the earliest merges


@pytest.fixture(scope="module")
def smollm2_metadata(smollm2_path) -> dict[str, Any]:
    return read_gguf(smollm2_path).metadata


def write_tokenizer_gguf(path: Path, architecture: str, tokens: list[str], token_types: list[int],
                         pre: str, merges: list[str]) -> Path:
    """A GGUF with a byte-level tokenizer and a model's shape but no tensors: enough for either tokenizer."""
    writer = gguf.GGUFWriter(path, architecture)
    for add, value in ((writer.add_context_length, 64), (writer.add_embedding_length, 8), (writer.add_block_count, 1),
                       (writer.add_feed_forward_length, 16), (writer.add_head_count, 2), (writer.add_head_count_kv, 1),
                       (writer.add_layer_norm_rms_eps, 1e-6), (writer.add_rope_freq_base, 10000.0)):
        add(value)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def small_byte_level(smollm2_metadata) -> tuple[list[str], list[int], list[str]]:
    """SmolLM2's first tokens and the merges among them: a real byte-level vocabulary, small
    enough that transformers reads it in a moment."""
    tokens = list(smollm2_metadata["tokenizer.ggml.tokens"][:KEPT_TOKENS])
    kept = set(tokens)
    merges = [m for m in smollm2_metadata["tokenizer.ggml.merges"] if m.replace(" ", "", 1) in kept
              and all(part in kept for part in m.split(" ", 1))]
    return tokens, list(smollm2_metadata["tokenizer.ggml.token_type"][:KEPT_TOKENS]), merges


# Pre-tokenizer names transformers' GGUF reader knows, with an architecture it reads them under.
@pytest.mark.parametrize("architecture,pre", [("llama", "llama-bpe"), ("qwen2", "qwen2"),
                                              ("qwen2", "deepseek-r1-qwen"), ("llama", "tekken")])
def test_byte_level_pre_tokenizers_match_transformers(tmp_path, small_byte_level, architecture, pre):
    from transformers import AutoTokenizer

    tokens, token_types, merges = small_byte_level
    path = write_tokenizer_gguf(tmp_path / f"{pre}.gguf", architecture, tokens, token_types, pre=pre, merges=merges)
    ours = Tokenizer.from_gguf_metadata(read_gguf(path).metadata)
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in TEXTS:
        ids = ours.encode(text, add_bos=False)
        assert ids == theirs.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == text


def test_the_pre_tokenizers_cut_numbers_and_cases_as_llama_cpp(tmp_path, small_byte_level):
    tokens, token_types, merges = small_byte_level
    text = "x 12345 getHTTP 中国"

    def pieces(pre: str) -> list[str]:
        path = write_tokenizer_gguf(tmp_path / f"{pre}.gguf", "llama", tokens, token_types, pre=pre, merges=merges)
        backend = Tokenizer.from_gguf_metadata(read_gguf(path).metadata).backend
        return [bytes(token_bytes(p, Spelling.BYTE_LEVEL)).decode() for p, _ in backend.pre_tokenizer.pre_tokenize_str(text)]

    assert pieces("llama-bpe") == ["x", " ", "123", "45", " getHTTP", " 中国"]
    assert pieces("qwen2") == ["x", " ", "1", "2", "3", "4", "5", " getHTTP", " 中国"]
    assert pieces("tekken") == ["x", " ", "1", "2", "3", "4", "5", " get", "HTTP", " 中国"]
    assert pieces("deepseek-v3") == ["x", " ", "123", "45", " getHTTP", " ", "中国"]


def test_an_unknown_pre_tokenizer_names_those_we_run(tmp_path, small_byte_level):
    tokens, token_types, merges = small_byte_level
    path = write_tokenizer_gguf(tmp_path / "odd.gguf", "llama", tokens, token_types, pre="no-such-split", merges=merges)
    with pytest.raises(NextTokenError, match=r"'no-such-split' is not supported \(supported: .*llama-bpe.*qwen2"):
        Tokenizer.from_gguf_metadata(read_gguf(path).metadata)


# The end tokens each family's files declare or name, as the article's table lists them.
FAMILY_END_TOKENS = {
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               {"bos": 0, "eos": 1, "eot": 4}, {"<|end_of_text|>", "<|eot_id|>"}),
    "qwen2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], {"eos": 2}, {"<|endoftext|>", "<|im_end|>"}),
    "deepseek-r1-qwen": (["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"],
                         {"bos": 0, "eos": 1}, {"<｜end▁of▁sentence｜>"}),
    "gemma3": (["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
               {"bos": 2, "eos": 1, "padding": 0}, {"<eos>", "<end_of_turn>"}),
}


@pytest.mark.parametrize("family", FAMILY_END_TOKENS)
def test_each_family_ends_on_its_end_tokens(family):
    specials, special_ids, ends = FAMILY_END_TOKENS[family]
    tokens = [*specials, *"abc", "<0x0A>"]
    sentencepiece = family == "gemma3"
    metadata = {
        "tokenizer.ggml.model": "llama" if sentencepiece else "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [TokenType.CONTROL] * len(specials) + [TokenType.NORMAL] * 3 + [TokenType.BYTE],
        **({"tokenizer.ggml.scores": [0.0] * len(tokens)} if sentencepiece else {"tokenizer.ggml.merges": []}),
        **{f"tokenizer.ggml.{name}_token_id": token_id for name, token_id in special_ids.items()},
    }
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    assert {tokenizer.tokens[i] for i in tokenizer.end_ids} == ends


def test_partial_characters_are_spelled_as_bytes():
    assert readable("中".encode()) == "中"
    assert readable("中".encode()[:2]) == "<0xE4><0xB8>"
    assert readable(b"a" + "中".encode()[:1]) == "a<0xE4>"
    assert readable("中".encode()[2:] + "国".encode()) == "<0xAD>国"
    assert token_bytes("ĠâĢ", Spelling.BYTE_LEVEL) == b" \xe2\x80"
    assert token_bytes("<0xE4>", Spelling.SENTENCEPIECE) == b"\xe4"
    assert token_bytes("▁中国", Spelling.SENTENCEPIECE) == " 中国".encode()


def test_token_bytes_join_into_the_text(smollm2_metadata):
    tokenizer = Tokenizer.from_gguf_metadata(smollm2_metadata)
    for text in TEXTS:
        assert b"".join(tokenizer.token_bytes(i) for i in tokenizer.encode(text)) == text.encode(), text
    split = tokenizer.encode("你好")  # SmolLM2 writes 你 in two tokens
    assert [tokenizer.token_text(i) for i in split][:2] == ["<0xE4><0xBD>", "<0xA0>"]


@pytest.fixture(scope="module")
def gemma3_tokenizer(gemma3_file) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(gemma3_file.metadata)


def test_gemma3_ids_match_transformers(gemma3_tokenizer, gemma3_reference_tokenizer):
    for text in TEXTS:
        ids = gemma3_tokenizer.encode(text)
        assert ids == gemma3_reference_tokenizer.encode(text), text
        assert gemma3_tokenizer.decode(ids, skip_special=True) == text
        assert b"".join(gemma3_tokenizer.token_bytes(i) for i in ids[1:]) == text.encode(), text


def test_gemma3_reads_its_vocabulary_as_sentencepiece(gemma3_tokenizer):
    assert gemma3_tokenizer.spelling is Spelling.SENTENCEPIECE
    assert gemma3_tokenizer.adds_bos and gemma3_tokenizer.tokens[gemma3_tokenizer.bos_id] == "<bos>"
    assert {gemma3_tokenizer.tokens[i] for i in gemma3_tokenizer.end_ids} == {"<eos>", "<end_of_turn>"}
    # a character outside the vocabulary falls back to its bytes, one token each
    fraktur = gemma3_tokenizer.encode("𝔘", add_bos=False)
    assert [gemma3_tokenizer.token_text(i) for i in fraktur] == ["<0xF0>", "<0x9D>", "<0x94>", "<0x98>"]
    assert gemma3_tokenizer.decode(fraktur) == "𝔘"
