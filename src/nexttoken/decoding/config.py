"""How to decode, declared once: two frozen dataclasses whose fields carry their help text, their
bounds and their names on the command line and on the wire (`Option`). The CLI's options
(cli_options.py) and the server's request fields (serve/protocol.py) are derived from them, and
every value is checked here, on creation, with an error that names the option."""

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

from nexttoken.decoding.grammar import Grammar
from nexttoken.errors import InvalidOption

KEEP_NAME = "="  # an Option's flag or wire name that is the field's own name
OURS = object()  # an Option's wire default that is the field's own default


@dataclass(frozen=True)
class Option:
    """One decoding setting's declaration. Bounds are checked for every value; `wire_high` is a
    tighter upper bound that only the HTTP API applies (OpenAI's ranges)."""

    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the bound itself is excluded
    high_open: bool = False
    neutral: str = ""  # what the neutral value means, said in errors: "0 means greedy"
    flag: str | None = KEEP_NAME  # the CLI's --flag (KEEP_NAME: the field's name, dashed); None: no option
    parse: Callable[[str], Any] | None = None  # CLI text -> value, where the type alone cannot say
    wire: str | None = None  # the request field in the HTTP API (KEEP_NAME: the field's name); None: not there
    wire_default: Any = OURS  # OpenAI's default, where it differs from ours
    wire_high: float | None = None


def option(default: Any, help: str, **declared: Any) -> Any:
    """A dataclass field with its Option; mutable defaults (dicts) are copied per instance."""
    metadata = {"option": Option(help, **declared)}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), hash=False, metadata=metadata)
    return field(default=default, metadata=metadata)


def options_of(cls: type) -> dict[str, Option]:
    return {f.name: f.metadata["option"] for f in fields(cls) if "option" in f.metadata}


def bounds_text(spec: Option) -> str:
    """'>= 0', 'in (0, 1]', ..., as errors state a bound."""
    if spec.low is not None and spec.high is not None:
        return f"in {'(' if spec.low_open else '['}{spec.low}, {spec.high}{')' if spec.high_open else ']'}"
    if spec.low is not None:
        return f"{'>' if spec.low_open else '>='} {spec.low}"
    return f"{'<' if spec.high_open else '<='} {spec.high}"


def within(value: float, spec: Option) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False  # nan compares false both ways; inf is no setting anyone means
    low_ok = spec.low is None or (value > spec.low if spec.low_open else value >= spec.low)
    high_ok = spec.high is None or (value < spec.high if spec.high_open else value <= spec.high)
    return low_ok and high_ok


def check_bounds(config: object) -> None:
    """Every bounded option of `config` within its bounds, or an error that names it."""
    for name, spec in options_of(type(config)).items():
        value = getattr(config, name)
        if (spec.low is not None or spec.high is not None) and value is not None and not within(value, spec):
            neutral = f" ({spec.neutral})" if spec.neutral else ""
            raise InvalidOption(name, f"{name} must be {bounds_text(spec)}{neutral}, got {value}")


def is_token_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_bias(pair: str) -> tuple[int, float]:
    token, _, value = pair.partition(":")
    try:
        return int(token), float(value)
    except ValueError:
        raise InvalidOption("logit_bias", f"--logit-bias takes ID:BIAS, e.g. 1234:-5.0; got {pair!r}") from None


def parse_early_stopping(value: str) -> bool | str:
    choices = {"true": True, "false": False, "never": "never"}
    if value.lower() not in choices:
        raise InvalidOption("early_stopping", f"--early-stopping takes true, false or never; got {value!r}")
    return choices[value.lower()]


