"""A ready-to-use language model: weights, tokenizer and the typed functions the CLI calls."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from nexttoken.accel.precision import Precision, load_dtype, resolve_precision, set_precision
from nexttoken.accel.steps import decode_step
from nexttoken.decoding.beam import BeamObserver
from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.generate import generate, generate_batch
from nexttoken.decoding.outputs import Completion
from nexttoken.decoding.prompts import check_prompt
from nexttoken.decoding.speculative import DraftModel
from nexttoken.errors import NextTokenError
from nexttoken.loaders.gguf import load_gguf_model
from nexttoken.loaders.gguf_file import read_gguf
from nexttoken.loaders.safetensors import load_hf_model, stored_matrix_type
from nexttoken.loaders.tokenizer_file import builtin_model_path, gguf_tokenizer
from nexttoken.model.kv_cache import KVCache
from nexttoken.model.transformer import DecodeStep, Transformer
from nexttoken.packaged import model_path
from nexttoken.tokenizer import Tokenizer


@dataclass(frozen=True)
class Candidate:
    token_id: int
    token: str
    probability: float


@dataclass
class LanguageModel:
    model: Transformer
    tokenizer: Tokenizer
    path: Path
    draft: DraftModel | None = None  # guesses tokens for speculative decoding (GenerationConfig.draft_tokens)
    step: DecodeStep | None = None  # what decoding calls for each pass (accel.steps); None: model.next_scores
    precision: Precision = Precision()  # what it computes in and keeps its weights as

    def __post_init__(self) -> None:
        if self.step is None:
            self.step = self.model.next_scores

    @property
    def end_ids(self) -> tuple[int, ...]:
        return self.tokenizer.end_ids

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def encode(self, prompt: str, chat: bool = False, system: str | None = None) -> list[int]:
        """Token ids for a raw prompt, or for one user turn wrapped in the chat template."""
        if chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            # templates that write BOS themselves (Llama 3, DeepSeek) must not get a second one
            return self.tokenizer.encode(self.chat_prompt(messages), add_bos=False if self.template_has_bos else None)
        return self.tokenizer.encode(prompt)

    @property
    def template_has_bos(self) -> bool:
        return self.tokenizer.bos_id is not None and "bos_token" in (self.tokenizer.chat_template or "")

    def generate(self, prompt_ids: list[int], config: GenerationConfig = GenerationConfig(),
                 cache: KVCache | None = None, on_text: Callable[[str], None] | None = None,
                 cached_ids: Sequence[int] = ()) -> Completion:
        """Continue `prompt_ids`; `cache` may hold earlier context, whose tokens `cached_ids` lists."""
        return generate(self.model, self.tokenizer, prompt_ids, self.end_ids, config, cache, on_text, self.draft,
                        cached_ids, self.step, self.text_ids)

    def generate_batch(self, prompts: list[list[int]], config: GenerationConfig = GenerationConfig(),
                       on_beams: BeamObserver | None = None) -> list[list[Completion]]:
        """`config.num_return_sequences` completions for each prompt, all prompts in one batch."""
        return generate_batch(self.model, self.tokenizer, prompts, self.end_ids, config, self.pad_id, on_beams=on_beams,
                              draft=self.draft, step=self.step, encode=self.text_ids)

    def text_ids(self, text: str) -> list[int]:
        """The tokens that write `text`, without the special tokens a prompt starts or ends with."""
        return self.tokenizer.encode(text, add_bos=False, add_eos=False)

    @property
    def pad_id(self) -> int:
        """Fills the left of shorter prompts in a batch; masked, so any id works."""
        return self.tokenizer.pad_id if self.tokenizer.pad_id is not None else self.end_ids[0]

    @torch.inference_mode()
    def next_token_candidates(self, prompt_ids: list[int], k: int = 10) -> list[Candidate]:
        """The k most probable next tokens: the model scores every token of its vocabulary."""
        check_prompt(len(prompt_ids), 0, self.model.config.max_seq_len)
        hidden = self.model.hidden_states(torch.tensor([prompt_ids]))[:, -1]  # (1, d_model)
        probs = self.model.head(hidden)[0].float().softmax(dim=-1)  # (V,)
        top = torch.topk(probs, min(k, probs.shape[0]))
        return [Candidate(int(i), self.tokenizer.id_to_token(int(i)), float(p))
                for p, i in zip(top.values, top.indices)]


def load(path: str | Path | None = None, dtype: str | None = None, quantize: str = "auto",
         compiled: bool = False, draft: str | Path | None = None, huge_pages: bool = False) -> LanguageModel:
    """Load a GGUF file, a Hugging Face folder (config.json, model.safetensors, tokenizer.json) or
    a packaged model by its short name (packaged.MODELS: "gemma3-270m"; the built-in
    SmolLM2-135M-Instruct when `path` is None), with a compiled decode step when `compiled`
    (accel.steps.decode_step chooses it).

    By default it runs as the file holds its weights (`quantize="auto"`: a Q4_1 or Q4_0 file in
    int4, Q8_0 in int8, float16 or bfloat16 in bfloat16, float32 in float32; accel.precision);
    `dtype="float32"` alone is the reference, computing in float32 on float32 weights. Otherwise
    it computes in `dtype` ("float32" or "bfloat16"; float32 unless named), with linear weights
    kept as `quantize` says ("none", "int8" or "int4"). Q4_0, Q4_1 and Q8_0 matrices go from the
    file into the int4 or int8 kernels' groups as they are (loaders/gguf_groups.py).

    `huge_pages` copies every weight into huge-page memory (accel/memory.py), which shortens decode
    steps by a sixth for the copy's time at the start: worth it for a server or a long run (the
    int4/int8 groups built from a file's blocks are there without it).

    `draft`, for speculative decoding: "int4" (this model with int4 weights, which agrees with
    float32 on nearly every next token: docs/precision.md), or the path of a model with the same vocabulary, loaded
    like this one."""
    path = model_path(path) if path is not None else builtin_model_path()
    if path.is_dir():
        precision = resolve_precision(stored_matrix_type(path), dtype, quantize)
        model, _, _ = load_hf_model(path, load_dtype(precision.dtype, precision.quantize))
        if not model.config.causal:
            raise NextTokenError(f"{path}: an encoder, not a language model (see `nexttoken embed`)")
        tokenizer = Tokenizer.from_hf_folder(path)
    else:
        file = read_gguf(path)
        precision = resolve_precision(file.matrix_type().name, dtype, quantize)
        bits = None if precision.quantize == "none" else int(precision.quantize.removeprefix("int"))
        tokenizer = gguf_tokenizer(file)  # first: the memory its build frees goes back before the weights' peak
        model, _ = load_gguf_model(file, load_dtype(precision.dtype, precision.quantize), bits)
    model = set_precision(model, precision.dtype, precision.quantize, huge_pages)
    draft_model = None
    if draft is not None:
        drafter = (load(path, quantize="int4", compiled=compiled, huge_pages=huge_pages) if str(draft) == "int4"
                   else load(draft, dtype, quantize, compiled, huge_pages=huge_pages))
        if drafter.tokenizer.tokens != tokenizer.tokens:
            raise NextTokenError(f"{draft}: the draft model's vocabulary is not the model's; "
                                 "a draft must share its tokenizer")
        draft_model = DraftModel(drafter.model, drafter.step)
    return LanguageModel(model, tokenizer, path, draft_model, decode_step(model, compiled), precision)
