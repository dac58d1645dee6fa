"""Our Transformer on the real SmolLM2-135M-Instruct weights against Hugging Face transformers."""

import inspect
import argparse, bisect, collections, difflib, functools, heapq, textwrap

import pytest
import torch

from nexttoken.decoding.config import GenerationConfig

LOGIT_TOLERANCE = 1e-3
NEAR_TIE = 1e-3


def long_text(tokenizer, n_tokens: int = 1000) -> str:
    """About 1,000 tokens of English prose: the documentation of a few standard-library modules."""
    prose = "\n\n".join(inspect.getdoc(m) for m in (argparse, difflib, heapq, bisect, collections, functools, textwrap))
    for module in (collections.OrderedDict, functools.partial, textwrap.TextWrapper, difflib.SequenceMatcher):
        prose += "\n\n" + inspect.getdoc(module)
    ids = tokenizer.encode(prose)
    assert len(ids) >= n_tokens
    return tokenizer.decode(ids[:n_tokens])


def prompts(tokenizer) -> dict[str, str]:
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"},
         {"role": "assistant", "content": "The capital of France is Paris."},
         {"role": "user", "content": "And of Germany?"}],
        add_generation_prompt=True,
    )
    return {
        "english": "The quick brown fox jumps over the lazy dog. Once upon a time, there was",
        "chinese": "人工智能是计算机科学的一个分支，它试图理解智能的实质，并生产出一种新的",
        "code": "def fibonacci(n: int) -> int:\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n",
        "chat": chat,
        "long": long_text(tokenizer),
    }


@pytest.fixture(scope="module")
def prompt_ids(smollm2):
    return {name: smollm2.tokenizer.encode(text) for name, text in prompts(smollm2.tokenizer).items()}


@pytest.mark.parametrize("name", ["english", "chinese", "code", "chat", "long"])
def test_logits_match_reference(smollm2, reference_model, prompt_ids, name):
    ids = torch.tensor([prompt_ids[name]])
    with torch.inference_mode():
        ours = smollm2.model(ids)
        theirs = reference_model(ids).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= LOGIT_TOLERANCE
    assert torch.equal(ours.topk(10, dim=-1).indices, theirs.topk(10, dim=-1).indices)


def test_long_prompt_is_long(prompt_ids):
    assert len(prompt_ids["long"]) == 1000


def agreed_prefix(theirs: list[int], their_scores: list[torch.Tensor]) -> int:
    """How many tokens must agree: all, or up to the first step where the reference's two best
    scores are within NEAR_TIE of each other (there either choice is right)."""
    for step, scores in enumerate(their_scores):
        best_two = scores.topk(2).values
        if (best_two[0] - best_two[1]).item() < NEAR_TIE:
            return step
    return len(theirs)


GREEDY_PROMPTS = {
    "story": ("The quick brown fox jumps over the lazy dog. Once upon a time, there was", False),
    "code": ("def fibonacci(n: int) -> int:\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n", False),
    "chat-explain": ("Explain what a language model does in one sentence.", True),
    "chat-haiku": ("Write a haiku about the sea.", True),
}


@pytest.mark.parametrize("name", GREEDY_PROMPTS)
def test_greedy_generation_matches_reference(smollm2, reference_model, name):
    text, chat = GREEDY_PROMPTS[name]
    ids = smollm2.encode(text, chat=chat)
    completion = smollm2.generate(ids, GenerationConfig(max_new_tokens=64))
    with torch.inference_mode():
        out = reference_model.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False,
                                       eos_token_id=list(smollm2.end_ids), pad_token_id=smollm2.tokenizer.pad_id,
                                       output_logits=True, return_dict_in_generate=True)
    theirs = out.sequences[0, len(ids):].tolist()
    ended = completion.finish_reason == "eos"
    ours = completion.token_ids + ([theirs[len(completion.token_ids)]] if ended else [])
    n = agreed_prefix(theirs, [scores[0] for scores in out.logits])
    assert n >= 16, f"near-tie after only {n} tokens: choose another prompt"
    assert ours[:n] == theirs[:n]
    if n == len(theirs):
        assert ours == theirs
    if ended:
        assert ours[-1] in smollm2.end_ids


def test_generation_without_cache_is_identical(smollm2, prompt_ids):
    """Greedy with the KV cache against recomputing the whole sequence at every step."""
    ids = prompt_ids["chat"]
    cached = smollm2.generate(ids, GenerationConfig(max_new_tokens=32)).token_ids
    sequence = list(ids)
    with torch.inference_mode():
        for _ in range(len(cached)):
            sequence.append(int(smollm2.model(torch.tensor([sequence]))[0, -1].argmax()))
    assert sequence[len(ids):] == cached
