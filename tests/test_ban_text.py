"""ban_text, a processor added as one setting and one function: against transformers' bad-words
processor, and on the real model in every decoding mode (greedy, sampling, batched rows, beams,
speculative); the server's and the CLI's are in test_server.py and test_cli.py."""

import pytest
import torch
import transformers as hf

from nexttoken.decoding.config import GenerationConfig, SamplingConfig
from nexttoken.decoding.processors import TokenHistory, ban_sequences, text_sequences
from nexttoken.errors import NextTokenError

PROMPT = "The capital of France is"
BANNED = SamplingConfig(ban_text=("Paris",))


def test_ban_sequences_matches_transformers():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 50, generator=g)
    ids = torch.randint(0, 6, (5, 9), generator=g)
    history = TokenHistory(ids, torch.ones_like(ids, dtype=torch.bool), prompt_len=4)
    sequences = [(7,), (3, 4), (1, 2, 5), (0, 0, 0, 9)]
    before = logits.clone()
    ours = ban_sequences(logits, history, sequences)
    theirs = hf.NoBadWordsLogitsProcessor([list(s) for s in sequences], eos_token_id=49)(ids, logits.clone())
    assert torch.equal(logits, before)
    assert torch.equal(ours, theirs)
    assert ours[:, 7].isinf().all()


def test_ban_sequences_ignore_padding():
    history = TokenHistory(torch.tensor([[5, 0, 4], [0, 0, 4]]), torch.tensor([[True, True, True], [False, False, True]]), 3)
    banned = ban_sequences(torch.zeros(2, 8), history, [(0, 4, 6)])  # the pad id is 0 too
    assert banned[:, 6].isinf().tolist() == [True, False]  # row 1's 0 is padding, not a token


def test_text_is_banned_with_and_without_a_leading_space(smollm2):
    assert text_sequences(("Paris",), smollm2.text_ids) == {tuple(smollm2.text_ids("Paris")),
                                                             tuple(smollm2.text_ids(" Paris"))}
    with pytest.raises(NextTokenError, match="ban_text needs the model's tokenizer"):
        text_sequences(("Paris",), None)
    with pytest.raises(NextTokenError, match="^ban_text "):
        SamplingConfig(ban_text=("",))


def test_greedy_and_sampling_never_write_the_text(smollm2):
    ids = smollm2.encode(PROMPT)
    assert "Paris" in smollm2.generate(ids, GenerationConfig(max_new_tokens=8)).text  # what it says unbanned
    assert "Paris" not in smollm2.generate(ids, GenerationConfig(max_new_tokens=8, sampling=BANNED)).text
    sampled = GenerationConfig(max_new_tokens=8, num_return_sequences=4,
                               sampling=SamplingConfig(temperature=0.8, seed=1, ban_text=("Paris",)))
    assert not [c.text for c in smollm2.generate_batch([ids], sampled)[0] if "Paris" in c.text]


def test_batched_rows_each_keep_the_ban(smollm2):
    prompts = [smollm2.encode(PROMPT), smollm2.encode("What is the capital of France?", chat=True)]
    config = GenerationConfig(max_new_tokens=12, sampling=BANNED)
    together = smollm2.generate_batch(prompts, config)
    for prompt, [completion] in zip(prompts, together):
        assert "Paris" not in completion.text
        assert completion.token_ids == smollm2.generate(prompt, config).token_ids


def test_beams_never_write_the_text(smollm2):
    ids = smollm2.encode(PROMPT)
    config = GenerationConfig(max_new_tokens=10, num_beams=3, num_return_sequences=3)
    assert any("Paris" in c.text for c in smollm2.generate_batch([ids], config)[0])
    banned = smollm2.generate_batch([ids], GenerationConfig(max_new_tokens=10, num_beams=3, num_return_sequences=3,
                                                            sampling=BANNED))[0]
    assert len(banned) == 3 and not [c.text for c in banned if "Paris" in c.text]


def test_speculative_decoding_keeps_the_ban_and_greedys_tokens(smollm2):
    ids = smollm2.encode("Repeat exactly: The capital of France is Paris. The capital of France is Paris.", chat=True)
    assert "Paris" in smollm2.generate(ids, GenerationConfig(max_new_tokens=30)).text
    plain = smollm2.generate(ids, GenerationConfig(max_new_tokens=30, sampling=BANNED))
    fast = smollm2.generate(ids, GenerationConfig(max_new_tokens=30, prompt_lookup=4, sampling=BANNED))
    assert "Paris" not in fast.text and fast.token_ids == plain.token_ids
