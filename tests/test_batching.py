"""Batches: left-padded prompts of different lengths, per-row positions and stopping, shared prefills."""

import pytest
import torch

from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.config import SamplingConfig
from nexttoken.loaders.gguf import load_gguf_model
from tiny_gguf import tiny_llama, write_llama_gguf

ANSWERED = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nThe capital of France is Paris."


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    reference = tiny_llama(tie=False)
    model, _ = load_gguf_model(write_llama_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", reference))
    return model, reference


def padded(rows: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    return ids, mask


def test_padded_batch_matches_each_row_alone_and_transformers(tiny_pair):
    model, reference = tiny_pair
    g = torch.Generator().manual_seed(3)
    rows = [torch.randint(1, 96, (n,), generator=g).tolist() for n in (17, 5, 11)]
    ids, mask = padded(rows)
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    with torch.inference_mode():
        batch = model(ids, mask=mask)
        theirs = reference(ids, attention_mask=mask.long(), position_ids=positions).logits
        for i, row in enumerate(rows):
            alone = model(torch.tensor([row]))[0]
            torch.testing.assert_close(batch[i, -len(row):], alone, rtol=0, atol=1e-5)
            torch.testing.assert_close(batch[i, -len(row):], theirs[i, -len(row):], rtol=0, atol=1e-5)


def test_padded_batch_with_cache_matches_full_forward(tiny_pair):
    model, _ = tiny_pair
    g = torch.Generator().manual_seed(4)
    rows = [torch.randint(1, 96, (n,), generator=g).tolist() for n in (9, 3)]
    ids, mask = padded(rows)
    more = torch.randint(1, 96, (2, 6), generator=g)
    with torch.inference_mode():
        full = model(torch.cat([ids, more], 1), mask=torch.cat([mask, torch.ones(2, 6, dtype=torch.bool)], 1))
        cache = model.new_cache(batch_size=2, capacity=15)
        steps = [model(ids, cache, mask=mask)] + [model(more[:, t : t + 1], cache) for t in range(6)]
    stepwise = torch.cat(steps, 1)  # (2, 15, V)
    real = torch.cat([mask, torch.ones(2, 6, dtype=torch.bool)], 1)
    torch.testing.assert_close(stepwise[real], full[real], rtol=0, atol=1e-5)


def test_a_prefill_of_the_last_position_only_gives_its_scores_and_caches_every_position(tiny_pair):
    model, _ = tiny_pair
    g = torch.Generator().manual_seed(5)
    ids, mask = padded([torch.randint(1, 96, (n,), generator=g).tolist() for n in (8, 3)])
    with torch.inference_mode():
        whole, last = model.new_cache(batch_size=2, capacity=9), model.new_cache(batch_size=2, capacity=9)
        every_position = model(ids, whole, mask=mask)
        scores = model.next_scores(ids, last, mask)  # the last block goes on with the last position only
        torch.testing.assert_close(scores, every_position[:, -1], rtol=0, atol=1e-5)
        for mine, theirs in zip(last.keys + last.values, whole.keys + whole.values):
            assert torch.equal(mine, theirs)
        step = torch.tensor([[7], [9]])
        torch.testing.assert_close(model.next_scores(step, last), model.next_scores(step, whole), rtol=0, atol=1e-5)


def test_mixed_length_batch_gives_the_same_tokens_as_each_prompt_alone(smollm2):
    prompts = [smollm2.encode("What is 2+2?", chat=True), smollm2.encode("The capital of France is"),
               smollm2.encode("def fibonacci(n):\n")]
    config = GenerationConfig(max_new_tokens=20)
    together = smollm2.generate_batch(prompts, config)
    for prompt, [batched] in zip(prompts, together):
        alone = smollm2.generate(prompt, config)
        assert batched.token_ids == alone.token_ids and batched.finish_reason == alone.finish_reason
        assert batched.text == alone.text
    assert together[0][0].finish_reason == "eos" and together[1][0].finish_reason == "length"  # each row stops alone


def test_samples_of_one_prompt_share_one_prefill(smollm2, monkeypatch):
    widths = []
    forward = smollm2.model.hidden_states
    monkeypatch.setattr(smollm2.model, "hidden_states", lambda ids, *a, **k: widths.append(ids.shape) or forward(ids, *a, **k))
    config = GenerationConfig(max_new_tokens=8, num_return_sequences=4, sampling=SamplingConfig(temperature=1.0, seed=11))
    [samples] = smollm2.generate_batch([smollm2.encode("Once upon a time")], config)
    monkeypatch.undo()
    assert widths[0] == (1, 4) and all(shape == (4, 1) for shape in widths[1:])  # one prefill row, then 4 rows
    assert len(samples) == 4 and len({tuple(s.token_ids) for s in samples}) > 1
    [again] = smollm2.generate_batch([smollm2.encode("Once upon a time")], config)
    assert [s.token_ids for s in again] == [s.token_ids for s in samples]


def test_prompt_whose_first_prediction_is_the_end_token(smollm2):
    ids = smollm2.tokenizer.encode(ANSWERED)
    completion = smollm2.generate(ids, GenerationConfig(max_new_tokens=10))
    assert completion.finish_reason == "eos" and completion.token_ids == [] and completion.text == ""
    assert completion.steps[0].chosen.token_id in smollm2.end_ids


def test_min_new_tokens_suppresses_the_end_token(smollm2):
    ids = smollm2.tokenizer.encode(ANSWERED)
    config = GenerationConfig(max_new_tokens=12, sampling=SamplingConfig(min_new_tokens=3))
    completion = smollm2.generate(ids, config)
    assert len(completion.token_ids) >= 3
    assert not set(completion.token_ids[:3]) & set(smollm2.end_ids)


def test_logprobs_of_each_step(smollm2):
    ids = smollm2.encode("The capital of France is")
    completion = smollm2.generate(ids, GenerationConfig(max_new_tokens=4, top_logprobs=5))
    with torch.inference_mode():
        logits = smollm2.model(torch.tensor([ids + completion.token_ids]))[0, len(ids) - 1 :].log_softmax(-1)
    for n, step in enumerate(completion.steps):
        assert step.chosen.token_id == completion.token_ids[n]
        assert step.chosen.logprob == pytest.approx(logits[n, step.chosen.token_id].item(), abs=1e-4)
        assert [c.token_id for c in step.top] == logits[n].topk(5).indices.tolist()
        assert step.top[0].token_id == step.chosen.token_id  # greedy takes the best
