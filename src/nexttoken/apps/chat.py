"""A multi-turn conversation that keeps its KV cache between turns: each turn re-renders the chat
template and prefills only the tokens that differ from what the cache already holds."""

from collections.abc import Callable, Iterable

from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.outputs import Completion
from nexttoken.decoding.prompts import common_prefix_length
from nexttoken.decoding.reasoning import ReasoningSplit, reasons, split_reasoning, starts_thinking
from nexttoken.pretrained import LanguageModel


class ChatSession:
    def __init__(self, lm: LanguageModel, system: str | None = None,
                 config: GenerationConfig = GenerationConfig()) -> None:
        self.lm = lm
        self.config = config
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        self.cache = lm.model.new_cache()
        self.cached_ids: list[int] = []  # the tokens whose keys and values `cache` holds

    def send(self, text: str, on_text: Callable[[str], None] | None = None,
             on_reasoning: Callable[[str], None] | None = None) -> Completion:
        """The model's reply to `text`. A reasoning model's thinking (its <think> section) goes to
        `on_reasoning` as it comes, apart from the answer, which `on_text` gets; the conversation
        keeps the answer only."""
        messages = self.messages + [{"role": "user", "content": text}]
        prompt = self.lm.chat_prompt(messages)
        prompt_ids = self.lm.tokenizer.encode(prompt)
        thinking = starts_thinking(prompt) if reasons(self.lm.tokenizer.chat_template) else None
        split = ReasoningSplit(thinking) if thinking is not None else None
        on_piece = on_text if split is None else self._splitting(split, on_text, on_reasoning)
        if self.config.num_beams > 1:  # beam search runs its own batch of beams, from the whole prompt
            completion = self.lm.generate(prompt_ids, self.config, on_text=on_piece)
        else:
            # at least one token must be fed to get a prediction
            reused = min(common_prefix_length(self.cached_ids, prompt_ids), len(prompt_ids) - 1)
            reused = self.cache.truncate(reused)
            completion = self.lm.generate(prompt_ids[reused:], self.config, self.cache, on_piece, prompt_ids[:reused])
            self.cached_ids = (prompt_ids + completion.token_ids)[: self.cache.length]
        if split is not None and on_piece is not None:
            self._deliver(split.finish(), on_text, on_reasoning)
        answer = completion.text if thinking is None else split_reasoning(completion.text, thinking)[1]
        self.messages = messages + [{"role": "assistant", "content": answer}]
        return completion

    def _splitting(self, split: ReasoningSplit, on_text: Callable[[str], None] | None,
                   on_reasoning: Callable[[str], None] | None) -> Callable[[str], None] | None:
        if on_text is None and on_reasoning is None:
            return None
        return lambda piece: self._deliver(split.feed(piece), on_text, on_reasoning)

    @staticmethod
    def _deliver(pieces: Iterable[tuple[str, str]], on_text: Callable[[str], None] | None,
                 on_reasoning: Callable[[str], None] | None) -> None:
        for kind, piece in pieces:
            sink = on_reasoning if kind == "reasoning" else on_text
            if sink is not None:
                sink(piece)
