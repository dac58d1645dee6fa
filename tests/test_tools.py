"""Tool use without a model: the prompt's tool section, reading calls out of a reply whole and as
it streams, the tool-use data set (held-out wording disjoint from training) and its scoring."""

import json
from collections import Counter

import jsonschema
import pytest

from nexttoken.apps.tool_calls import json_object_end, read_reply, valid_calls
from nexttoken.apps.tools import (CALL_OPEN, Function, call_schema, forced_call_grammar, plain_messages,
                                  render_conversation)
from nexttoken.decoding.grammar_engine import compile_grammar
from nexttoken.decoding.outputs import Completion
from nexttoken.serve.replies import ChoiceStream, chat_message
from nexttoken.train.tool_data import FUNCTIONS, conversation, offered_functions, result_of, tool_cases
from nexttoken.train.tool_eval import Predicted, predicted, scores
from nexttoken.train.tool_requests import CALL_TEMPLATES, NO_FIT, NO_FIT_KINDS, UNOFFERED

WEATHER = Function("get_weather", "The forecast.", {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]})
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris \\"Nord\\" {x}"}}\n</tool_call>'


def completion(text: str, reason: str = "eos") -> Completion:
    return Completion(text, [0] * 5, reason, 3)


def test_json_object_end_skips_braces_in_strings():
    text = '{"a": "}\\"{", "b": [1, {"c": 2}]} tail'
    assert json_object_end(text, 0) == text.index(" tail")
    assert json_object_end(text[:-8], 0) is None and json_object_end("[1]", 0) is None


def test_a_whole_call_reads_back():
    read = read_reply(CALL, final=True)
    assert read.content == "" and [c.name for c in read.calls] == ["get_weather"]
    assert json.loads(read.calls[0].arguments) == {"city": 'Paris "Nord" {x}'} and read.calls[0].closed
    assert valid_calls(read, {"get_weather"}) and not valid_calls(read, {"calculator"})


def test_two_calls_and_an_answer_read_back():
    read = read_reply(CALL + "\n" + CALL.replace("Paris", "Oslo"), final=True)
    assert len(read.calls) == 2 and valid_calls(read, {"get_weather"})
    assert read_reply("It is sunny.", final=True).content == "It is sunny."


def test_a_cut_call_is_no_call():
    for cut in (len(CALL) - 3, CALL.index("}}") + 1, CALL.index("Paris")):
        read = read_reply(CALL[:cut], final=True)
        assert not valid_calls(read, {"get_weather"})
    message, finish = chat_message(completion(CALL[:-3], "length"), ["get_weather"])
    assert message["content"] == CALL[:-3] and "tool_calls" not in message and finish == "length"


def test_text_that_may_open_a_call_is_held_back_until_it_cannot():
    assert read_reply("<tool", final=False).content == ""
    assert read_reply("<tool", final=True).content == "<tool"
    assert read_reply("<tools are", final=False).content == "<tools are"


@pytest.mark.parametrize("size", [1, 3, 7])
def test_streamed_calls_reassemble_to_the_whole_message(size):
    stream, deltas = ChoiceStream(["get_weather"]), []
    text = CALL + "\n" + CALL.replace("Paris", "Oslo")
    for i in range(0, len(text), size):
        deltas += stream.feed(text[i : i + size])
    last, finish = stream.close(completion(text))
    deltas += last
    assert finish == "tool_calls" and deltas[0]["role"] == "assistant" and all("content" not in d for d in deltas)
    calls: dict[int, dict] = {}
    for delta in deltas:
        for part in delta["tool_calls"]:
            call = calls.setdefault(part["index"], {"id": part.get("id"), "name": "", "arguments": ""})
            assert "id" not in part or call["id"] == part["id"]  # the id comes once, first, with the name
            call["name"] += part["function"].get("name", "")
            call["arguments"] += part["function"]["arguments"]
    message, _ = chat_message(completion(text), ["get_weather"])
    whole = [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]
    assert [(c["name"], c["arguments"]) for c in calls.values()] == whole
    assert len(deltas) > 4  # the arguments came in pieces


def test_streamed_text_is_content_and_plain_streams_pass_through():
    stream = ChoiceStream(["get_weather"])
    deltas = stream.feed("<t") + stream.feed("ea> is ready")
    assert deltas == [{"role": "assistant", "content": "<tea> is ready"}]
    plain = ChoiceStream(None)
    assert plain.feed(CALL[:5]) == [{"role": "assistant", "content": CALL[:5]}]
    assert plain.close(completion(CALL[:5]))[1] == "stop"


