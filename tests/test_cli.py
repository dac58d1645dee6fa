"""The `nexttoken` command, in-process on the session's model, and as a real process for errors."""

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from nexttoken import cli
from nexttoken.apps.chat import ChatSession
from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.speculative import DraftModel


@pytest.fixture
def run(smollm2, monkeypatch):
    monkeypatch.setattr(cli, "load", lambda path, dtype, quantize, compiled, draft: smollm2)
    runner = CliRunner()

    def invoke(*args: str, stdin: str | None = None):
        result = runner.invoke(cli.app, list(args), input=stdin)
        assert result.exit_code == 0, result.output
        return result.stdout

    return invoke


def test_generate_json(run, smollm2):
    data = json.loads(run("generate", "What is 2+2?", "--chat", "--json", "--max-new-tokens", "40"))
    expected = smollm2.generate(smollm2.encode("What is 2+2?", chat=True), GenerationConfig(max_new_tokens=40))
    assert data == {"text": expected.text, "token_ids": expected.token_ids, "finish_reason": "eos",
                    "precision": {"dtype": "float32", "quantize": "none"}}


def test_compile_and_precision_options_reach_the_loader(smollm2, monkeypatch):
    asked = []
    def load(path, dtype, quantize, compiled, draft):
        asked.append((dtype, quantize, compiled, draft))
        return replace(smollm2, draft=DraftModel(smollm2.model))

    monkeypatch.setattr(cli, "load", load)
    for args in (["--quantize", "int4", "--compile"], ["--dtype", "bfloat16"], ["--draft", "int4"]):
        result = CliRunner().invoke(cli.app, ["generate", "Hi", "--max-new-tokens", "1", *args])
        assert result.exit_code == 0, result.output
    assert asked == [(None, "int4", True, None), ("bfloat16", "auto", False, None), (None, "auto", False, "int4")]


@pytest.mark.parametrize("args, shown, unused", [(["--help"], "generate", ("torch", "numpy", "transformers")),
                                                 (["tokenize", "Hello world", "--json"], "world", ("torch",)),
                                                 (["generate", "Hello", "--max-new-tokens", "1"], "",
                                                  ("llguidance", "jinja2", "transformers"))])
