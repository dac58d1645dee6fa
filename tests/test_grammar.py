"""Constrained decoding: grammars checked before decoding, the mask llguidance computes entering
our chain, and every mode of the engine keeping to the grammar."""

import json
import re
from dataclasses import replace

import jsonschema
import pytest
import torch

from nexttoken.decoding.config import GenerationConfig, SamplingConfig
from nexttoken.decoding.engine import Engine
from nexttoken.decoding.grammar import Grammar
from nexttoken.decoding.grammar_engine import allowed_tokens, compile_grammar
from nexttoken.decoding.groups import Job
from nexttoken.decoding.outputs import Completion
from nexttoken.errors import InvalidGrammar, InvalidOption
from nexttoken.config import ModelConfig
from nexttoken.model.transformer import Transformer
from nexttoken.pretrained import LanguageModel
from schema_suite import EIGHT_KEYS, SCHEMAS


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return smollm2.tokenizer


@pytest.mark.parametrize("make, parameter, says", [
    (lambda: Grammar.json_schema("{not json"), "json_schema", "not valid JSON"),
    (lambda: Grammar.json_schema({"type": "foo"}), "json_schema", "Invalid type"),
    (lambda: Grammar.json_schema({"type": "string", "pattern": "(?=a)b"}), "json_schema", "look-around"),
    (lambda: Grammar.json_schema({"properties": {"a": {"$ref": "#/nowhere"}}}), "json_schema", "nowhere"),
    (lambda: Grammar.regex("(a"), "regex", "unclosed group"),
    (lambda: Grammar.regex(""), "regex", "empty"),
    (lambda: Grammar.lark("start: x"), "lark", "unknown name"),
    (lambda: Grammar.choice([]), "choice", "one or more"),
    (lambda: Grammar.choice("yes"), "choice", "one or more"),
])
def test_a_bad_grammar_is_one_line_naming_its_parameter(tokenizer, make, parameter, says):
    with pytest.raises(InvalidGrammar) as error:
        compile_grammar(make(), tokenizer)
    assert error.value.parameter == parameter and isinstance(error.value, InvalidOption)
    assert says in str(error.value) and "\n" not in str(error.value)


def test_a_schema_of_thousands_of_levels_is_refused(tokenizer):
    deep = {"type": "object"}
    for _ in range(3000):
        deep = {"type": "object", "properties": {"a": deep}, "required": ["a"]}
    with pytest.raises(InvalidGrammar, match="recursion"):
        compile_grammar(Grammar.json_schema(deep), tokenizer)


def test_the_config_takes_only_a_grammar():
    assert GenerationConfig(grammar=Grammar.regex("[0-9]+")).grammar.kind == "regex"
    with pytest.raises(InvalidOption, match="Grammar"):
        GenerationConfig(grammar="[0-9]+")


def test_forced_tokens_and_the_mask(tokenizer):
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    matcher = compile_grammar(Grammar.json_schema(schema), tokenizer).matcher()
    forced = matcher.forced()
    assert tokenizer.decode(forced) == '{"name":'  # the space and quote may start a longer token: the model's choice
    for token in forced:
        matcher.accept(token)
    allowed = allowed_tokens([matcher], 49152)[0].nonzero()[:, 0].tolist()
    texts = [tokenizer.decode([token]) for token in allowed]
    assert ' "' in texts and all(text == " " or text.startswith(' "') for text in texts)


# decoding under grammars: the schema suite on a tiny random model with SmolLM2's tokenizer (it
# prefers nothing a schema wants, so only the mask keeps it valid, and its steps cost little),
# mixed batches and forced runs on the real model

@pytest.fixture(scope="module")
def tiny_lm(smollm2) -> LanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=smollm2.tokenizer.vocab_size, d_model=32, n_layer=2, n_head=4, n_kv_head=2,
                         d_ff=64, max_seq_len=512)
    return LanguageModel(Transformer(config).eval(), smollm2.tokenizer, smollm2.path)


def run_jobs(lm, jobs: list[Job]) -> list[Completion]:
    """The jobs in one engine, decoded together (each its own group, with its own grammar or
    none); each job's first completion."""
    engine = Engine(lm.model, lm.tokenizer, lm.end_ids, lm.pad_id, lm.step, encode=lm.text_ids)
    groups = engine.add(jobs)
    engine.run()
    return [group.results()[0][0] for group in groups]