def test_tool_section_and_results_render_for_a_template_without_tools(smollm2):
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": '{"temperature_c": 18}'},
                {"role": "tool", "tool_call_id": "c2", "content": '{"temperature_c": 19}'}]
    plain = plain_messages(messages, [WEATHER])
    assert [m["role"] for m in plain] == ["system", "user", "assistant", "user"]
    assert json.dumps(dict(WEATHER.parameters), separators=(",", ":")) in plain[0]["content"] and CALL_OPEN in plain[0]["content"]
    assert plain[2]["content"] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert plain[3]["content"].count("<tool_response>") == 2
    prompt = render_conversation(smollm2.tokenizer, messages, [WEATHER])
    assert prompt.startswith("<|im_start|>system\nYou can call") and prompt.endswith("<|im_start|>assistant\n")


def test_a_template_with_a_tool_section_gets_the_tools(smollm2):
    from dataclasses import replace

    template = ("{% for t in tools %}TOOL {{ t.function.name }};{% endfor %}"
                "{% for m in messages %}{{ m.role }}: {{ m.content }}{% if m.tool_calls %}"
                "CALL {{ m.tool_calls[0].function.arguments.city }}{% endif %};{% endfor %}")
    tokenizer = replace(smollm2.tokenizer, chat_template=template)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}]
    assert render_conversation(tokenizer, messages, [WEATHER]) == "TOOL get_weather;user: hi;assistant: CALL Oslo;"


def test_call_grammar_takes_valid_calls_only(smollm2):
    schema = call_schema(FUNCTIONS)
    compiled = compile_grammar(forced_call_grammar(FUNCTIONS), smollm2.tokenizer)
    good = '<tool_call>\n{"name": "calculator", "arguments": {"operation": "add", "a": 2, "b": 3}}\n</tool_call>'
    bad = good.replace('"add"', '"pow"')
    for text, ok in ((good, True), (bad, False)):
        ids = smollm2.text_ids(text)
        assert (compiled.matcher().allows(ids) == len(ids)) == ok
    body = json.loads(good[len(CALL_OPEN) + 1 : -len("</tool_call>") - 1])
    jsonschema.validate(body, {k: v for k, v in schema.items() if k != "x-guidance"})


def wording(split: str) -> set[str]:
    """Every template and request text of `split`, calls and requests that no function fits."""
    return ({t for ts in CALL_TEMPLATES[split].values() for t in ts}
            | {request for pairs in NO_FIT[split].values() for request, _ in pairs}
            | {request for request, _ in UNOFFERED[split]})


def test_held_out_wording_is_disjoint_from_training():
    assert not wording("train") & wording("held_out")
    train_cases, held_cases = tool_cases("train", 400), tool_cases("held_out", 80)
    assert not {c.template for c in train_cases} & {c.template for c in held_cases}
    assert not {c.request for c in train_cases} & {c.request for c in held_cases}
    assert {c.function for c in held_cases} == {f.name for f in FUNCTIONS} | {None}
    assert tool_cases("train", 50) == train_cases[:50]  # seeded
    assert tool_cases("held_out", 40) == held_cases[:40]


@pytest.mark.parametrize("split", ["train", "held_out"])
def test_every_kind_of_request_that_no_function_fits_is_in_the_mix(split):
    cases = tool_cases(split, 400 if split == "train" else 80)
    direct = [c for c in cases if c.function is None]
    assert {c.kind for c in direct} == set(NO_FIT_KINDS)
    assert {c.kind for c in cases if c.function} == {"call"}
    assert len(direct) / len(cases) > 0.35  # "no call" is no rare exception
    for case in cases:
        assert case.offered and set(case.offered) <= {f.name for f in FUNCTIONS}
        assert "{" not in case.request and "{" not in case.answer  # every slot filled
        if case.function is not None:
            assert case.function in case.offered
    # a removed case is a call's request whose function (and the web search) is not offered
    removed = [c for c in direct if c.kind == "removed"]
    call_wording = {t for ts in CALL_TEMPLATES[split].values() for t in ts}
    assert all(c.template in call_wording and "web_search" not in c.offered for c in removed)
    fitting = {t: kind for kind, ts in CALL_TEMPLATES[split].items() for t in ts}
    assert all({"add": "calculator", "subtract": "calculator", "multiply": "calculator", "divide": "calculator"}
               .get(fitting[c.template], fitting[c.template]) not in c.offered for c in removed)


