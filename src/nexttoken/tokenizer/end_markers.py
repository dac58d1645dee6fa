"""Which tokens end generation: the ids a tokenizer declares, and the control tokens llama.cpp
ends on by their text."""

from collections.abc import Iterable

# llama.cpp stops on these whichever id the file names as EOS, so a model that ends its answer with
# <|endoftext|> instead of its chat end marker still stops.
END_MARKERS = frozenset(
    {
        "<|endoftext|>",
        "<|im_end|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<|end|>",
        "<end_of_turn>",
        "<|end_of_text|>",
        "<｜end▁of▁sentence｜>",
    }
)


def end_of_generation_ids(
    declared_ids: Iterable[int | None], tokens: list[str], control_ids: frozenset[int]
) -> tuple[int, ...]:
    named_by_text = {token_id for token_id in control_ids if tokens[token_id] in END_MARKERS}
    declared = {token_id for token_id in declared_ids if token_id is not None}
    return tuple(sorted(declared | named_by_text))