def suite_jobs(lm, config: GenerationConfig, schemas=SCHEMAS) -> list[Job]:
    return [Job([lm.encode(request + " Answer in JSON.", chat=True)], replace(config, grammar=Grammar.json_schema(schema)))
            for request, schema in schemas]


def assert_valid(completions: list[Completion], schemas=SCHEMAS) -> None:
    for completion, (request, schema) in zip(completions, schemas):
        assert completion.finish_reason == "eos", (request, completion.text)
        jsonschema.validate(json.loads(completion.text), schema)


SUITE_BUDGET = 128  # tokens: every schema of the suite is complete within it, whatever the model prefers


@pytest.mark.parametrize("mode", [
    GenerationConfig(max_new_tokens=SUITE_BUDGET),
    GenerationConfig(max_new_tokens=SUITE_BUDGET, sampling=SamplingConfig(temperature=1.0, seed=7)),
    GenerationConfig(max_new_tokens=SUITE_BUDGET, num_beams=2, early_stopping=True),
], ids=["greedy", "sampling", "beam"])
def test_every_output_of_the_schema_suite_validates(tiny_lm, mode):
    """All schemas of the suite as one batch of jobs, each with its own grammar."""
    assert len(SCHEMAS) >= 30
    assert_valid(run_jobs(tiny_lm, suite_jobs(tiny_lm, mode)))


def test_a_batch_of_eight_with_mixed_grammars_and_none(tiny_lm):
    """Rows of one batch with different grammars and none: each row keeps to its own, and the
    rows without one decode as they would alone."""
    config = GenerationConfig(max_new_tokens=SUITE_BUDGET)
    free = [tiny_lm.encode(text, chat=True) for text in ("Say hi.", "Name a colour.")]
    constrained = SCHEMAS[:4]
    jobs = suite_jobs(tiny_lm, config, constrained)
    jobs += [Job([free[0]], replace(config, max_new_tokens=16)),
             Job([tiny_lm.encode("Yes or no?", chat=True)], replace(config, grammar=Grammar.choice(["yes", "no"]))),
             Job([free[1]], replace(config, max_new_tokens=16)),
             Job([tiny_lm.encode("A year:", chat=True)], replace(config, grammar=Grammar.regex("(19|20)[0-9]{2}")))]
    results = run_jobs(tiny_lm, jobs)
    assert len(results) == 8
    assert_valid(results[:4], constrained)
    assert results[5].text in ("yes", "no") and re.fullmatch("(19|20)[0-9]{2}", results[7].text)
    for prompt, completion in zip(free, (results[4], results[6])):
        assert completion.token_ids == tiny_lm.generate(prompt, replace(config, max_new_tokens=16)).token_ids


def test_forced_tokens_fed_together_give_the_tokens_of_one_by_one(smollm2, tiny_lm):
    """Forced runs fed in one pass choose the same tokens as constrained greedy decoding that feeds
    every token alone, and so does speculative decoding under the grammar: on the real model, and
    on the tiny one in a batch whose rows force runs of different lengths (a padded block)."""
    one_by_one = GenerationConfig(max_new_tokens=SUITE_BUDGET, forced_together=False)
    together = replace(one_by_one, forced_together=True)
    for lm, schemas in ((smollm2, [SCHEMAS[7]]), (tiny_lm, [("Eight digits.", EIGHT_KEYS), *SCHEMAS[:7]])):
        alone = run_jobs(lm, suite_jobs(lm, one_by_one, schemas))
        fed_together = run_jobs(lm, suite_jobs(lm, together, schemas))
        [speculative] = run_jobs(lm, suite_jobs(lm, replace(together, prompt_lookup=3), schemas[:1]))
        assert [c.token_ids for c in fed_together] == [c.token_ids for c in alone]
        assert speculative.token_ids == alone[0].token_ids
        assert sum(step.forced for step in fed_together[0].steps) >= 4 and not any(step.forced for step in alone[0].steps)
        assert_valid(fed_together, schemas)


def test_a_budget_too_small_ends_with_length_and_a_valid_prefix(smollm2):
    grammar = Grammar.json_schema(EIGHT_KEYS)
    completion = smollm2.generate(smollm2.encode("Digits:", chat=True), GenerationConfig(max_new_tokens=9, grammar=grammar))
    assert completion.finish_reason == "length" and len(completion.token_ids) == 9
    matcher = compile_grammar(grammar, smollm2.tokenizer).matcher()
    assert matcher.allows(completion.token_ids) == 9 and completion.text.startswith('{"alpha": ')


