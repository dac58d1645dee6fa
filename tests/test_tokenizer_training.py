"""Trained byte-level BPE tokenizers: saved as Hugging Face folders, loaded by our Tokenizer and by
transformers' AutoTokenizer, which must agree on ids and on the rendered chat template."""

from pathlib import Path

import pytest

from nexttoken.errors import NextTokenError
from nexttoken.tokenizer import Tokenizer
from nexttoken.tokenizer.presets import PRESETS, chat_format
from nexttoken.tokenizer.training import (bytes_per_token, read_texts, save_tokenizer, shakespeare_files,
                                          split_held_out, train_bpe, train_tokenizer)

VOCAB = 600
TEXTS = [
    "",
    "To be, or not to be, that is the question:",
    "  two  spaces,\ttabs\tand\nnewlines\n\n",
    "Ünïcödé: café, naïve, 你好世界, Привет, مرحبا 😀👩‍💻",
    "numbers 1 12 123 1234 3.14159 and code: def f(x): return x**2",
]
CONVERSATION = [
    {"role": "system", "content": "Answer in one line."},
    {"role": "user", "content": "Who says 'To be, or not to be'?"},
    {"role": "assistant", "content": "Hamlet."},
    {"role": "user", "content": "In which act?"},
    {"role": "assistant", "content": "Act III, scene 1."},
]
# Each chat format's rendering of CONVERSATION[:3], as the format's model cards write it.
REFERENCE_RENDERINGS = {
    "chatml": "<|im_start|>system\nAnswer in one line.<|im_end|>\n<|im_start|>user\nWho says 'To be, or not to be'?"
              "<|im_end|>\n<|im_start|>assistant\nHamlet.<|im_end|>\n",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nAnswer in one line.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nWho says 'To be, or not to be'?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nHamlet.<|eot_id|>",
    "deepseek": "<｜begin▁of▁sentence｜>Answer in one line.<｜User｜>Who says 'To be, or not to be'?"
                "<｜Assistant｜>Hamlet.<｜end▁of▁sentence｜>",
}
CHAT_PRESETS = [name for name, preset in PRESETS.items() if preset.chat_template is not None]


@pytest.fixture(scope="module")
def corpus() -> list[Path]:
    return shakespeare_files()


@pytest.fixture(scope="module")
def folders(corpus, tmp_path_factory) -> dict[str, Path]:
    """One tokenizer per preset, trained on two plays."""
    out = {}
    for name in PRESETS:
        chat = chat_format(name)
        out[name] = save_tokenizer(train_bpe(read_texts(corpus[:2]), VOCAB, chat), chat, tmp_path_factory.mktemp(name))
    return out


@pytest.fixture(scope="module")
def ours(folders) -> dict[str, Tokenizer]:
    return {name: Tokenizer.from_hf_folder(folder) for name, folder in folders.items()}


@pytest.fixture(scope="module")
def theirs(folders) -> dict:
    from transformers import AutoTokenizer

    return {name: AutoTokenizer.from_pretrained(folder) for name, folder in folders.items()}


def test_corpus_is_the_shipped_shakespeare(corpus):
    assert len(corpus) >= 40 and any(p.name == "hamlet_gut.txt" for p in corpus)
    train, held = split_held_out(corpus)
    assert held and not set(train) & set(held) and len(train) + len(held) == len(corpus)


@pytest.mark.parametrize("name", list(PRESETS))
def test_vocabulary_is_specials_then_bytes_then_merges(ours, name):
    tokenizer, chat = ours[name], chat_format(name)
    assert tokenizer.vocab_size == VOCAB
    assert list(tokenizer.tokens[: len(chat.special_tokens)]) == list(chat.special_tokens)
    assert tokenizer.control_ids == frozenset(range(len(chat.special_tokens)))


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(ours, name, text):
    tokenizer = ours[name]
    assert tokenizer.decode(tokenizer.encode(text, add_bos=False)) == text


