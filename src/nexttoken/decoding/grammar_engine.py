"""Constrained decoding, run: at each step the tokens that keep a sequence inside its grammar
(grammar.py) are the only ones the chain of processors (processors.py) lets through.

The engine is llguidance (Microsoft's, as llama.cpp and vLLM use it): it compiles a JSON Schema, a
regular expression or a Lark grammar against the model's tokenizer, and a matcher per sequence
answers with a token mask at each step, follows the tokens chosen, forks (a beam's copy of its
parent) and rolls back (rejected speculative guesses). Where the grammar leaves a single way on
(the keys and punctuation of a schema), the matcher names the forced tokens, which decoding
appends without a choice. Why llguidance and not xgrammar: docs/decoding.md."""

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import llguidance
import torch

from nexttoken.decoding.grammar import Grammar, first_line
from nexttoken.errors import InvalidGrammar, NextTokenError

# How JSON is written: one space after ':' and ',' as Python's json.dumps and OpenAI's examples do,
# and no other whitespace, so that the keys and punctuation a schema fixes are forced tokens. A
# schema's own "x-guidance" options override these.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

# What one grammar may cost, so that a pathological one is refused or bounded rather than stalling
# every row of a batch: llguidance's parser limits (fuel is ~14k units a millisecond for the
# lexer, ~20k Earley items a millisecond for the parser), halved from its defaults.
LIMITS = dict(step_lexer_fuel=100_000, step_max_items=25_000, initial_lexer_fuel=1_000_000,
              max_lexer_states=100_000, max_grammar_size=200_000)
MAX_SOURCE_CHARS = 1_000_000  # a grammar's text
BIT_VALUES = torch.tensor([1 << j for j in range(31)] + [-(1 << 31)], dtype=torch.int32)  # bit j of an int32 alone


def llguidance_grammar(grammar: Grammar) -> str:
    """The grammar in llguidance's own form (not yet checked)."""
    if len(grammar.source) > MAX_SOURCE_CHARS:
        raise InvalidGrammar(grammar.kind, f"the {grammar.kind} is longer than {MAX_SOURCE_CHARS:,} characters")
    if grammar.kind in ("json_schema", "json_object"):
        return llguidance.LLMatcher.grammar_from_json_schema(grammar.source, defaults=JSON_STYLE)
    if grammar.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(grammar.source)
    if grammar.kind == "choice":  # JSON's string escapes are Lark's
        return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(map(json.dumps, grammar.source)))
    return llguidance.LLMatcher.grammar_from_lark(grammar.source)


@functools.lru_cache(maxsize=8)
def grammar_tokenizer(tokenizer) -> llguidance.LLTokenizer:
    """llguidance's view of our tokenizer (a `tokenizers` backend, its vocabulary and end tokens);
    building it takes about half a second, so it is kept."""
    backend = getattr(tokenizer, "backend", None)
    if backend is None:
        raise NextTokenError("constrained decoding needs the model's own tokenizer")
    try:
        return llguidance.LLTokenizer(backend.to_str(), n_vocab=tokenizer.vocab_size, eos_token=list(tokenizer.end_ids))
    except Exception as exc:
        raise NextTokenError(f"constrained decoding cannot read this tokenizer: {first_line(exc)}") from None


@dataclass(frozen=True, eq=False)
class CompiledGrammar:
    """A grammar checked against a tokenizer: what each sequence's matcher starts from."""

    grammar: Grammar
    text: str  # llguidance's form
    tokenizer: llguidance.LLTokenizer

    def matcher(self) -> "GrammarMatcher":
        matcher = llguidance.LLMatcher(self.tokenizer, self.text, log_level=0, limits=parser_limits())
        return GrammarMatcher(matcher, self.tokenizer.vocab_size)


def parser_limits() -> llguidance.LLParserLimits:
    return llguidance.LLParserLimits(**LIMITS)


