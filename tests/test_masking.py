"""Masked-LM masking (BERT's 15 % / 80-10-10 rule) and the SFT loss mask, checked against the chat
template's own text spans."""

import pytest
import torch
import torch.nn.functional as F

from nexttoken.encoder.sentence import builtin_encoder_path
from nexttoken.tokenizer import Tokenizer
from nexttoken.tokenizer.presets import chat_format
from nexttoken.tokenizer.training import read_texts, save_tokenizer, shakespeare_files, train_bpe
from nexttoken.train.masking import (MaskingConfig, assistant_spans, labelled_token_loss, mask_tokens,
                                     maskable_positions, sft_batch, sft_tokens)
from nexttoken.train.objectives import IGNORE

MASK_ID, VOCAB = 3, 1000
CONVERSATION = [
    {"role": "system", "content": "You answer questions about Shakespeare's plays."},
    {"role": "user", "content": "Who says this line in Hamlet: 'Who's there?'"},
    {"role": "assistant", "content": "Bernardo, on the platform before the castle."},
    {"role": "user", "content": "And the reply?"},
    {"role": "assistant", "content": "Francisco: 'Nay, answer me: stand, and unfold yourself.'"},
]


def random_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    ids = torch.randint(10, VOCAB, (64, 512))
    ids[:, 0], ids[:, -1] = 1, 2  # special tokens at both ends, as [CLS] ... [SEP]
    maskable = (ids != 1) & (ids != 2)
    maskable[:8, 400:] = False  # padding
    return ids, maskable


def test_mask_tokens_follows_bert_rule():
    ids, maskable = random_batch()
    before = ids.clone()
    inputs, labels = mask_tokens(ids, maskable, MASK_ID, VOCAB, torch.Generator().manual_seed(0))
    assert torch.equal(ids, before)  # pure: the input is not touched
    chosen = labels != IGNORE
    assert not chosen[~maskable].any()
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])
    n = chosen.sum().item()
    assert n / maskable.sum().item() == pytest.approx(0.15, abs=0.01)
    masked = (inputs[chosen] == MASK_ID).sum().item() / n
    kept = (inputs[chosen] == ids[chosen]).sum().item() / n
    replaced = 1 - masked - kept
    assert (masked, replaced, kept) == pytest.approx((0.8, 0.1, 0.1), abs=0.02)


def test_mask_tokens_is_reproducible_with_its_generator():
    ids, maskable = random_batch()
    first = mask_tokens(ids, maskable, MASK_ID, VOCAB, torch.Generator().manual_seed(7))
    again = mask_tokens(ids, maskable, MASK_ID, VOCAB, torch.Generator().manual_seed(7))
    other = mask_tokens(ids, maskable, MASK_ID, VOCAB, torch.Generator().manual_seed(8))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], other[1])


def test_masking_config_is_checked():
    with pytest.raises(ValueError):
        MaskingConfig(mask_share=0.9, random_share=0.2)


def test_special_tokens_of_minilm_are_never_masked():
    tokenizer = Tokenizer.from_hf_folder(builtin_encoder_path())
    row = [tokenizer.bos_id, *tokenizer.encode("to be or not to be", add_bos=False, add_eos=False), tokenizer.eos_id]
    ids = torch.tensor([row, row[:4] + [tokenizer.pad_id] * (len(row) - 4)])
    attention_mask = ids != tokenizer.pad_id
    maskable = maskable_positions(ids, tokenizer, attention_mask)
    assert maskable[0].tolist() == [False] + [True] * (len(row) - 2) + [False]
    assert maskable[1].tolist() == [False, True, True, True] + [False] * (len(row) - 4)
    _, labels = mask_tokens(ids.repeat(200, 1), maskable.repeat(200, 1), tokenizer.mask_id, tokenizer.vocab_size,
                            torch.Generator().manual_seed(0))
    assert (labels[:, 0] == IGNORE).all() and (labels[::2, -1] == IGNORE).all()