def test_training_weights_the_harder_kinds_and_the_held_out_mix_stays_as_measured():
    """The held-out cases are the ones docs/training.md's figures were measured on; the training set
    has twice as many "near" and "removed" requests as of each other kind."""
    train, held = tool_cases("train", 700), tool_cases("held_out", 80)
    held_kinds = Counter(c.kind for c in held)
    assert held_kinds == {"call": 33, "chat": 10, "task": 10, "near": 9, "unoffered": 9, "removed": 9}
    assert [c.request for c in held[:4]] == ["Good morning!", "Which is bigger, an elephant or a mouse?",
                                             "What's the capital of Japan?", "Please total 19.8 and 156."]
    train_kinds = Counter(c.kind for c in train)
    for kind in ("near", "removed"):
        assert 1.7 < train_kinds[kind] / train_kinds["chat"] < 2.3
    fitting = {t: kind for kind, ts in CALL_TEMPLATES["train"].items() for t in ts}
    assert len({fitting[c.template] for c in train if c.kind == "removed"}) == len(CALL_TEMPLATES["train"])


def test_training_offers_subsets_and_held_out_offers_all_but_removed_functions():
    train, held = tool_cases("train", 400), tool_cases("held_out", 80)
    assert len({c.offered for c in train}) > 10
    assert all(len(c.offered) == len(FUNCTIONS) for c in held if c.kind != "removed")
    case = next(c for c in train if len(c.offered) < len(FUNCTIONS))
    system = plain_messages(conversation(case), offered_functions(case))[0]["content"]
    assert all((f'"name":"{f.name}"' in system) == (f.name in case.offered) for f in FUNCTIONS)


def test_cases_call_with_arguments_valid_for_their_function():
    by_name = {f.name: f for f in FUNCTIONS}
    for case in tool_cases("train", 100) + tool_cases("held_out", 40):
        if case.function is None:
            assert conversation(case) == [{"role": "user", "content": case.request},
                                          {"role": "assistant", "content": case.answer}]
            continue
        jsonschema.validate(dict(case.arguments), dict(by_name[case.function].parameters),
                            format_checker=jsonschema.FormatChecker())
        turns = conversation(case)
        assert [t["role"] for t in turns] == ["user", "assistant", "tool", "assistant"]
        assert json.loads(turns[2]["content"]) == result_of(case.function, dict(case.arguments))


def test_scores_count_functions_arguments_and_false_calls():
    cases = [c for c in tool_cases("held_out", 30) if c.function][:2] + \
            [c for c in tool_cases("held_out", 30) if c.function is None][:2]
    answers = [Predicted(True, cases[0].function, dict(cases[0].arguments)),
               Predicted(True, cases[1].function, {"wrong": 1}), Predicted(True), Predicted(False)]
    result = scores(cases, answers)
    assert (result.right_function, result.right_arguments, result.false_calls) == (1.0, 0.5, 0.5)
    assert result.false_calls_by_kind == {cases[2].kind: 1.0, cases[3].kind: 0.0}
    assert predicted(CALL, (WEATHER,)).arguments == {"city": 'Paris "Nord" {x}'}
    assert predicted(CALL[:-2], (WEATHER,)) == Predicted(True)


def test_tools_task_trains_scores_and_exports(smollm2, tmp_path):
    """The whole `finetune tools` recipe on a tiny random Llama with SmolLM2's tokenizer."""
    import torch

    from nexttoken.config import ModelConfig
    from nexttoken.model.transformer import Transformer
    from nexttoken.pretrained import LanguageModel, load
    from nexttoken.train.finetune import tools_task
    from nexttoken.train.loop import TrainConfig
    from nexttoken.train.lora import LoraConfig

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=smollm2.tokenizer.vocab_size, d_model=32, n_layer=1, n_head=2, n_kv_head=1,
                         d_ff=64, max_seq_len=1024)
    lm = LanguageModel(Transformer(config).eval().requires_grad_(False), smollm2.tokenizer, smollm2.path)
    train = TrainConfig(max_steps=2, global_batch=2, micro_batch=2, lr=1e-2, min_lr=1e-2, warmup_steps=0,
                        precision="fp32", fused=False, progress=False, checkpoint_every=0, eval_every=1000)
    result = tools_task(lm, train, tmp_path / "run", 2, 2, 1024, LoraConfig(rank=2, alpha=4), tmp_path / "out")
    assert set(result.tool_use) == {"free before", "constrained before", "free after", "constrained after"}
    assert all(s.n_calls + s.n_direct == 2 for s in result.tool_use.values())
    assert result.eval_after < result.eval_before
    assert load(tmp_path / "out").model.config.d_model == 32
