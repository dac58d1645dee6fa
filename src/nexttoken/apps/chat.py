"""A multi-turn conversation that keeps its KV cache between turns: each turn re-renders the chat
template and prefills only the tokens that differ from what the cache already holds."""

from collections.abc import Callable

from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.outputs import Completion
from nexttoken.decoding.prompts import common_prefix_length
from nexttoken.pretrained import LanguageModel


class ChatSession:
    def __init__(self, lm: LanguageModel, system: str | None = None,
                 config: GenerationConfig = GenerationConfig()) -> None:
        self.lm = lm
        self.config = config
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        self.cache = lm.model.new_cache()
        self.cached_ids: list[int] = []  # the tokens whose keys and values `cache` holds

    def send(self, text: str, on_text: Callable[[str], None] | None = None) -> Completion:
        messages = self.messages + [{"role": "user", "content": text}]
        prompt_ids = self.lm.tokenizer.encode(self.lm.chat_prompt(messages))
        if self.config.num_beams > 1:  # beam search runs its own batch of beams, from the whole prompt
            completion = self.lm.generate(prompt_ids, self.config, on_text=on_text)
        else:
            # at least one token must be fed to get a prediction
            reused = min(common_prefix_length(self.cached_ids, prompt_ids), len(prompt_ids) - 1)
            reused = self.cache.truncate(reused)
            completion = self.lm.generate(prompt_ids[reused:], self.config, self.cache, on_text, prompt_ids[:reused])
            self.cached_ids = (prompt_ids + completion.token_ids)[: self.cache.length]
        self.messages = messages + [{"role": "assistant", "content": completion.text}]
        return completion