@dataclass(frozen=True)
class SamplingConfig:
    """How each step's scores become a token: the warpers of the processor chain (processors.py,
    temperature to typical_p) and its constraints and penalties (the rest). New fields go last, so
    that positional construction keeps its meaning."""

    temperature: float = option(0.0, "Sampling temperature; 0 picks the most likely token (greedy).", low=0,
                                neutral="0 means greedy", wire=KEEP_NAME, wire_default=1.0, wire_high=2)
    top_k: int = option(0, "Sample only among the K most likely tokens (0: all).", low=0, neutral="0 means no limit",
                        wire=KEEP_NAME)
    top_p: float = option(1.0, "Sample only among the most likely tokens whose probabilities add up to P.", low=0,
                          high=1, low_open=True, wire=KEEP_NAME)
    seed: int | None = option(None, "Seed for sampling, for reproducible output.", wire=KEEP_NAME)
    min_p: float = option(0.0, "Drop tokens less likely than P times the most likely one.", low=0, high=1,
                          wire=KEEP_NAME)
    typical_p: float = option(1.0, "Locally typical sampling: keep the most typical tokens up to mass P.", low=0,
                              high=1, low_open=True, wire=KEEP_NAME)
    repetition_penalty: float = option(1.0, "Divide the scores of tokens already seen by this (>1 repeats less).",
                                       low=0, low_open=True, neutral="1 means off", wire=KEEP_NAME)
    presence_penalty: float = option(0.0, "Subtract this from tokens already generated (OpenAI style, -2..2).",
                                     low=-2, high=2, wire=KEEP_NAME)
    frequency_penalty: float = option(0.0, "Subtract this times the count of each generated token (-2..2).",
                                      low=-2, high=2, wire=KEEP_NAME)
    no_repeat_ngram_size: int = option(0, "Never repeat an n-gram of this size (0: off).", low=0,
                                       neutral="0 means off", flag="no-repeat-ngram", wire=KEEP_NAME)
    logit_bias: Mapping[int, float] = option({}, "ID:BIAS added to a token's score (repeatable).",
                                             parse=parse_bias, wire=KEEP_NAME)
    banned_ids: tuple[int, ...] = option((), "A token id that may never be chosen (repeatable).", flag="ban",
                                         wire=KEEP_NAME)
    min_new_tokens: int = option(0, "Suppress the end token until this many tokens are generated.", low=0,
                                 wire="min_tokens")  # vLLM's name
    ban_text: tuple[str, ...] = option((), "Text the model may never write: its tokens, with or without a leading "
                                           "space, are banned as sequences (repeatable).", wire=KEEP_NAME)

    def __post_init__(self) -> None:
        # private read-only copies: the caller's dict or list must not change a frozen config
        object.__setattr__(self, "logit_bias", MappingProxyType(dict(self.logit_bias)))
        object.__setattr__(self, "banned_ids", tuple(self.banned_ids))
        object.__setattr__(self, "ban_text", tuple(self.ban_text))
        check_bounds(self)
        for token, bias in self.logit_bias.items():
            if not is_token_id(token):
                raise InvalidOption("logit_bias", f"logit_bias keys must be token ids (integers >= 0), got {token!r}")
            if not (isinstance(bias, int | float) and -100 <= bias <= 100):
                raise InvalidOption("logit_bias", f"logit_bias values must be in [-100, 100], got {bias} for token {token}")
        for token in self.banned_ids:
            if not is_token_id(token):
                raise InvalidOption("banned_ids", f"banned_ids must be token ids (integers >= 0), got {token!r}")
        if any(not isinstance(text, str) or not text for text in self.ban_text):
            raise InvalidOption("ban_text", "ban_text takes non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalized(self) -> bool:
        """Whether a penalty is on: speculative decoding promises plain greedy's tokens, with bans
        and biases but no penalties."""
        return self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0


@dataclass(frozen=True)
class GenerationConfig:
    """What to generate: the budget and stop rules, the sampling settings, and the search."""

    max_new_tokens: int = option(256, "Stop after this many new tokens.", low=1, wire="max_tokens", wire_default=None)
    stop_strings: tuple[str, ...] = option((), "Stop when this text appears (repeatable).", flag="stop", wire="stop")
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    num_beams: int = option(1, "Beam search with this many beams (1: no beam search).", low=1, flag="beams",
                            wire=KEEP_NAME, wire_high=8)
    length_penalty: float = option(1.0, "Beam scores are divided by length ** this (>0 favours longer).",
                                   wire=KEEP_NAME)
    early_stopping: bool | Literal["never"] = option(
        False, "Beam search stops: 'true' when num_beams have ended, 'false' when no better one is likely, "
               "'never' when none can be better.", parse=parse_early_stopping)
    num_return_sequences: int = option(1, "How many sequences to return (samples, or the n best beams).", low=1,
                                       wire="n", wire_high=8)
    top_logprobs: int = option(0, "Alternatives recorded at each step, beside the chosen token.", low=0, flag=None)
    prompt_lookup: int = option(0, "Speculative greedy decoding: draft up to N tokens from repeats in the context, "
                                   "verify them in one pass (0: off).", low=0, neutral="0 means off", wire=KEEP_NAME)
    draft_tokens: int = option(0, "With --draft: how many tokens the draft model guesses per pass (0: 4).", low=0,
                               neutral="0 means off")
    # the CLI's --json-schema, --regex, ... and the server's response_format and tools build it
    grammar: Grammar | None = option(None, "What the text must match: a JSON Schema, any JSON object, a regular "
                                           "expression, a choice of strings or a Lark grammar.", flag=None, wire=None)
    forced_together: bool = option(True, "Feed the tokens a grammar forces (a schema's keys and punctuation) "
                                          "through the model together, in one pass.", flag=None, wire=None)

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise InvalidOption("num_return_sequences", f"num_return_sequences ({self.num_return_sequences}) must be "
                                                        f"<= num_beams ({self.num_beams})")
        if self.num_beams == 1 and self.num_return_sequences > 1 and self.sampling.greedy:
            raise InvalidOption("num_return_sequences", "num_return_sequences > 1 needs sampling (temperature > 0) "
                                                        "or beam search (num_beams > 1)")
        if self.early_stopping not in (True, False, "never"):
            raise InvalidOption("early_stopping",
                                f"early_stopping must be true, false or 'never', got {self.early_stopping!r}")
        if self.prompt_lookup and self.draft_tokens:
            raise InvalidOption("prompt_lookup", "speculative decoding drafts from the context (prompt_lookup) or "
                                                 "from a draft model (draft_tokens), not both")
        speculative = "prompt_lookup" if self.prompt_lookup else "draft_tokens" if self.draft_tokens else None
        plain_greedy = self.sampling.greedy and not self.sampling.penalized
        if speculative and not (plain_greedy and self.num_beams == 1 and self.num_return_sequences == 1):
            raise InvalidOption(speculative, f"{speculative} speeds up plain greedy decoding only: no sampling, "
                                             "beams or penalties")
        if self.grammar is not None and not isinstance(self.grammar, Grammar):
            raise InvalidOption("grammar", f"grammar must be a Grammar, got {type(self.grammar).__name__}")
        if self.num_beams > 1 and not self.sampling.greedy:
            raise InvalidOption("num_beams", "beam search is deterministic here: use temperature 0 with num_beams > 1")

    @property
    def speculative(self) -> bool:
        return bool(self.prompt_lookup or self.draft_tokens)
