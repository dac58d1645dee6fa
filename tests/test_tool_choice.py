"""tool_choice "auto"'s decision: the probabilities it weighs (against a model whose scores are set
by hand, and against SmolLM2's own forward pass), the rule, and the grammar each way gets."""

import math
from types import SimpleNamespace

import pytest
import torch

from nexttoken.apps.tool_choice import CALL_HEAD, CallOdds, auto_choice, call_odds
from nexttoken.apps.tools import Function, answer_grammar, forced_call_grammar, render_conversation
from nexttoken.decoding.grammar import Grammar

WEATHER = Function("get_weather", "The forecast.", {"type": "object", "properties": {"city": {"type": "string"}}})
TIME = Function("get_time", "The time in a city.", {"type": "object", "properties": {"city": {"type": "string"}}})
CALCULATOR = Function("calculator", "Adds.", {"type": "object", "properties": {"a": {"type": "number"}}})
P_HEAD, P_WEATHER, P_CALCULATOR = 0.9, 0.3, 0.5


class SetScores(torch.nn.Module):
    """Scores each position as told: the head's tokens with P_HEAD each, then the first tokens of
    two names; what is left goes to a token no call can take (`other`)."""

    def __init__(self, prompt: int, head: list[int], names: dict[int, float], other: int, vocab: int) -> None:
        super().__init__()
        self.prompt, self.head, self.names, self.other, self.vocab = prompt, head, names, other, vocab
        self.config = SimpleNamespace(max_seq_len=4096)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        assert ids.shape == (1, self.prompt + len(self.head)) and positions[0, self.prompt - 1 :].all()
        probs = torch.zeros(int(positions.sum()), self.vocab)
        for row, token in enumerate(self.head):
            probs[row, token], probs[row, self.other] = P_HEAD, 1 - P_HEAD
        for token, p in self.names.items():
            probs[-1, token] = p
        probs[-1, self.other] = 1 - sum(self.names.values())
        return probs.clamp_min(1e-30).log()


def first_name_token(smollm2, name: str) -> int:
    head = smollm2.text_ids(CALL_HEAD)
    ids = smollm2.text_ids(CALL_HEAD + name)
    assert ids[: len(head)] == head
    return ids[len(head)]


def test_call_odds_weigh_the_whole_head_and_only_offered_names(smollm2):
    head = smollm2.text_ids(CALL_HEAD)
    weather, calculator = first_name_token(smollm2, "get_weather"), first_name_token(smollm2, "calculator")
    assert first_name_token(smollm2, "get_time") == weather  # names that share a first token count it once
    other = smollm2.text_ids("x")[0]
    model = SetScores(5, head, {weather: P_WEATHER, calculator: P_CALCULATOR}, other, smollm2.tokenizer.vocab_size)
    lm = SimpleNamespace(model=model, tokenizer=smollm2.tokenizer, text_ids=smollm2.text_ids)
    opens = P_HEAD ** len(head)
    for functions, offered in (([WEATHER], P_WEATHER), ([WEATHER, TIME], P_WEATHER), ([CALCULATOR], P_CALCULATOR),
                               ([WEATHER, CALCULATOR], P_WEATHER + P_CALCULATOR)):
        odds = call_odds(lm, [1, 2, 3, 4, 5], forced_call_grammar(functions))
        assert odds.opens == pytest.approx(opens, rel=1e-5) and odds.offered == pytest.approx(offered, rel=1e-5)


def test_call_odds_read_the_models_own_scores(smollm2):
    """Against SmolLM2's scores at every position of the prompt and the head."""
    prompt = smollm2.tokenizer.encode(render_conversation(smollm2.tokenizer, [{"role": "user", "content": "Hi!"}],
                                                          [WEATHER]))
    head = smollm2.text_ids(CALL_HEAD)
    with torch.no_grad():
        logprobs = smollm2.model(torch.tensor([prompt + head]))[0].log_softmax(-1)  # (T, V)
    opens = math.exp(sum(logprobs[len(prompt) - 1 + i, t].item() for i, t in enumerate(head)))
    odds = call_odds(smollm2, prompt, forced_call_grammar([WEATHER]))
    assert odds.opens == pytest.approx(opens, rel=1e-4)
    assert odds.offered >= logprobs[-1, first_name_token(smollm2, "get_weather")].exp().item() * (1 - 1e-4)


@pytest.mark.parametrize("opens, offered, calls", [(0.6, 0.9, True), (0.6, 0.5, False), (0.9, 0.05, False),
                                                   (0.0, 1.0, False)])
def test_auto_calls_only_where_an_offered_call_is_likelier_than_an_answer(opens, offered, calls):
    assert CallOdds(opens, offered).calls == calls


def test_each_way_gets_its_grammar(smollm2, monkeypatch):
    import nexttoken.apps.tool_choice as tool_choice

    auto = auto_choice([WEATHER], {"type": "object"})
    assert auto.call == forced_call_grammar([WEATHER]) and auto.answer == Grammar.json_schema({"type": "object"})
    assert auto_choice([WEATHER]).answer == answer_grammar()
    for odds, grammar in ((CallOdds(0.9, 0.9), auto.call), (CallOdds(0.9, 0.1), auto.answer)):
        monkeypatch.setattr(tool_choice, "call_odds", lambda *_, odds=odds: odds)
        assert auto.grammar(smollm2, [1, 2, 3]) == grammar


def test_a_prompt_that_leaves_no_room_for_a_call_answers(smollm2):
    window = smollm2.model.config.max_seq_len
    assert call_odds(smollm2, [1] * window, forced_call_grammar([WEATHER])) == CallOdds(0.0, 0.0)
