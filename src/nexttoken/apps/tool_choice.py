"""tool_choice "auto": whether the reply calls a function, decided once before it begins, from the
model's probabilities of the two ways it can go.

Token by token, a model that has learnt "this kind of request gets a call" opens a call for a
function that is not offered, and the grammar then has to force an offered name onto it. So the
beginning of a call that can be made is weighed whole: P(the call's opening) × P(an offered
function's name | the opening), against 1 - P(the opening), the answer. The reply is decoded under
the grammar of the likelier way (also when sampling: one decision per request): one call of an
offered function, or an answer that never opens a call."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from nexttoken.apps.tools import CALL_OPEN, Function, answer_grammar, forced_call_grammar
from nexttoken.decoding.grammar import Grammar
from nexttoken.decoding.grammar_engine import allowed_tokens, compile_grammar
from nexttoken.pretrained import LanguageModel

CALL_HEAD = f'{CALL_OPEN}\n{{"name": "'  # a call as far as its function's name


@dataclass(frozen=True)
class CallOdds:
    opens: float  # P(the reply begins with CALL_HEAD)
    offered: float  # P(the name that follows begins as an offered function's does | CALL_HEAD)

    @property
    def calls(self) -> bool:
        return self.opens * self.offered > 1 - self.opens


@torch.inference_mode()
def call_odds(lm: LanguageModel, prompt_ids: Sequence[int], call: Grammar) -> CallOdds:
    """One forward pass over the prompt and CALL_HEAD. The names' tokens are those `call` (the
    call's grammar) allows after the head, so that names sharing a first token count once."""
    head = lm.text_ids(CALL_HEAD)
    ids = torch.tensor([[*prompt_ids, *head]])
    if ids.shape[1] > lm.model.config.max_seq_len:  # no call fits the context window
        return CallOdds(0.0, 0.0)
    scored = torch.zeros_like(ids, dtype=torch.bool)
    scored[0, len(prompt_ids) - 1 :] = True  # the positions that predict the head's tokens and the name's
    logprobs = lm.model(ids, positions=scored).float().log_softmax(-1)  # (len(head) + 1, V)
    opens = logprobs[torch.arange(len(head)), torch.tensor(head)].sum().exp()
    matcher = compile_grammar(call, lm.tokenizer).matcher()
    for token in head:
        matcher.accept(token)
    named = allowed_tokens([matcher], logprobs.shape[-1])[0]  # (V,) bool
    return CallOdds(float(opens), float(logprobs[-1].exp()[named].sum()))


@dataclass(frozen=True)
class AutoChoice:
    """The two grammars a reply under tool_choice "auto" may get, and how one is chosen."""

    call: Grammar
    answer: Grammar

    def grammar(self, lm: LanguageModel, prompt_ids: Sequence[int]) -> Grammar:
        return self.call if call_odds(lm, prompt_ids, self.call).calls else self.answer


def auto_choice(functions: Sequence[Function], answer_schema: Mapping | None = None) -> AutoChoice:
    """The functions a call may be of; the answer is free text, or JSON valid for `answer_schema`
    (a response_format)."""
    return AutoChoice(forced_call_grammar(functions), answer_grammar(answer_schema))
