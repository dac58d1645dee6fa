"""The OpenAI API's request bodies, validated: a bad field is an HTTP 400 that names it.

Extensions beyond OpenAI's fields: `top_k`, `min_p`, `repetition_penalty`, `min_tokens`,
`num_beams`, `length_penalty` (beam search returns the `n` best beams)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.config import SamplingConfig


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=8)
    stream: bool = False
    stream_options: dict | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[int, float] | None = None
    user: str | None = None
    # extensions
    top_k: int = Field(default=0, ge=0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    num_beams: int = Field(default=1, ge=1, le=8)
    length_penalty: float = 1.0
    min_tokens: int = Field(default=0, ge=0)  # end tokens are suppressed until this many (as vLLM's)

    def generation_config(self, max_tokens: int, top_logprobs: int) -> GenerationConfig:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        beams = self.num_beams > 1
        sampling = SamplingConfig(
            temperature=0.0 if beams else self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed,
            min_p=self.min_p, repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, logit_bias=self.logit_bias or {}, min_new_tokens=self.min_tokens)
        return GenerationConfig(max_new_tokens=max_tokens, stop_strings=tuple(stops),
                                sampling=sampling, num_beams=self.num_beams, length_penalty=self.length_penalty,
                                num_return_sequences=self.n, top_logprobs=top_logprobs)


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: Literal[False] = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"  # base64: little-endian float32 bytes
    user: str | None = None