@pytest.mark.parametrize("name", list(PRESETS))
def test_special_tokens_are_single_ids_never_split(ours, name):
    tokenizer, chat = ours[name], chat_format(name)
    for token in chat.special_tokens:
        token_id = tokenizer.backend.token_to_id(token)
        assert tokenizer.encode(f"word{token}word", add_bos=False).count(token_id) == 1
        assert tokenizer.encode(token, add_bos=False) == [token_id]
        # a broken marker is ordinary text: none of its pieces is a special id
        assert not set(tokenizer.encode(token[:-1] + " " + token[1:], add_bos=False)) & tokenizer.control_ids
    for text in TEXTS:
        assert not set(tokenizer.encode(text, add_bos=False)) & tokenizer.control_ids


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_transformers(ours, theirs, name, text):
    assert ours[name].encode(text) == theirs[name](text).input_ids


@pytest.mark.parametrize("name", CHAT_PRESETS)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_chat_template_matches_transformers(ours, theirs, name, generation_prompt):
    tokenizer = ours[name]
    messages = CONVERSATION[:3] if not generation_prompt else CONVERSATION[:4]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt)
    assert text == theirs[name].apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    ids = theirs[name].apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt,
                                           return_dict=False)
    assert tokenizer.encode(text, add_bos=False) == list(ids)


@pytest.mark.parametrize("name", CHAT_PRESETS)
def test_chat_template_renders_reference(ours, name):
    assert ours[name].apply_chat_template(CONVERSATION[:3], add_generation_prompt=False) == REFERENCE_RENDERINGS[name]


def test_chatml_renders_as_smollm2_template(ours, smollm2):
    """With a system message (SmolLM2's template adds a default one otherwise), our ChatML preset and
    SmolLM2's shipped template render the same text."""
    smollm2 = smollm2.tokenizer
    for generation_prompt in (False, True):
        messages = CONVERSATION if not generation_prompt else CONVERSATION[:4]
        assert (ours["chatml"].apply_chat_template(messages, add_generation_prompt=generation_prompt)
                == smollm2.apply_chat_template(messages, add_generation_prompt=generation_prompt))


@pytest.mark.parametrize("name", list(PRESETS))
def test_stop_ids_include_end_of_turn(ours, name):
    tokenizer, chat = ours[name], chat_format(name)
    assert tokenizer.backend.token_to_id(chat.end_of_turn) in tokenizer.end_ids
    assert tokenizer.eos_id in tokenizer.end_ids
    assert tokenizer.backend.token_to_id(chat.pad) not in tokenizer.end_ids


def test_gpt_preset_has_no_chat_template(ours):
    with pytest.raises(NextTokenError, match="no chat template"):
        ours["gpt"].apply_chat_template(CONVERSATION[:2])


def test_larger_vocabulary_compresses_better(corpus, tmp_path):
    """Bytes per token on a held-out play grows with the vocabulary; both beat one byte per token."""
    report = train_tokenizer(tmp_path / "small", vocab_size=VOCAB, files=corpus[:4])
    assert (report.vocab_size, report.train_files, report.held_out_files) == (VOCAB, 3, 1)
    chat = chat_format("chatml")
    save_tokenizer(train_bpe(read_texts(corpus[:3]), 2000, chat), chat, tmp_path / "large")
    held_out = list(read_texts(corpus[3:4]))
    small = bytes_per_token(Tokenizer.from_hf_folder(tmp_path / "small"), held_out)
    large = bytes_per_token(Tokenizer.from_hf_folder(tmp_path / "large"), held_out)
    assert 1.5 < small < large
    assert report.bytes_per_token == pytest.approx(small)


def test_vocabulary_below_the_specials_and_bytes_is_refused():
    with pytest.raises(NextTokenError, match="vocabulary size"):
        train_bpe(["text"], 100, chat_format("llama3"))


def test_unknown_preset_is_refused():
    with pytest.raises(NextTokenError, match="unknown chat format"):
        chat_format("alpaca")


def test_train_tokenizer_command(corpus, tmp_path):
    from typer.testing import CliRunner

    from nexttoken import cli

    result = CliRunner().invoke(cli.app, ["train-tokenizer", str(tmp_path / "tok"), "--vocab-size", "400",
                                          "--preset", "deepseek", "--file", str(corpus[0])])
    assert result.exit_code == 0, result.output
    assert "400 tokens (deepseek) from 1 files" in result.output and "bytes per token on the training text" in result.output
    assert Tokenizer.from_hf_folder(tmp_path / "tok").bos_id == 0
