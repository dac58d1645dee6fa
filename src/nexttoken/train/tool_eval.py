"""How well a model uses tools, on requests of train/tool_data.py: the share of requests that need
a function where it calls the right one, where it also gets every argument right, and the share of
requests that no function fits where it calls one anyway. Greedy; free, or with the call held to
its function's schema by the grammar the server uses for tool_choice "auto"."""

import json
from dataclasses import dataclass

from nexttoken.apps.tool_calls import read_reply, valid_calls
from nexttoken.apps.tools import CALL_OPEN, Function, optional_call_grammar, render_conversation
from nexttoken.decoding.config import GenerationConfig
from nexttoken.pretrained import LanguageModel
from nexttoken.train.tool_data import FUNCTIONS, ToolCase


@dataclass(frozen=True)
class Predicted:
    attempted: bool  # the reply opened a call
    function: str | None = None  # the function of a valid call
    arguments: dict | None = None


@dataclass(frozen=True)
class ToolScores:
    right_function: float  # of the requests that need a function
    right_arguments: float  # of those: the right function with arguments equal to the expected ones
    false_calls: float  # of the requests no function fits: a call opened anyway
    n_calls: int  # requests that need a function
    n_direct: int  # requests that no function fits


def predicted(text: str, functions: tuple[Function, ...]) -> Predicted:
    reading = read_reply(text, final=True)
    attempted = text.lstrip().startswith(CALL_OPEN)
    if not valid_calls(reading, {f.name for f in functions}):
        return Predicted(attempted)
    first = reading.calls[0]
    return Predicted(attempted, first.name, json.loads(first.arguments))


def predictions(lm: LanguageModel, cases: list[ToolCase], constrained: bool, functions: tuple[Function, ...] = FUNCTIONS,
                max_new_tokens: int = 48, batch_size: int = 8) -> list[Predicted]:
    grammar = optional_call_grammar(functions) if constrained else None
    config = GenerationConfig(max_new_tokens=max_new_tokens, grammar=grammar)
    prompts = [lm.tokenizer.encode(render_conversation(lm.tokenizer, [{"role": "user", "content": c.request}], functions))
               for c in cases]
    texts = [group[0].text for i in range(0, len(prompts), batch_size)
             for group in lm.generate_batch(prompts[i : i + batch_size], config)]
    return [predicted(text, functions) for text in texts]


def scores(cases: list[ToolCase], answers: list[Predicted]) -> ToolScores:
    calls = [(c, p) for c, p in zip(cases, answers) if c.function is not None]
    direct = [p for c, p in zip(cases, answers) if c.function is None]
    right = [(c, p) for c, p in calls if p.function == c.function]
    exact = [c for c, p in right if p.arguments == dict(c.arguments)]
    return ToolScores(len(right) / max(len(calls), 1), len(exact) / max(len(calls), 1),
                      sum(p.attempted for p in direct) / max(len(direct), 1), len(calls), len(direct))


def tool_use_scores(lm: LanguageModel, cases: list[ToolCase], constrained: bool, **options) -> ToolScores:
    return scores(cases, predictions(lm, cases, constrained, **options))
