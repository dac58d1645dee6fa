"""Beam search on SmolLM2 against transformers' generate: same beams, same sequence scores."""

import pytest
import torch

from nexttoken.decoding.config import GenerationConfig
from nexttoken.errors import NextTokenError

SCORE_TOLERANCE = 1e-4
NEAR_TIE = 1e-3
PROMPT = "What is 2+2?"  # short answers that end at different lengths: early stopping and length penalty matter
MAX_NEW = 24


def reference_beams(reference_model, lm, ids, **options):
    with torch.inference_mode():
        out = reference_model.generate(torch.tensor([ids]), do_sample=False, eos_token_id=list(lm.end_ids),
                                       pad_token_id=lm.tokenizer.pad_id, output_scores=True,
                                       return_dict_in_generate=True, **options)
    sequences = []
    for row in out.sequences[:, len(ids):].tolist():
        ends = [i for i, token in enumerate(row) if token in lm.end_ids]
        sequences.append(row[: ends[0] + 1] if ends else row)
    return sequences, out.sequences_scores.tolist()


def our_beams(lm, ids, config):
    completions = lm.generate_batch([ids], config)[0]
    sequences = [c.token_ids + ([c.steps[-1].chosen.token_id] if c.finish_reason == "eos" else []) for c in completions]
    return sequences, [c.score for c in completions]


@pytest.mark.parametrize("length_penalty", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("early_stopping", [True, False, "never"])
def test_beams_match_reference(smollm2, reference_model, length_penalty, early_stopping):
    ids = smollm2.encode(PROMPT, chat=True)
    config = GenerationConfig(max_new_tokens=MAX_NEW, num_beams=4, num_return_sequences=3,
                              length_penalty=length_penalty, early_stopping=early_stopping)
    ours, our_scores = our_beams(smollm2, ids, config)
    theirs, their_scores = reference_beams(reference_model, smollm2, ids, max_new_tokens=MAX_NEW, num_beams=4,
                                           num_return_sequences=3, length_penalty=length_penalty,
                                           early_stopping=early_stopping)
    # no near-ties among the returned beams (in summed log-probability), so their order is not down to rounding
    sums = [score * len(seq) ** length_penalty for score, seq in zip(their_scores, theirs)]
    assert all(abs(a - b) > NEAR_TIE for a, b in zip(sums, sums[1:]))
    assert ours == theirs
    assert our_scores == pytest.approx(their_scores, abs=SCORE_TOLERANCE)


def test_beam_scores_are_length_penalised_log_probabilities(smollm2):
    ids = smollm2.encode(PROMPT, chat=True)
    config = GenerationConfig(max_new_tokens=MAX_NEW, num_beams=3, length_penalty=2.0)
    best = smollm2.generate_batch([ids], config)[0][0]
    total = sum(step.chosen.logprob for step in best.steps)
    assert best.score == pytest.approx(total / len(best.steps) ** 2.0, abs=1e-5)


def test_batched_beam_search_equals_one_prompt_at_a_time(smollm2):
    prompts = [smollm2.encode(PROMPT, chat=True), smollm2.encode("The capital of France is")]
    config = GenerationConfig(max_new_tokens=12, num_beams=3, num_return_sequences=2)
    together = smollm2.generate_batch(prompts, config)
    alone = [smollm2.generate_batch([p], config)[0] for p in prompts]
    for batch_result, single_result in zip(together, alone):
        assert [c.token_ids for c in batch_result] == [c.token_ids for c in single_result]
        assert [c.score for c in batch_result] == pytest.approx([c.score for c in single_result], abs=1e-4)


def test_beams_can_be_watched(smollm2):
    seen = []
    config = GenerationConfig(max_new_tokens=6, num_beams=3)
    smollm2.generate_batch([smollm2.encode("The capital of France is")], config,
                           on_beams=lambda prompt, step, running, finished: seen.append((step, running, finished)))
    assert [step for step, _, _ in seen] == list(range(len(seen))) and len(seen) >= 1
    assert all(len(running) == 3 for _, running, _ in seen[:-1])
    _, last_running, last_finished = seen[-1]
    assert last_running == [] and len(last_finished) == 3  # at the length limit every beam ends
    step, running, _ = seen[1]
    assert all(len(beam.token_ids) == 2 for beam in running)
    assert [b.score for b in running] == sorted((b.score for b in running), reverse=True)


@pytest.mark.parametrize("options, message", [
    (dict(num_beams=2, num_return_sequences=3), r"num_return_sequences \(3\) must be <= num_beams \(2\)"),
    (dict(num_beams=0), "num_beams must be >= 1"),
    (dict(num_beams=2, early_stopping="sometimes"), "early_stopping must be true, false or 'never'"),
    (dict(num_return_sequences=2), "num_return_sequences > 1 needs sampling"),
])
def test_bad_beam_options(options, message):
    with pytest.raises(NextTokenError, match=message):
        GenerationConfig(**options)