@functools.lru_cache(maxsize=256)
def compile_grammar(grammar: Grammar, tokenizer) -> CompiledGrammar:
    """Check `grammar` against `tokenizer` (ours) before any decoding: an error that names the
    parameter (`InvalidGrammar`) when the schema, pattern or grammar is wrong, uses what the
    engine does not support, or is beyond its limits."""
    if not isinstance(grammar, Grammar):
        raise InvalidGrammar("grammar", f"a grammar is a Grammar, got {type(grammar).__name__}")
    llg_tokenizer = grammar_tokenizer(tokenizer)
    try:
        text = llguidance_grammar(grammar)
    except ValueError as exc:
        raise InvalidGrammar(grammar.kind, f"invalid {grammar.kind}: {first_line(exc)}") from None
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(text, llg_tokenizer, limits=parser_limits())
    if failed:
        raise InvalidGrammar(grammar.kind, f"invalid {grammar.kind}: {_problem(messages[0])}")
    compiled = CompiledGrammar(grammar, text, llg_tokenizer)
    error = compiled.matcher().error
    if error:
        raise InvalidGrammar(grammar.kind, f"invalid {grammar.kind}: {_problem(error)}")
    return compiled


def _problem(message: str) -> str:
    """llguidance's message on one line: its first line, the detail its "error:" line gives, and
    the source line it points at."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return "rejected by the grammar engine"
    detail = next((line.removeprefix("error:").strip() for line in lines[1:] if line.startswith("error:")), "")
    quoted = next((line.split("|", 1)[1].strip() for line in lines[1:] if line.split("|", 1)[0].strip().isdigit()
                   and "|" in line), "")
    text = lines[0].rstrip(":") + (f": {detail}" if detail else "")
    return text + (f" (at {quoted!r})" if quoted else "")


class GrammarMatcher:
    """One sequence's place in its grammar. Every token decoding takes goes through `accept`."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._matcher = matcher
        self.vocab_size = vocab_size  # the tokenizer's, which the mask covers

    @property
    def error(self) -> str:
        return self._matcher.get_error()

    def fork(self) -> "GrammarMatcher":
        """An independent copy (a beam that continues its parent)."""
        return GrammarMatcher(self._matcher.deep_copy(), self.vocab_size)

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise NextTokenError(f"the grammar rejected token {token}: {first_line(self.error)}")

    def allows(self, tokens: Sequence[int]) -> int:
        """How many of `tokens`, taken in turn from here, the grammar allows (without taking them)."""
        return self._matcher.validate_tokens(list(tokens)) if tokens else 0

    def rollback(self, n_tokens: int) -> None:
        if n_tokens and not self._matcher.rollback(n_tokens):
            raise NextTokenError(f"the grammar could not take back {n_tokens} tokens")

    def forced(self) -> list[int]:
        """The tokens that must come next, whatever the model prefers ([] when it has a choice)."""
        return self._matcher.compute_ff_tokens()

    @property
    def complete(self) -> bool:
        """The text is whole and nothing may follow but an end token."""
        return self._matcher.is_stopped()

    @property
    def accepting(self) -> bool:
        """The text so far is whole (it may also go on)."""
        return self._matcher.is_accepting()


def allowed_tokens(matchers: Sequence[GrammarMatcher], vocab_size: int) -> torch.Tensor:
    """(B, vocab_size) bool: the tokens each matcher's grammar allows next. Tokens past the
    tokenizer's vocabulary (a larger output head) are never allowed. The rows are computed in turn
    on this thread: a mask takes microseconds, and llguidance's thread pool (LLExecutor) waited
    tens of milliseconds for its threads on a busy machine."""
    B, known = len(matchers), matchers[0].vocab_size
    bitmask = torch.empty(B, (known + 31) // 32, dtype=torch.int32)  # (B, W): bit j of word w is token 32 * w + j
    for row, matcher in enumerate(matchers):
        # llguidance writes the row's words in place (its llguidance.torch helper does the same, but
        # importing it imports torch._dynamo and the inductor: seconds of every start)
        words = bitmask[row]
        matcher._matcher.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * words.element_size())
        if matcher.error:  # past the parser's limits at this step: the job fails, the batch goes on
            raise InvalidGrammar("grammar", f"the grammar is too complex to follow: {_problem(matcher.error)}")
    allowed = (bitmask.unsqueeze(-1) & BIT_VALUES).ne(0)  # (B, W, 32): bit j of word w is token 32 * w + j
    allowed = allowed.view(B, -1)[:, : min(known, vocab_size)]  # (B, min(known, V))
    if allowed.shape[1] == vocab_size:
        return allowed
    return torch.nn.functional.pad(allowed, (0, vocab_size - allowed.shape[1]), value=False)
