"""The `nexttoken` command: parses arguments and calls the library; nothing else."""

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from nexttoken.chat import ChatSession
from nexttoken.decoding.generate import GenerationConfig
from nexttoken.decoding.sampling import SamplingConfig
from nexttoken.errors import NextTokenError
from nexttoken.pretrained import LanguageModel, load

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run, read and inspect a language model: every layer, cache and decoding step is ours.")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

ModelOption = Annotated[Optional[Path], typer.Option("--model", "-m", help="A GGUF file (default: the built-in SmolLM2-135M-Instruct).")]
MaxNewTokens = Annotated[int, typer.Option(help="Stop after this many new tokens.")]
Temperature = Annotated[float, typer.Option(help="Sampling temperature; 0 picks the most likely token (greedy).")]
TopK = Annotated[int, typer.Option(help="Sample only among the K most likely tokens (0: all).")]
TopP = Annotated[float, typer.Option(help="Sample only among the most likely tokens whose probabilities add up to P.")]
Seed = Annotated[Optional[int], typer.Option(help="Seed for sampling, for reproducible output.")]
Stop = Annotated[Optional[list[str]], typer.Option("--stop", help="Stop when this text appears (repeatable).")]
System = Annotated[Optional[str], typer.Option(help="System prompt for the chat template.")]


def _load(model: Path | None) -> LanguageModel:
    with err.status("loading the model…") if err.is_terminal else _nothing():
        return load(model)


class _nothing:
    def __enter__(self) -> None: ...
    def __exit__(self, *exc: object) -> None: ...


def _config(max_new_tokens: int, temperature: float, top_k: int, top_p: float, seed: int | None,
            stop: list[str] | None) -> GenerationConfig:
    return GenerationConfig(max_new_tokens, tuple(stop or ()), SamplingConfig(temperature, top_k, top_p, seed))


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


@app.command()
def generate(prompt: str, model: ModelOption = None, max_new_tokens: MaxNewTokens = 256,
             temperature: Temperature = 0.0, top_k: TopK = 0, top_p: TopP = 1.0, seed: Seed = None,
             stop: Stop = None, chat: Annotated[bool, typer.Option(help="Wrap the prompt in the chat template.")] = False,
             system: System = None, json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Continue PROMPT, streaming the new text as it is produced."""
    config = _config(max_new_tokens, temperature, top_k, top_p, seed, stop)
    lm = _load(model)
    prompt_ids = lm.encode(prompt, chat=chat, system=system)
    completion = lm.generate(prompt_ids, config, on_text=None if json_output else _write)
    if json_output:
        print(json.dumps({"text": completion.text, "token_ids": completion.token_ids,
                          "finish_reason": completion.finish_reason}, ensure_ascii=False))
    else:
        _write("\n")


@app.command()
def chat(model: ModelOption = None, system: System = None, max_new_tokens: MaxNewTokens = 512,
         temperature: Temperature = 0.0, top_k: TopK = 0, top_p: TopP = 1.0, seed: Seed = None,
         stop: Stop = None) -> None:
    """Talk with the model. Each line from standard input is one user turn when it is not a terminal."""
    session = ChatSession(_load(model), system, _config(max_new_tokens, temperature, top_k, top_p, seed, stop))
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
        session.send(line, on_text=_write)
        _write("\n")


@app.command()
def tokenize(text: str, model: ModelOption = None,
             json_output: Annotated[bool, typer.Option("--json", help="Print one JSON list.")] = False) -> None:
    """Show how TEXT is cut into tokens: each token's text, id, and whether it is special."""
    lm = _load(model)
    ids = lm.tokenizer.encode(text)
    rows = [{"id": i, "token": lm.tokenizer.id_to_token(i), "text": lm.tokenizer.decode([i]),
             "special": lm.tokenizer.is_special(i)} for i in ids]
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
               json_output: Annotated[bool, typer.Option("--json", help="Print one JSON list.")] = False) -> None:
    """The model's top candidates for the token after PROMPT, with their probabilities."""
    lm = _load(model)
    candidates = lm.next_token_candidates(lm.encode(prompt, chat=chat), top)
    if json_output:
        print(json.dumps([{"id": c.token_id, "text": lm.tokenizer.decode([c.token_id]), "probability": c.probability}
                          for c in candidates], ensure_ascii=False))
        return
    table = Table(title=f"next token after {prompt!r}")
    for column, justify in (("rank", "right"), ("id", "right"), ("text", "left"), ("probability", "right"), ("", "left")):
        table.add_column(column, justify=justify)
    for rank, c in enumerate(candidates, 1):
        table.add_row(str(rank), str(c.token_id), repr(lm.tokenizer.decode([c.token_id])), f"{c.probability:.2%}",
                      "█" * round(c.probability * 30))
    out.print(table)


def main() -> None:
    try:
        app()
    except NextTokenError as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise SystemExit(1) from None