def test_commands_import_what_they_need_alone(args, shown, unused):
    """--help answers without PyTorch (or numpy), tokenize with the tokenizer alone, and generate
    without a grammar or a chat template loads neither engine: each command imports what it needs
    when it runs."""
    import subprocess
    import sys

    code = (f"import sys; sys.argv = ['nexttoken', *{args!r}]; from nexttoken import cli\n"
            "try: cli.main()\nexcept SystemExit: pass\n"
            f"print(sorted(m for m in {unused!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown in result.stdout and result.stdout.strip().endswith("[]")


def test_the_built_in_model_runs_as_its_file_holds_it():
    """The default (--quantize auto) on the built-in Q4_1 model: int4, said in generate --json."""
    result = CliRunner().invoke(cli.app, ["generate", "Hello", "--max-new-tokens", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["precision"] == {"dtype": "float32", "quantize": "int4"}


def test_train_options_reach_the_recipe(monkeypatch, tmp_path):
    from nexttoken.train import run as train_run

    asked = []
    monkeypatch.setattr(train_run, "run_recipe", lambda recipe, run_dir, resume: asked.append(recipe.train)
                        or train_run.RunResult(run_dir, None, 0, ""))
    for args in (["--compile", "--precision", "fp32"], []):
        result = CliRunner().invoke(cli.app, ["train", "--run-dir", str(tmp_path), *args])
        assert result.exit_code == 0, result.output
    assert [(c.compile, c.precision) for c in asked] == [(True, "fp32"), (False, "bf16")]


@pytest.mark.parametrize("per_token", [False, True], ids=["sequence", "token"])
def test_classify_labels_texts_or_tags_words(per_token, tmp_path):
    from nexttoken.encoder.classifier import load_classifier, save_classifier
    from nexttoken.encoder.sentence import load_encoder
    from nexttoken.train.finetune import classifier_for

    encoder = load_encoder()
    labels = ["O", "PERSON"] if per_token else ["Hamlet", "Macbeth", "The Tempest"]
    folder = save_classifier(classifier_for(encoder, len(labels), per_token), encoder.path, labels, tmp_path)
    texts = ["Alas, poor Yorick!", "Out, damned spot!"]
    result = CliRunner().invoke(cli.app, ["classify", *texts, "--model", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    classifier = load_classifier(folder)
    if per_token:
        expected = [{"text": t, "words": [list(pair) for pair in classifier.tag(t)]} for t in texts]
    else:
        expected = [{"text": t, "labels": scores} for t, scores in zip(texts, classifier.classify(texts))]
    assert json.loads(result.stdout) == expected
    shown = CliRunner().invoke(cli.app, ["classify", texts[0], "--model", str(folder)]).stdout
    if per_token:
        assert "Alas" in shown and "Yorick" in shown
    else:
        assert shown.startswith(next(iter(expected[0]["labels"])))


def test_generate_streams_the_text(run, smollm2):
    output = run("generate", "The capital of France is", "--max-new-tokens", "8")
    expected = smollm2.generate(smollm2.encode("The capital of France is"), GenerationConfig(max_new_tokens=8))
    assert output == expected.text + "\n"


def test_generate_sampling_is_seeded(run):
    args = ("generate", "Once upon a time", "--temperature", "0.9", "--top-k", "40", "--top-p", "0.9",
            "--max-new-tokens", "12", "--json")
    first = json.loads(run(*args, "--seed", "5"))
    assert first == json.loads(run(*args, "--seed", "5"))
    assert first["token_ids"] != json.loads(run(*args, "--seed", "6"))["token_ids"]
    assert first["finish_reason"] == "length" and len(first["token_ids"]) == 12


def test_generate_stop_string(run):
    data = json.loads(run("generate", "Name three colors.", "--chat", "--stop", "2.", "--json"))
    assert data == {**data, "finish_reason": "stop", "text": "1. Red\n"}


def test_tokenize(run, smollm2):
    rows = json.loads(run("tokenize", "<|im_start|>user\nHello 👋<|im_end|>", "--json"))
    assert [r["id"] for r in rows] == smollm2.tokenizer.encode("<|im_start|>user\nHello 👋<|im_end|>")
    assert rows[0]["special"] and rows[0]["token"] == "<|im_start|>"
    assert not rows[1]["special"] and rows[1]["text"] == "user"
    table = run("tokenize", "Hello world")
    assert "2 tokens" in table and "'Hello'" in table and "' world'" in table


def test_next(run):
    rows = json.loads(run("next", "The capital of China is", "--json", "-k", "5"))
    assert len(rows) == 5 and rows[0]["text"] == " Beijing"
    probabilities = [r["probability"] for r in rows]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1
    table = run("next", "The capital of China is")
    assert "Beijing" in table and "%" in table


def test_chat_reads_turns_from_stdin(run, smollm2):
    output = run("chat", "--max-new-tokens", "30", "--system", "Answer briefly.", stdin="What is 2+2?\n\nAnd 3+3?\n")
    session = ChatSession(smollm2, "Answer briefly.", GenerationConfig(max_new_tokens=30))
    replies = [session.send("What is 2+2?").text, session.send("And 3+3?").text]
    assert output == "".join(reply + "\n" for reply in replies)
    assert "4" in replies[0]


def nexttoken(*args: str) -> subprocess.CompletedProcess:
    code = "from nexttoken.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (("generate", "hi", "--model", "/nowhere/model.gguf"), "error: model file not found: /nowhere/model.gguf"),
    (("generate", "hi", "--temperature", "-1"), "error: temperature must be >= 0 (0 means greedy), got -1.0"),
    (("generate", "hi", "--top-p", "0"), "error: top_p must be in (0, 1], got 0.0"),
    (("generate", "hi", "--max-new-tokens", "0"), "error: max_new_tokens must be >= 1, got 0"),
    (("generate", "hi", "--beams", "2", "--num-return-sequences", "3"), "error: num_return_sequences (3) must be <= num_beams (2)"),
    (("generate", "hi", "--early-stopping", "maybe"), "error: --early-stopping takes true, false or never; got 'maybe'"),
    (("generate", "hi", "--logit-bias", "12"), "error: --logit-bias takes ID:BIAS, e.g. 1234:-5.0; got '12'"),
    (("train", "--d-model", "30"), "error: d_model (30) must be a multiple of n_head (4)"),
])
def test_user_mistakes_are_one_line_errors(args, message):
    result = nexttoken(*args)
    assert result.returncode == 1
    assert result.stderr.strip() == message
    assert "Traceback" not in result.stderr


def test_not_a_gguf_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "weights.gguf"
    path.write_text("hello")
    result = nexttoken("next", "hi", "--model", str(path))
    assert result.returncode == 1 and result.stderr.strip() == f"error: {path}: not a GGUF file (it does not start with the bytes 'GGUF')"


def test_generate_with_beams_and_n_best(run, smollm2):
    data = json.loads(run("generate", "What is 2+2?", "--chat", "--beams", "4", "--num-return-sequences", "3",
                          "--length-penalty", "0.5", "--early-stopping", "never", "--max-new-tokens", "24", "--json"))
    config = GenerationConfig(max_new_tokens=24, num_beams=4, num_return_sequences=3, length_penalty=0.5,
                              early_stopping="never")
    expected = smollm2.generate_batch([smollm2.encode("What is 2+2?", chat=True)], config)[0]
    assert [c["token_ids"] for c in data["choices"]] == [c.token_ids for c in expected]
    assert [c["score"] for c in data["choices"]] == [c.score for c in expected]


def test_generate_logprobs(run):
    data = json.loads(run("generate", "The capital of France is", "--max-new-tokens", "3", "--logprobs", "2", "--json"))
    assert len(data["logprobs"]) == 3
    first = data["logprobs"][0]
    assert first["id"] == data["token_ids"][0] and len(first["top"]) == 2 and first["top"][0]["id"] == first["id"]
    assert first["logprob"] <= 0


def test_generate_explain(run):
    output = run("generate", "The capital of France is", "--max-new-tokens", "3", "--explain")
    assert "top candidates" in output and "' Paris'" in output and "%" in output
    beams = run("generate", "The capital of France is", "--max-new-tokens", "3", "--explain", "--beams", "2")
    assert "step 1" in beams and "step 3" in beams and "score" in beams


def test_generate_processor_options(run, smollm2):
    args = ("generate", "Count: 1, 2, 3,", "--max-new-tokens", "6", "--json")
    plain = json.loads(run(*args))
    banned = plain["token_ids"][0]
    data = json.loads(run(*args, "--ban", str(banned), "--repetition-penalty", "1.3", "--no-repeat-ngram", "2",
                          "--logit-bias", f"{banned}:5", "--min-p", "0.05", "--presence-penalty", "0.5"))
    assert banned not in data["token_ids"]
    sampled = json.loads(run(*args, "--temperature", "0.7", "--typical-p", "0.9", "--frequency-penalty", "0.3",
                             "--seed", "1", "--min-new-tokens", "6"))
    assert len(sampled["token_ids"]) == 6


def test_chat_reports_an_overlong_turn_and_goes_on(run, smollm2):
    long_line = "word " * 9000  # more tokens than the 8,192-token context window
    output = run("chat", "--max-new-tokens", "8", stdin=f"{long_line}\nWhat is 2+2?\n")
    session = ChatSession(smollm2, None, GenerationConfig(max_new_tokens=8))
    assert output.endswith(session.send("What is 2+2?").text + "\n")


@pytest.fixture
def run_encoder(minilm, monkeypatch):
    monkeypatch.setattr(cli, "load_encoder", lambda path: minilm)
    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(cli.app, list(args))
        assert result.exit_code == 0, result.output
        return result.stdout

    return invoke


def test_embed(run_encoder, minilm, tmp_path):
    vectors = json.loads(run_encoder("embed", "hello there", "general kenobi", "--json"))
    assert np.allclose(vectors, minilm.embed(["hello there", "general kenobi"]), atol=1e-6)
    run_encoder("embed", "hello there", "--output", str(tmp_path / "v.npy"))
    assert np.load(tmp_path / "v.npy", allow_pickle=False).shape == (1, 384)


def test_search_finds_the_right_passage_and_caches(run_encoder, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Paris is the capital of France.\nThe cat sat on the mat.\n"
                      "Python is a programming language.\nBananas are a yellow fruit.\n")
    args = ("search", "Which city is the French capital?", "--corpus", str(corpus), "--cache-dir", str(tmp_path / "cache"), "--json")
    hits = json.loads(run_encoder(*args))
    assert hits[0]["text"] == "Paris is the capital of France." and hits[0]["rank"] == 1
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    corpus.write_text("Tokyo is the capital of Japan.\nParis is the capital of France.\n")
    hits = json.loads(run_encoder(*args))
    assert hits[0]["index"] == 1 and len(list((tmp_path / "cache").glob("*.npy"))) == 2  # changed file, new cache


def test_encoder_errors_are_one_line(tmp_path, minilm):
    corpus = tmp_path / "empty.txt"
    corpus.write_text("\n\n")
    result = nexttoken("search", "query", "--corpus", str(corpus), "--cache-dir", str(tmp_path))
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "error:" in result.stderr
    result = nexttoken("fill", "Paris is the [MASK] of France.")
    assert result.returncode == 1 and "has no masked-LM head" in result.stderr and "Traceback" not in result.stderr
    result = nexttoken("classify", "Hi", "--model", str(minilm.path))
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "not a saved classifier" in result.stderr


def test_generate_prompt_lookup(run):
    args = ("generate", "Repeat: the cat sat on the mat, the cat sat on the mat.", "--chat", "--max-new-tokens", "20", "--json")
    assert json.loads(run(*args, "--prompt-lookup", "5")) == json.loads(run(*args))


def test_generate_and_chat_with_a_draft_model(smollm2, monkeypatch):
    given = []

    def load(path, dtype, quantize, compiled, draft):
        given.append(draft)
        return replace(smollm2, draft=DraftModel(smollm2.model))  # the model as its own draft: every guess right

    monkeypatch.setattr(cli, "load", load)
    generations = []
    for extra in ([], ["--draft", "int4", "--draft-tokens", "3"]):
        result = CliRunner().invoke(cli.app, ["generate", "Name three colors.", "--chat", "--max-new-tokens", "24",
                                              "--json", *extra])
        assert result.exit_code == 0, result.output
        generations.append(json.loads(result.stdout))
    assert generations[0] == generations[1] and given == [None, "int4"]
    result = CliRunner().invoke(cli.app, ["chat", "--draft", "int4", "--max-new-tokens", "8"], input="Hi\n")
    assert result.exit_code == 0 and result.stdout.strip(), result.output


def test_bench_json(run):
    data = json.loads(run("bench", "--prompt-tokens", "16", "--new-tokens", "4", "--batch-size", "2", "--json"))
    for key in ("prefill_tok_s", "decode_tok_s", "ttft_s", "peak_rss_mib", "bandwidth_bound_tok_s"):
        assert data[key] > 0
    assert data["batch_size"] == 2 and data["weight_mib"] > 100  # SmolLM2-135M in float32: ~540 MB read per step
    table = run("bench", "--prompt-tokens", "8", "--new-tokens", "2")
    assert "bandwidth bound" in table and "peak memory" in table


def test_ban_text_option(run):
    assert "Paris" in run("generate", "The capital of France is", "--max-new-tokens", "8")
    assert "Paris" not in run("generate", "The capital of France is", "--max-new-tokens", "8", "--ban-text", "Paris")


def test_generate_under_a_grammar_and_its_explanation(run, tmp_path):
    schema = tmp_path / "colour.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"colour": {"enum": ["red", "blue"]}},
                                  "required": ["colour"], "additionalProperties": False}))
    data = json.loads(run("generate", "Pick a colour.", "--chat", "--json", "--json-schema", str(schema)))
    assert json.loads(data["text"])["colour"] in ("red", "blue") and data["finish_reason"] == "eos"
    assert run("generate", "Is water wet?", "--chat", "--choice", "yes", "--choice", "no").strip() in ("yes", "no")
    explained = run("generate", "Pick a colour.", "--chat", "--explain", "--json-schema", schema.read_text())
    assert "forced" in explained and "ruled out by the grammar" in explained


@pytest.mark.parametrize("args, says", [
    (["--regex", "(a"], "unclosed group"),
    (["--json-schema", '{"type": "nope"}'], "Invalid type"),
    (["--json-schema", "missing.json"], "cannot read"),
    (["--regex", "a", "--json-object"], "give one grammar option"),
])
def test_a_bad_grammar_is_a_one_line_error(run, args, says):
    result = CliRunner().invoke(cli.app, ["generate", "Hi", "--max-new-tokens", "2", *args])
    assert result.exit_code != 0 and says in str(result.exception) and "\n" not in str(result.exception)
