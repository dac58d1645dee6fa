"""A throwaway corpus, tokenizer and prepared data for the training tests, built in-process in a
second (nanochat's hermetic tests train their tokenizer the same way)."""

import random
from pathlib import Path

import pytest
import torch

from nexttoken.tokenizer.presets import chat_format
from nexttoken.tokenizer.training import save_tokenizer, train_bpe
from nexttoken.train.prepare import DataIndex, prepare_data

WORDS = ("the", "king", "queen", "doth", "hath", "thou", "thee", "my", "lord", "lady", "sweet", "night", "day",
         "love", "death", "crown", "sword", "speak", "hear", "come", "go", "fair", "foul", "heaven", "earth", "blood")
END = chat_format("gpt").eos


def tiny_texts(n_documents: int = 12, seed: int = 0) -> list[str]:
    """Short documents of verse-like lines, different lengths, mostly ASCII with a little UTF-8."""
    rng = random.Random(seed)
    docs = []
    for d in range(n_documents):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize() + rng.choice(".,;!?")
                 for _ in range(rng.randint(20, 60))]
        docs.append(f"ACT {d + 1}. Señor Æsop\n" + "\n".join(lines) + "\n")
    return docs


def tiny_tokenizer(texts: list[str], vocab_size: int = 320):
    return train_bpe(texts, vocab_size, chat_format("gpt"))


def tiny_data(folder: Path, texts: list[str] | None = None, workers: int = 1) -> DataIndex:
    texts = texts or tiny_texts()
    tokenizer = tiny_tokenizer(texts)
    save_tokenizer(tokenizer, chat_format("gpt"), folder)
    return prepare_data(texts, tokenizer, END, folder, val_fraction=0.25, workers=workers)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train in one thread: on a busy machine, every parallel region of a second
    thread waits for a time slice, which costs more than the work it splits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Repeat:
    """The same batch forever, with the state_dict protocol the loop expects of its data."""

    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        return self

    def __next__(self):
        return self.batch

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass
