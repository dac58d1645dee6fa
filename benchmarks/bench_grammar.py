"""Constrained decoding: its cost beside unconstrained decoding, forced tokens fed together beside one
by one, and llguidance (our engine) beside xgrammar on our tokenizer, in one run.

    .venv/bin/python benchmarks/bench_grammar.py [--repeats 3] [--new-tokens 96] [--schemas 32]

SmolLM2-135M-Instruct with int4 weights, batch 1, greedy:
1. a story written inside a JSON string (few forced tokens) against the same request without a
   grammar: tokens/s of each (the mask and the matcher's bookkeeping counted), and the mask's time
   per token;
2. an object with 8 fixed keys: the tokens the grammar forces fed together in one pass against one
   pass per token (both give the same tokens: checked);
3. engines, on the schema suite of tests/schema_suite.py: compile time per schema and mask time
   per token along the same token paths (those our greedy constrained decoding took), llguidance
   against xgrammar.
Prints medians and ratios."""

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from nexttoken.decoding import grammar_engine
from nexttoken.decoding import groups
from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.grammar import Grammar
from nexttoken.decoding.grammar_engine import compile_grammar
from nexttoken.pretrained import load
from timing import median_seconds

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from schema_suite import EIGHT_KEYS, SCHEMAS  # noqa: E402

STORY = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"],
         "additionalProperties": False}


class MaskTimer:
    """Wraps groups.allowed_tokens to record the time each mask took (llguidance's bits and their
    unpacking into the (1, V) mask the chain takes)."""

    def __init__(self) -> None:
        self.seconds, self.original = [], groups.allowed_tokens

    def __call__(self, matchers, vocab_size):
        start = time.perf_counter()
        allowed = self.original(matchers, vocab_size)
        self.seconds.append(time.perf_counter() - start)
        return allowed


def tokens_per_second(lm, prompt: list[int], config: GenerationConfig) -> tuple[float, list[int]]:
    """One timed generation (the callers alternate settings, and take medians)."""
    start = time.perf_counter()
    completion = lm.generate(prompt, config)
    return len(completion.token_ids) / (time.perf_counter() - start), completion.token_ids


def constrained_cost(lm, repeats: int, n_new: int) -> None:
    prompt = lm.encode("Write a long story about a lighthouse keeper. Answer as JSON with the story in 'story'.",
                       chat=True)
    free = GenerationConfig(max_new_tokens=n_new, sampling=replace(GenerationConfig().sampling, min_new_tokens=n_new))
    constrained = replace(free, grammar=Grammar.json_schema(STORY))
    lm.generate(prompt, replace(constrained, max_new_tokens=8))  # warm-up
    timer = MaskTimer()
    groups.allowed_tokens = timer
    rates = {"free": [], "constrained": []}
    for _ in range(repeats):  # alternating, so that both see the same load
        rates["free"].append(tokens_per_second(lm, prompt, free)[0])
        rate, tokens = tokens_per_second(lm, prompt, constrained)
        rates["constrained"].append(rate)
    groups.allowed_tokens = timer.original
    mask_ms = [1000 * seconds for seconds in timer.seconds]
    free_rate, constrained_rate = statistics.median(rates["free"]), statistics.median(rates["constrained"])
    print(f"story in a JSON string, {len(tokens)} tokens: unconstrained {free_rate:.1f} tokens/s, constrained "
          f"{constrained_rate:.1f} tokens/s, ratio {constrained_rate / free_rate:.3f}; mask per token: median "
          f"{statistics.median(mask_ms):.3f} ms, mean {statistics.mean(mask_ms):.3f} ms over {len(mask_ms)} masks")


def forced_together(lm, repeats: int) -> None:
    prompt = lm.encode("Give eight digits as JSON, under the keys alpha to hotel.", chat=True)
    together = GenerationConfig(max_new_tokens=96, grammar=Grammar.json_schema(EIGHT_KEYS))
    alone = replace(together, forced_together=False)
    lm.generate(prompt, together)  # warm-up
    rates = {"together": [], "alone": []}
    for _ in range(repeats):
        rate, tokens_together = tokens_per_second(lm, prompt, together)
        rates["together"].append(rate)
        rate, tokens_alone = tokens_per_second(lm, prompt, alone)
        rates["alone"].append(rate)
    assert tokens_together == tokens_alone, "forced runs must choose the tokens one-by-one decoding chooses"
    completion = lm.generate(prompt, together)
    n_forced = sum(step.forced for step in completion.steps)
    together_rate, alone_rate = statistics.median(rates["together"]), statistics.median(rates["alone"])
    print(f"8 fixed keys, {len(tokens_together)} tokens ({n_forced} forced, in {len(completion.steps) - n_forced} "
          f"passes instead of {len(completion.steps)}): one by one {alone_rate:.1f} tokens/s, together "
          f"{together_rate:.1f} tokens/s, ratio {together_rate / alone_rate:.2f}")
    print(f"  {completion.text}")


def engines(lm, repeats: int, schemas: list[tuple[str, dict]]) -> None:
    import llguidance
    import llguidance.torch
    import xgrammar

    tokenizer = lm.tokenizer
    V = tokenizer.vocab_size
    paths = [lm.generate(lm.encode(request + " Answer in JSON.", chat=True),
                         GenerationConfig(max_new_tokens=48, grammar=Grammar.json_schema(schema))).token_ids
             for request, schema in schemas]

    start = time.perf_counter()
    xgr_info = xgrammar.TokenizerInfo(list(tokenizer.tokens), xgrammar.VocabType.BYTE_LEVEL, vocab_size=V,
                                      stop_token_ids=list(tokenizer.end_ids))
    xgr_compiler = xgrammar.GrammarCompiler(xgr_info, max_threads=torch.get_num_threads(), cache_enabled=False)
    xgr_setup = time.perf_counter() - start
    start = time.perf_counter()
    grammar_engine.grammar_tokenizer.cache_clear()
    grammar_engine.grammar_tokenizer(tokenizer)
    llg_setup = time.perf_counter() - start
    print(f"tokenizer set-up: llguidance {llg_setup * 1000:.0f} ms, xgrammar {xgr_setup * 1000:.0f} ms")

    compile_ms = {"llguidance": [], "xgrammar": []}
    mask_ms = {"llguidance": [], "xgrammar": []}
    bitmask = llguidance.torch.allocate_token_bitmask(1, V)
    xgr_bitmask = xgrammar.allocate_token_bitmask(1, V)
    for (_, schema), path in zip(schemas, paths):
        def llg_compile():
            compile_grammar.cache_clear()
            return compile_grammar(Grammar.json_schema(schema), tokenizer).matcher()

        def xgr_compile():
            compiled = xgr_compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                                        separators=(", ", ": "))
            return xgrammar.GrammarMatcher(compiled)

        compile_ms["llguidance"].append(1000 * median_seconds(llg_compile, repeats))
        compile_ms["xgrammar"].append(1000 * median_seconds(xgr_compile, repeats))
        llg, xgr = llg_compile()._matcher, xgr_compile()
        for token in path:
            start = time.perf_counter()
            llguidance.torch.fill_next_token_bitmask(llg, bitmask)
            mask_ms["llguidance"].append(1000 * (time.perf_counter() - start))
            start = time.perf_counter()
            xgr.fill_next_token_bitmask(xgr_bitmask)
            mask_ms["xgrammar"].append(1000 * (time.perf_counter() - start))
            if not (llg.consume_token(token) and xgr.accept_token(token)):
                break
    for engine in ("llguidance", "xgrammar"):
        print(f"{engine:>10}: compile median {statistics.median(compile_ms[engine]):.2f} ms, max "
              f"{max(compile_ms[engine]):.2f} ms over {len(schemas)} schemas; mask median "
              f"{statistics.median(mask_ms[engine]):.3f} ms, p90 {statistics.quantiles(mask_ms[engine], n=10)[-1]:.3f} ms "
              f"over {len(mask_ms[engine])} tokens")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--schemas", type=int, default=len(SCHEMAS), help="How many of the suite's schemas part 3 takes.")
    args = parser.parse_args()
    lm = load(quantize="int4")
    print(f"SmolLM2-135M-Instruct, int4 weights, batch 1, {torch.get_num_threads()} threads")
    constrained_cost(lm, args.repeats, args.new_tokens)
    forced_together(lm, args.repeats)
    engines(lm, args.repeats, SCHEMAS[: args.schemas])


if __name__ == "__main__":
    main()