def test_streaming_under_a_grammar_streams_the_whole_text(smollm2):
    pieces = []
    completion = smollm2.generate(smollm2.encode("Pick a colour.", chat=True),
                                  GenerationConfig(max_new_tokens=16, grammar=Grammar.json_schema(SCHEMAS[2][1])),
                                  on_text=pieces.append)
    assert "".join(pieces) == completion.text and json.loads(completion.text)["colour"] in ("red", "green", "blue")


GRAMMARS = [Grammar.regex("[a-c]{1,3}(x|yz)?"), Grammar.choice(["north", "south", "south-east"]),
            Grammar.lark('start: "(" item ("," item)* ")"\nitem: /[0-9]/ | "x"')]


def test_the_mask_is_what_llguidance_allows_token_by_token(smollm2):
    """At each step of a path through each grammar, the (B, V) mask that enters the chain, for
    rows of different grammars together, is llguidance's own per-token answer (its byte-per-token
    logit bias, computed apart for each row), and every token it allows passes llguidance's check
    of that token alone; the end tokens, where the text is whole. (The check takes more: where the grammar forces the rest of a word, the
    mask keeps its canonical tokens only.)"""
    tokenizer, V = smollm2.tokenizer, smollm2.tokenizer.vocab_size
    matchers = [compile_grammar(grammar, tokenizer).matcher() for grammar in GRAMMARS]
    for _ in range(4):
        allowed = allowed_tokens(matchers, V)  # (3, V)
        for row, matcher in zip(allowed, matchers):
            own = torch.frombuffer(bytearray(matcher._matcher.compute_logit_bias()), dtype=torch.uint8)[:V] > 0
            assert torch.equal(row, own)
            tokens = set(row.nonzero()[:, 0].tolist())
            assert all(matcher.allows([token]) == 1 for token in tokens - set(tokenizer.end_ids))
            assert (set(tokenizer.end_ids) <= tokens) == matcher.accepting  # an end token where the text is whole
        for row, matcher in zip(allowed, matchers):
            choices = [token for token in row.nonzero()[:, 0].tolist() if token not in tokenizer.end_ids]
            if choices:
                matcher.accept(choices[0])


def test_the_grammar_wins_over_constraints_that_leave_no_token(smollm2):
    """min_new_tokens bans the end token a complete choice demands: the row ends all the same."""
    config = GenerationConfig(max_new_tokens=8, grammar=Grammar.choice(["yes"]), forced_together=False,
                              sampling=SamplingConfig(min_new_tokens=5))
    completion = smollm2.generate(smollm2.encode("Agree?", chat=True), config)
    assert completion.text == "yes" and completion.finish_reason == "eos"


def test_a_bad_grammar_fails_its_job_alone_before_decoding(smollm2):
    engine = Engine(smollm2.model, smollm2.tokenizer, smollm2.end_ids, smollm2.pad_id, isolate_failures=True)
    failures = []
    bad = Job([[1, 2, 3]], GenerationConfig(max_new_tokens=2, grammar=Grammar.regex("(a")), on_error=failures.append)
    good = Job([[1, 2, 3]], GenerationConfig(max_new_tokens=2))
    groups = engine.add([bad, good])
    engine.run()
    assert len(groups) == 1 and groups[0].job is good
    assert isinstance(failures[0], InvalidGrammar) and failures[0].parameter == "regex"


def test_compacting_a_padded_cache_keeps_the_next_scores():
    """Rows that fed fewer tokens than others leave padding between their tokens; moved out of
    the way, the same keys give the same scores."""
    torch.manual_seed(3)
    model = Transformer(ModelConfig(vocab_size=32, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=64, max_seq_len=64))
    cache = model.new_cache(batch_size=2, capacity=32)
    model.next_scores(torch.tensor([[5, 6, 7], [0, 8, 9]]), cache, torch.tensor([[True] * 3, [False, True, True]]))
    model.next_scores(torch.tensor([[0, 0, 10], [11, 12, 13]]), cache, torch.tensor([[False, False, True], [True] * 3]))
    before = model.next_scores(torch.tensor([[14], [15]]), cache)
    cache.truncate(cache.length - 1)
    cache.compact()
    assert cache.length == 5
    torch.testing.assert_close(model.next_scores(torch.tensor([[14], [15]]), cache), before)
