"""Constrained decoding: grammars checked before decoding, the mask llguidance computes entering
our chain, and every mode of the engine keeping to the grammar."""

import pytest

from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.grammar import Grammar, allowed_tokens, compile_grammar
from nexttoken.errors import InvalidGrammar, InvalidOption


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
