"""Generation as the library calls it: prompts in, completions out, through the engine (engine.py),
which prefills the prompts, then feeds back the chosen tokens until an end token, a stop string,
the token budget or the context window ends each sequence.

Prompts of different lengths share one batch, left-padded; `num_return_sequences` samples of one
prompt share its prefill; beam search and speculative decoding are modes of the same engine."""

from collections.abc import Callable, Iterable, Sequence

from nexttoken.decoding.beam import BeamObserver
from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.detokenize import Decoder
from nexttoken.decoding.engine import Engine, decode
from nexttoken.decoding.groups import Job
from nexttoken.decoding.outputs import Completion
from nexttoken.decoding.processors import Encode
from nexttoken.decoding.speculative import DraftModel
from nexttoken.model.kv_cache import KVCache
from nexttoken.model.transformer import DecodeStep


def generate_batch(model, tokenizer: Decoder, prompts: list[list[int]], end_ids: Iterable[int],
                   config: GenerationConfig = GenerationConfig(), pad_id: int = 0, cache: KVCache | None = None,
                   on_text: Callable[[str], None] | None = None,
                   on_beams: BeamObserver | None = None, draft: DraftModel | None = None,
                   cached_ids: Sequence[int] = (), step: DecodeStep | None = None,
                   encode: Encode | None = None) -> list[list[Completion]]:
    """Continue every prompt; returns `num_return_sequences` completions per prompt.

    `cache` may hold earlier context that a single prompt continues (a chat turn; not with beam
    search, which starts from the whole prompt), whose tokens `cached_ids` lists for speculative
    decoding to draft from; `on_text` streams the text of a single sequence as it becomes final
    (beam search knows it only at the end); `on_beams` sees the live and finished beams after every
    beam-search step; `draft` guesses tokens for `config.draft_tokens`; `step` feeds tokens through
    the cache (a compiled step; default the model's own); `encode` finds the tokens of
    `config.sampling.ban_text`."""
    single = len(prompts) * config.num_return_sequences == 1
    job = Job(prompts, config, on_text=(lambda index, piece: on_text(piece)) if on_text and single else None,
              on_beams=on_beams, context=list(cached_ids))
    engine = Engine(model, tokenizer, end_ids, pad_id, step, draft, encode)
    return decode(engine, job, cache if config.num_beams == 1 else None)


def generate(model, tokenizer: Decoder, prompt_ids: list[int], end_ids: Iterable[int],
             config: GenerationConfig = GenerationConfig(), cache: KVCache | None = None,
             on_text: Callable[[str], None] | None = None, draft: DraftModel | None = None,
             cached_ids: Sequence[int] = (), step: DecodeStep | None = None,
             encode: Encode | None = None) -> Completion:
    """Continue one prompt; `on_text` receives the text as it becomes final."""
    return generate_batch(model, tokenizer, [prompt_ids], end_ids, config, cache=cache, on_text=on_text,
                          draft=draft, cached_ids=cached_ids, step=step, encode=encode)[0][0]
