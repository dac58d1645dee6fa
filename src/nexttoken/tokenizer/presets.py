"""Chat formats a new tokenizer can be trained for: each names its special tokens, the token that
ends an assistant turn, and a Jinja chat template that renders a conversation as the models that
use the format were trained on it.

Formats, as their model cards and tokenizer_config.json files spell them:
- chatml: ChatML (OpenAI), as SmolLM2 and Qwen use it: `<|im_start|>role\\ncontent<|im_end|>\\n`.
- llama3: Meta Llama 3: `<|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>`.
- deepseek: DeepSeek-V3 / R1: `<｜User｜>content<｜Assistant｜>content<｜end▁of▁sentence｜>`.
- gpt: GPT-2's single `<|endoftext|>` between documents, and no chat format.
"""

from dataclasses import dataclass

from nexttoken.errors import NextTokenError


@dataclass(frozen=True)
class ChatFormat:
    name: str
    bos: str  # starts a document (and a rendered conversation, when `adds_bos`)
    eos: str  # ends a document
    end_of_turn: str  # ends an assistant turn: what generation stops on
    pad: str
    mask: str  # the token masked-LM inputs and noising put in place of hidden tokens
    markers: tuple[str, ...]  # the chat template's role markers
    chat_template: str | None
    adds_bos: bool  # encoding a text starts it with `bos`, as Llama 3 and DeepSeek tokenizers do

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """Every special token once, in the order they take the first ids."""
        named = (self.bos, self.eos, self.end_of_turn, *self.markers, self.pad, self.mask)
        return tuple(dict.fromkeys(named))


# No default system prompt (SmolLM2's template adds one; Qwen's another): a trained tokenizer has
# no persona to give.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Llama 3 Instruct's template: BOS once, then each turn with its header; contents are trimmed.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# DeepSeek-V3's template without tool calls: the system prompt bare after BOS, then User and
# Assistant markers, each assistant turn closed by the end-of-sentence token.
DEEPSEEK_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}"
    "{% else %}{{ raise_exception('roles are system, user and assistant; got ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)

PRESETS = {
    "chatml": ChatFormat("chatml", bos="<|endoftext|>", eos="<|endoftext|>", end_of_turn="<|im_end|>",
                         pad="<|pad|>", mask="<|mask|>", markers=("<|im_start|>",),
                         chat_template=CHATML_TEMPLATE, adds_bos=False),
    "llama3": ChatFormat("llama3", bos="<|begin_of_text|>", eos="<|end_of_text|>", end_of_turn="<|eot_id|>",
                         pad="<|finetune_right_pad_id|>", mask="<|mask|>",
                         markers=("<|start_header_id|>", "<|end_header_id|>"),
                         chat_template=LLAMA3_TEMPLATE, adds_bos=True),
    "deepseek": ChatFormat("deepseek", bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>",
                           end_of_turn="<｜end▁of▁sentence｜>", pad="<｜▁pad▁｜>", mask="<｜mask｜>",
                           markers=("<｜User｜>", "<｜Assistant｜>"),
                           chat_template=DEEPSEEK_TEMPLATE, adds_bos=True),
    "gpt": ChatFormat("gpt", bos="<|endoftext|>", eos="<|endoftext|>", end_of_turn="<|endoftext|>",
                      pad="<|pad|>", mask="<|mask|>", markers=(), chat_template=None, adds_bos=False),
}


def chat_format(name: str) -> ChatFormat:
    if name not in PRESETS:
        raise NextTokenError(f"unknown chat format {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[name]
