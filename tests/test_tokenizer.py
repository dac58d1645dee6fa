"""The GGUF-built tokenizer against Hugging Face's tokenizer loaded from the same file, and against
llama.cpp's pre-tokenizer rules where the two differ."""

from typing import Any

import pytest
import tokenizers

from nexttoken.errors import NextTokenError
from nexttoken.loaders.gguf_file import read_gguf
from nexttoken.tokenizer import Tokenizer

from mixed_texts import TEXTS

# Number characters outside ASCII. llama.cpp's "smollm" rule isolates each one, so a space before one
# stays its own token. The Hugging Face GGUF converter uses the plain GPT-2 split, which keeps the space
# with the number, so its ids differ wherever a merge joins "Ġ" to the number's first byte (all but " １２３").
NON_ASCII_NUMBERS = [" ²", " ½", " ①", " ٣٤٥", " １２３", " Ⅻ", "x ³y"]


@pytest.fixture(scope="module")
def metadata(smollm2_path) -> dict[str, Any]:
    return read_gguf(smollm2_path).metadata


@pytest.fixture(scope="module")
def tokenizer(metadata: dict[str, Any]) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(metadata)


@pytest.fixture(scope="module")
def reference_with_hub_pre_tokenizer(reference_tokenizer) -> tokenizers.Tokenizer:
    """The reference with the pre-tokenizer of SmolLM2's own tokenizer.json on the Hub: each digit
    alone, then the GPT-2 split. Built from `tokenizers` parts, not from our regexes."""
    backend = tokenizers.Tokenizer.from_str(reference_tokenizer.backend_tokenizer.to_str())
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Sequence(
        [
            tokenizers.pre_tokenizers.Digits(individual_digits=True),
            tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return backend


def changed(metadata: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    return {**metadata, **changes}


def without(metadata: dict[str, Any], key: str) -> dict[str, Any]:
    return {name: value for name, value in metadata.items() if name != key}


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_reference(tokenizer, reference_tokenizer, text):
    assert tokenizer.encode(text) == reference_tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", TEXTS + NON_ASCII_NUMBERS)
def test_decode_inverts_encode(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize("text", NON_ASCII_NUMBERS)
def test_smollm_isolates_every_number_character_like_llama_cpp(tokenizer, reference_with_hub_pre_tokenizer, text):
    assert tokenizer.encode(text) == reference_with_hub_pre_tokenizer.encode(text, add_special_tokens=False).ids


def test_smollm_splits_a_space_from_the_number_after_it(tokenizer, reference_tokenizer):
    assert [tokenizer.id_to_token(i) for i in tokenizer.encode(" ²")] == ["Ġ", "Â²"]
    # The GGUF converter's plain GPT-2 split keeps " ²" whole, and the merge "Ġ Â" then splits "²"'s bytes.
    theirs = reference_tokenizer.encode(" ²", add_special_tokens=False)
    assert reference_tokenizer.convert_ids_to_tokens(theirs) == ["ĠÂ", "²"]


def test_gpt2_pre_tokenizer_is_the_plain_gpt2_split(metadata, reference_tokenizer):
    gpt2 = Tokenizer.from_gguf_metadata(changed(metadata, {"tokenizer.ggml.pre": "gpt-2"}))
    for text in TEXTS + NON_ASCII_NUMBERS:
        assert gpt2.encode(text) == reference_tokenizer.encode(text, add_special_tokens=False), text


def test_default_pre_tokenizer_splits_like_llama_cpp(metadata):
    default = Tokenizer.from_gguf_metadata(without(metadata, "tokenizer.ggml.pre"))
    # llama.cpp's default: punctuation runs, then the GPT-2 split, then number runs, then digit triples.
    # Cutting at "!?" first leaves "   " at the end of a piece, where the GPT-2 split keeps it whole.
    pieces = [piece for piece, _ in default.backend.pre_tokenizer.pre_tokenize_str("Hi, you   !? 1234567")]
    assert pieces == ["Hi", ",", "Ġyou", "ĠĠĠ", "!?", "Ġ", "123", "456", "7"]


def test_bytes_missing_from_the_vocabulary_are_dropped_as_by_the_reference(tokenizer, reference_tokenizer):
    text = "a\x04b"  # SmolLM2's vocabulary has no token for the byte 0x04
    assert tokenizer.encode(text) == reference_tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(tokenizer.encode(text)) == "ab"


def test_special_ids_are_the_metadata_ones(tokenizer, metadata, reference_tokenizer):
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.unk_id) == (
        metadata["tokenizer.ggml.bos_token_id"],
        metadata["tokenizer.ggml.eos_token_id"],
        metadata["tokenizer.ggml.padding_token_id"],
        metadata["tokenizer.ggml.unknown_token_id"],
    )
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.unk_id) == (
        reference_tokenizer.bos_token_id,
        reference_tokenizer.eos_token_id,
        reference_tokenizer.pad_token_id,
        reference_tokenizer.unk_token_id,
    )
    assert tokenizer.vocab_size == len(metadata["tokenizer.ggml.tokens"]) == 49152


def test_end_ids_include_every_end_marker(tokenizer):
    assert tokenizer.end_ids == (0, 2)  # <|endoftext|> and <|im_end|>


def test_end_ids_include_declared_eot_and_eom(metadata):
    declared_ids = {"tokenizer.ggml.eot_token_id": 7, "tokenizer.ggml.eom_token_id": 5}
    declared = Tokenizer.from_gguf_metadata(changed(metadata, declared_ids))
    assert declared.end_ids == (0, 2, 5, 7)


def test_control_tokens_are_special(tokenizer):
    assert all(tokenizer.is_special(i) for i in range(17))
    assert not tokenizer.is_special(17)
    assert not tokenizer.is_special(tokenizer.encode("hello")[0])


def test_control_tokens_encode_whole_and_can_be_skipped(tokenizer, reference_tokenizer):
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert tokenizer.decode(ids, skip_special=True) == "user\nhi"
    assert reference_tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"
    assert tokenizer.id_to_token(1) == "<|im_start|>"


def test_bos_follows_metadata_unless_asked(tokenizer, metadata):
    assert tokenizer.encode("hi") == tokenizer.encode("hi", add_bos=False)  # add_bos_token is false
    assert tokenizer.encode("hi", add_bos=True) == [1, *tokenizer.encode("hi")]
    flags = {"tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": True}
    adds_both = Tokenizer.from_gguf_metadata(changed(metadata, flags))
    assert adds_both.encode("hi") == [1, *tokenizer.encode("hi"), 2]


def test_id_outside_vocabulary_is_an_error(tokenizer):
    with pytest.raises(NextTokenError, match="outside the vocabulary"):
        tokenizer.id_to_token(49152)


CONVERSATION = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And in Chinese?\nAnswer briefly."},
]
SYSTEM = {"role": "system", "content": "You are terse."}


@pytest.mark.parametrize("messages", [CONVERSATION, [SYSTEM, *CONVERSATION]], ids=["no-system", "system"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_reference(tokenizer, reference_tokenizer, messages, add_generation_prompt):
    ours = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    theirs = reference_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours == theirs
    assert ours.endswith("<|im_start|>assistant\n") == add_generation_prompt


# Block tags on their own indented lines: rendered right only with trim_blocks and lstrip_blocks.
BLOCKY_TEMPLATE = """{{ bos_token }}
{% for message in messages %}
    {% if message['role'] == 'system' %}
[SYS] {{ message['content'] }}
    {% else %}
[{{ message['role'] | upper }}] {{ message['content'] }}{{ eos_token }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
[ASSISTANT]
{% endif %}"""


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_block_template_renders_like_reference(metadata, reference_tokenizer, add_generation_prompt):
    blocky = Tokenizer.from_gguf_metadata(changed(metadata, {"tokenizer.chat_template": BLOCKY_TEMPLATE}))
    messages = [SYSTEM, *CONVERSATION]
    ours = blocky.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    theirs = reference_tokenizer.apply_chat_template(
        messages, chat_template=BLOCKY_TEMPLATE, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours == theirs
    assert ours.startswith("<|im_start|>\n[SYS] You are terse.\n[USER] What is 2 + 2?<|im_end|>\n")


def test_unknown_pre_tokenizer_is_an_error(metadata):
    with pytest.raises(NextTokenError, match="tokenizer.ggml.pre 'klingon' is not supported"):
        Tokenizer.from_gguf_metadata(changed(metadata, {"tokenizer.ggml.pre": "klingon"}))


def test_unsupported_tokenizer_model_is_an_error(metadata):
    with pytest.raises(NextTokenError, match=r"tokenizer.ggml.model 't5' is not supported \(supported: 'gpt2'.*'llama'"):
        Tokenizer.from_gguf_metadata(changed(metadata, {"tokenizer.ggml.model": "t5"}))


def test_broken_chat_template_is_a_one_line_error(metadata):
    unclosed = "{% for m in messages %}{{ m"
    broken = Tokenizer.from_gguf_metadata(changed(metadata, {"tokenizer.chat_template": unclosed}))
    with pytest.raises(NextTokenError, match="syntax error") as raised:
        broken.apply_chat_template(CONVERSATION)
    assert "\n" not in str(raised.value)


def test_missing_chat_template_is_an_error(metadata):
    templateless = Tokenizer.from_gguf_metadata(without(metadata, "tokenizer.chat_template"))
    assert templateless.chat_template is None
    with pytest.raises(NextTokenError, match="no chat template"):
        templateless.apply_chat_template(CONVERSATION)


def test_template_raise_exception_is_an_error(metadata):
    strict = Tokenizer.from_gguf_metadata(
        changed(metadata, {"tokenizer.chat_template": "{{ raise_exception('roles must alternate') }}"})
    )
    with pytest.raises(NextTokenError, match="roles must alternate"):
        strict.apply_chat_template(CONVERSATION)
