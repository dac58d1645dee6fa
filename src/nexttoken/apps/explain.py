"""Showing what decoding did: each step's candidates and choice, the live beams, and JSON records."""

import math

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nexttoken.decoding.beam import Beam
from nexttoken.decoding.outputs import Completion, Step, TokenLogprob
from nexttoken.tokenizer import Tokenizer

EXPLAIN_CANDIDATES = 5  # alternatives shown per step by --explain


def _piece(tokenizer: Tokenizer, token_id: int) -> str:
    """A token's text, quoted, with rich markup characters escaped."""
    return escape(repr(tokenizer.token_text(token_id)))


def _candidate(tokenizer: Tokenizer, candidate: TokenLogprob, step: Step) -> str:
    """A candidate and its probability: bold when chosen, struck out when the grammar ruled it out."""
    text = f"{_piece(tokenizer, candidate.token_id)} {math.exp(candidate.logprob):.1%}"
    if candidate.token_id in step.barred:
        return f"[strike dim]{text}[/strike dim]"
    return f"[bold]{text}[/bold]" if candidate.token_id == step.chosen.token_id else text


def steps_table(completion: Completion, tokenizer: Tokenizer) -> Table:
    """One row per step: the chosen token with its probability, and the best candidates; under a
    grammar, those it ruled out are struck out, and the tokens it forced are marked so."""
    title = "decoding steps (probabilities from the model, before any sampling filter)"
    if any(step.barred or step.forced for step in completion.steps):
        title += "; struck out: ruled out by the grammar"
    table = Table(title=title)
    for column in ("step", "chosen", "p", "top candidates"):
        table.add_column(column, justify="right" if column in ("step", "p") else "left")
    for n, step in enumerate(completion.steps, 1):
        if step.forced:
            table.add_row(str(n), _piece(tokenizer, step.chosen.token_id), "forced",
                          "[dim](the grammar allows nothing else; fed with the step before)[/dim]", end_section=False)
            continue
        candidates = "  ".join(_candidate(tokenizer, c, step) for c in step.top)
        table.add_row(str(n), _piece(tokenizer, step.chosen.token_id), f"{math.exp(step.chosen.logprob):.1%}",
                      candidates, end_section=False)
    return table


def sequence_heading(n: int, completion: Completion) -> str:
    score = f", score {completion.score:.4f}" if completion.score is not None else ""
    return f"[bold]sequence {n}[/bold] ({completion.finish_reason}, {len(completion.token_ids)} tokens{score})"


class BeamPrinter:
    """Prints the live beams (summed log-probability and text) after each beam-search step."""

    def __init__(self, tokenizer: Tokenizer, console: Console) -> None:
        self.tokenizer = tokenizer
        self.console = console

    def __call__(self, prompt: int, step: int, running: list[Beam], finished: list[Beam]) -> None:
        self.console.print(f"[bold]step {step + 1}[/bold]")
        for beam in running:
            self.console.print(f"  {beam.score:9.4f}  {escape(repr(self.tokenizer.decode(beam.token_ids)))}")
        for beam in finished:
            self.console.print(f"  [dim]{beam.score:9.4f}  {escape(repr(self.tokenizer.decode(beam.token_ids)))} (finished)[/dim]")


def _logprob_json(tokenizer: Tokenizer, record: TokenLogprob) -> dict:
    return {"id": record.token_id, "token": tokenizer.token_text(record.token_id), "logprob": record.logprob}


def completion_json(completion: Completion, tokenizer: Tokenizer, top_logprobs: int) -> dict:
    """What `generate --json` prints for one sequence; `logprobs` only when asked for."""
    data = {"text": completion.text, "token_ids": completion.token_ids, "finish_reason": completion.finish_reason}
    if completion.score is not None:
        data["score"] = completion.score
    if top_logprobs:
        data["logprobs"] = [{**_logprob_json(tokenizer, step.chosen),
                             "top": [_logprob_json(tokenizer, c) for c in step.top[:top_logprobs]]}
                            for step in completion.steps]
    return data