def test_labelled_token_loss_is_mean_cross_entropy_over_labels():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[1, IGNORE, 3, IGNORE, 0], [IGNORE, IGNORE, 6, 2, IGNORE]])
    loss, n = labelled_token_loss(lambda ids, mask=None: logits, {"input_ids": torch.zeros(2, 5, dtype=torch.long),
                                                                   "labels": labels})
    keep = labels != IGNORE
    assert n.item() == 5
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], labels[keep]))


@pytest.fixture(scope="module")
def chat_tokenizers(tmp_path_factory, smollm2) -> dict[str, Tokenizer]:
    out = {"smollm2": smollm2.tokenizer}
    for name in ("chatml", "llama3", "deepseek"):
        chat = chat_format(name)
        backend = train_bpe(read_texts(shakespeare_files()[:1]), 500, chat)
        out[name] = Tokenizer.from_hf_folder(save_tokenizer(backend, chat, tmp_path_factory.mktemp(name)))
    return out


def end_of_turn(name: str, tokenizer: Tokenizer) -> str:
    return "<|im_end|>" if name == "smollm2" else chat_format(name).end_of_turn


@pytest.mark.parametrize("name", ["smollm2", "chatml", "llama3", "deepseek"])
def test_assistant_spans_are_replies_and_their_end_token(chat_tokenizers, name):
    tokenizer = chat_tokenizers[name]
    text, spans = assistant_spans(tokenizer, CONVERSATION)
    replies = [m["content"] + end_of_turn(name, tokenizer) for m in CONVERSATION if m["role"] == "assistant"]
    assert [text[start:end] for start, end in spans] == replies


def counted_runs(ids: list[int], counted: list[bool]) -> list[list[int]]:
    runs, run = [], []
    for token_id, flag in zip(ids, counted):
        if flag:
            run.append(token_id)
        elif run:
            runs.append(run)
            run = []
    return runs + ([run] if run else [])


@pytest.mark.parametrize("name", ["smollm2", "chatml", "llama3", "deepseek"])
def test_sft_loss_mask_covers_exactly_assistant_tokens(chat_tokenizers, name):
    tokenizer = chat_tokenizers[name]
    ids, counted = sft_tokens(tokenizer, CONVERSATION)
    text = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=False)
    assert tokenizer.decode(ids) == text  # BOS, where the format has one, comes from the template itself
    replies = [m["content"] + end_of_turn(name, tokenizer) for m in CONVERSATION if m["role"] == "assistant"]
    assert [tokenizer.decode(run) for run in counted_runs(ids, counted)] == replies
    end_ids = set(tokenizer.end_ids)
    assert [i for i, f in zip(ids, counted) if f and i in end_ids] == [tokenizer.backend.token_to_id(end_of_turn(name, tokenizer))] * 2


def test_sft_batch_shifts_targets_and_pads(chat_tokenizers):
    tokenizer = chat_tokenizers["chatml"]
    long, short = sft_tokens(tokenizer, CONVERSATION), sft_tokens(tokenizer, CONVERSATION[:3])
    batch = sft_batch([long, short], pad_id=tokenizer.pad_id, max_len=512)
    ids, counted = short
    n = len(ids) - 1
    assert batch["input_ids"].shape == (2, len(long[0]) - 1)
    assert batch["input_ids"][1, :n].tolist() == ids[:-1]
    assert batch["attention_mask"][1].tolist() == [True] * n + [False] * (batch["input_ids"].shape[1] - n)
    expected = [token if flag else IGNORE for token, flag in zip(ids[1:], counted[1:])]
    assert batch["targets"][1, :n].tolist() == expected
    assert (batch["targets"][1, n:] == IGNORE).all()
    cut = sft_batch([long], pad_id=tokenizer.pad_id, max_len=16)
    assert cut["input_ids"].shape == (1, 16) and cut["input_ids"][0].tolist() == long[0][:16]
