"""How well a model uses tools, on requests of train/tool_data.py: the share of requests that need
a function where it calls the right one, where it also gets every argument right, and the share of
requests that no offered function fits where it calls one anyway (overall and by kind). Each
request is offered its case's functions. Greedy; free, or constrained as the server's tool_choice
"auto" is: the call or the answer chosen before the reply (apps/tool_choice.py), and a call held to
its function's schema."""

import json
from dataclasses import dataclass, field

from nexttoken.apps.tool_calls import read_reply, valid_calls
from nexttoken.apps.tool_choice import auto_choice
from nexttoken.apps.tools import CALL_OPEN, Function, render_conversation
from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.grammar import Grammar
from nexttoken.pretrained import LanguageModel
from nexttoken.train.tool_data import ToolCase, offered_functions
from nexttoken.train.tool_requests import NO_FIT_KINDS


@dataclass(frozen=True)
class Predicted:
    attempted: bool  # the reply opened a call
    function: str | None = None  # the function of a valid call
    arguments: dict | None = None


@dataclass(frozen=True)
class ToolScores:
    right_function: float  # of the requests that need a function
    right_arguments: float  # of those: the right function with arguments equal to the expected ones
    false_calls: float  # of the requests no offered function fits: a call opened anyway
    n_calls: int  # requests that need a function
    n_direct: int  # requests that no offered function fits
    false_calls_by_kind: dict[str, float] = field(default_factory=dict)  # the kinds of NO_FIT_KINDS


def predicted(text: str, functions: tuple[Function, ...]) -> Predicted:
    reading = read_reply(text, final=True)
    attempted = text.lstrip().startswith(CALL_OPEN)
    if not valid_calls(reading, {f.name for f in functions}):
        return Predicted(attempted)
    first = reading.calls[0]
    return Predicted(attempted, first.name, json.loads(first.arguments))


def predictions(lm: LanguageModel, cases: list[ToolCase], constrained: bool, max_new_tokens: int = 64,
                batch_size: int = 8) -> list[Predicted]:
    """Each case's reply to its request with its offered functions, greedily; cases decoded under
    the same grammar (or none) share batches. `max_new_tokens` leaves room for the longest call, a
    date difference's (about 50 tokens): a call cut short counts as none."""
    prompts, grammars = [], []
    for case in cases:
        functions = offered_functions(case)
        prompt = lm.tokenizer.encode(render_conversation(lm.tokenizer, [{"role": "user", "content": case.request}],
                                                         functions))
        prompts.append(prompt)
        grammars.append(auto_choice(functions).grammar(lm, prompt) if constrained else None)
    by_grammar: dict[Grammar | None, list[int]] = {}
    for i, grammar in enumerate(grammars):
        by_grammar.setdefault(grammar, []).append(i)
    answers: list[Predicted | None] = [None] * len(cases)
    for grammar, indices in by_grammar.items():
        config = GenerationConfig(max_new_tokens=max_new_tokens, grammar=grammar)
        texts = [group[0].text for start in range(0, len(indices), batch_size)
                 for group in lm.generate_batch([prompts[i] for i in indices[start : start + batch_size]], config)]
        for i, text in zip(indices, texts):
            answers[i] = predicted(text, offered_functions(cases[i]))
    return answers


def scores(cases: list[ToolCase], answers: list[Predicted]) -> ToolScores:
    calls = [(c, p) for c, p in zip(cases, answers) if c.function is not None]
    direct = [(c, p) for c, p in zip(cases, answers) if c.function is None]
    right = [(c, p) for c, p in calls if p.function == c.function]
    exact = [c for c, p in right if p.arguments == dict(c.arguments)]

    def false_share(pairs: list) -> float:
        return sum(p.attempted for _, p in pairs) / max(len(pairs), 1)

    by_kind = {kind: false_share([(c, p) for c, p in direct if c.kind == kind]) for kind in NO_FIT_KINDS
               if any(c.kind == kind for c, _ in direct)}
    return ToolScores(len(right) / max(len(calls), 1), len(exact) / max(len(calls), 1), false_share(direct),
                      len(calls), len(direct), by_kind)


def tool_use_scores(lm: LanguageModel, cases: list[ToolCase], constrained: bool, **options) -> ToolScores:
    return scores(cases, predictions(lm, cases, constrained, **options))
