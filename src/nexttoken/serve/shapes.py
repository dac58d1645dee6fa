"""Our results in the shapes of OpenAI's response objects: finish reasons, usage, the logprobs of
/v1/completions and of /v1/chat/completions, embedding vectors. Chat messages and their deltas
are serve/replies.py's."""

import base64

import numpy as np

from nexttoken.decoding.outputs import Completion
from nexttoken.tokenizer import Tokenizer


def finish_reason(completion: Completion) -> str:
    return "length" if completion.finish_reason == "length" else "stop"


def usage(prompt_tokens: int, completions: list[Completion]) -> dict:
    generated = sum(len(c.token_ids) for c in completions)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": generated, "total_tokens": prompt_tokens + generated}


def completion_logprobs(tokenizer: Tokenizer, completion: Completion, top: int) -> dict:
    steps = completion.steps[: len(completion.token_ids)]  # not the end token
    tokens = [tokenizer.decode([s.chosen.token_id]) for s in steps]
    return {"tokens": tokens, "token_logprobs": [s.chosen.logprob for s in steps],
            "top_logprobs": [{tokenizer.decode([t.token_id]): t.logprob for t in s.top[:top]} for s in steps],
            "text_offset": [sum(map(len, tokens[:i])) for i in range(len(tokens))]}


def chat_logprobs(tokenizer: Tokenizer, completion: Completion, top: int) -> dict:
    def entry(token_id: int, logprob: float) -> dict:
        # a token holding part of a character is spelled by its bytes (<0xE4><0xB8>); `bytes` are its own
        return {"token": tokenizer.token_text(token_id), "logprob": logprob,
                "bytes": list(tokenizer.token_bytes(token_id)), "id": token_id}  # id: ours

    return {"content": [{**entry(s.chosen.token_id, s.chosen.logprob),
                         "top_logprobs": [entry(t.token_id, t.logprob) for t in s.top[:top]]}
                        for s in completion.steps[: len(completion.token_ids)]]}


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # little-endian float32 bytes
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
