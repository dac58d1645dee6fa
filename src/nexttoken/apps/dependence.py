"""What the next token depends on, in one report: the knockout table (apps.knockout), the last
position's attention with the sink taken apart, and the heads that look most at the tokens the
knockout found decisive. The CLI prints it, the server returns it as JSON."""

from dataclasses import dataclass

import torch

from nexttoken.apps.attention import HeadLook, last_token_attention, split_sink, strongest_heads
from nexttoken.apps.knockout import Knocked, KnockoutTable, knockout
from nexttoken.errors import NextTokenError
from nexttoken.model.transformer import Transformer
from nexttoken.tokenizer import Tokenizer

N_HEADS = 5  # heads a report lists


@dataclass(frozen=True)
class TargetChoice:
    id: int
    n_tokens: int  # what the text split into; only the first is measured


def target_token(tokenizer: Tokenizer, text: str) -> TargetChoice:
    """The token a target text names: its first, when the tokenizer splits it."""
    ids = tokenizer.encode(text, add_bos=False, add_eos=False)
    if not ids:
        raise NextTokenError("the target is empty: give the text of the next token to measure, as in ' Beijing'")
    return TargetChoice(ids[0], len(ids))


@dataclass(frozen=True)
class Dependence:
    ids: list[int]  # the prompt
    table: KnockoutTable
    maps: torch.Tensor  # (n_layer, n_head, T) the last position's attention
    heads: list[HeadLook]

    def by_effect(self) -> list[Knocked]:
        """The knockouts, the most damaging first."""
        return sorted(self.table.without, key=lambda k: k.p)

    def sink_share(self) -> torch.Tensor:
        """(n_layer,) the first token's share of the last position's attention, mean over heads."""
        return split_sink(self.maps.mean(dim=1))[0]


def dependence(model: Transformer, ids: list[int], target: int | None = None, n_heads: int = N_HEADS) -> Dependence:
    """Knock out each earlier token of `ids`, read the last position's attention, and find the
    heads that look at the decisive tokens."""
    table = knockout(model, ids, target)
    maps = last_token_attention(model, ids)
    decisive = table.decisive()
    return Dependence(ids, table, maps, strongest_heads(maps, decisive, n_heads) if decisive else [])


def dependence_json(report: Dependence, tokenizer: Tokenizer) -> dict:
    """The report as plain data: knockouts the most damaging first, weights per position."""
    def rows(knocked: list[Knocked]) -> list[dict]:
        return [{"position": k.position, "text": tokenizer.token_text(report.ids[k.position]), "p": k.p} for k in knocked]

    table = report.table
    return {"target": {"id": table.target, "text": tokenizer.token_text(table.target), "p": table.p},
            "knockout": rows(report.by_effect()),
            "only": rows(sorted(table.only, key=lambda k: -k.p)),
            "decisive": table.decisive(),
            "sink_share": report.sink_share().tolist(),
            "heads": [{"layer": h.layer, "head": h.head, "sink": h.sink, "weights": h.weights} for h in report.heads]}
