"""How a tuned model's decision to call would change if `auto` called only where the whole call
is likelier than no call: P(opening tag) x P(an offered function's name | the tag) against
1 - P(opening tag), on the held-out requests of train/tool_data.py. One forward pass per request
over the prompt, the tag and `{"name": "`; a name's probability is that of its first token.

    .venv/bin/python benchmarks/tool_call_decision.py runs/tools-model"""

import argparse
import math
from collections import Counter
from pathlib import Path

import torch

from nexttoken.apps.tools import render_conversation
from nexttoken.pretrained import load
from nexttoken.train.tool_data import FUNCTION_NAMES, offered_functions, tool_cases
from nexttoken.train.tool_requests import NO_FIT_KINDS

CALL_PREFIX = '<tool_call>\n{"name": "'


def decision(lm, case) -> tuple[float, float]:
    """(P(the call's prefix), P(an offered name | the prefix)) after the case's prompt."""
    prompt = lm.tokenizer.encode(render_conversation(lm.tokenizer, [{"role": "user", "content": case.request}],
                                                     offered_functions(case)))
    prefix = lm.tokenizer.encode(CALL_PREFIX, add_bos=False)
    with torch.no_grad():
        logprobs = lm.model(torch.tensor([prompt + prefix]))[0].float().log_softmax(-1)  # (T, V)
    p_prefix = math.exp(sum(logprobs[len(prompt) + i - 1, token].item() for i, token in enumerate(prefix)))
    first = {name: lm.tokenizer.encode(CALL_PREFIX + name, add_bos=False)[len(prefix)] for name in FUNCTION_NAMES}
    return p_prefix, sum(logprobs[-1, first[name]].exp().item() for name in case.offered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tuned", type=Path, help="A model `finetune tools` wrote.")
    parser.add_argument("--cases", type=int, default=80)
    args = parser.parse_args()
    lm = load(args.tuned)
    opened, whole, n = Counter(), Counter(), Counter()
    for case in tool_cases("held_out", args.cases):
        p_prefix, p_offered = decision(lm, case)
        n[case.kind] += 1
        opened[case.kind] += p_prefix > 0.5
        whole[case.kind] += p_prefix * p_offered > 1 - p_prefix
    print("| requests | n | P(call prefix) > 0.5 | whole-call rule calls |\n|---|---|---|---|")
    for kind in ("call", *NO_FIT_KINDS):
        print(f"| {kind} | {n[kind]} | {opened[kind]} | {whole[kind]} |")


if __name__ == "__main__":
    main()
