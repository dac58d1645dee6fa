"""Render a model's chat template (a Jinja string from its GGUF metadata) the way Hugging Face does:
a sandboxed environment with trim_blocks and lstrip_blocks, and the variables HF templates expect."""

from functools import lru_cache

import jinja2
import jinja2.ext
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from nexttoken.errors import NextTokenError

TEMPLATE_KEY = "tokenizer.chat_template"


def raise_exception(message: str) -> None:
    """Called by templates to reject a conversation, e.g. one whose roles do not alternate."""
    raise NextTokenError(f"chat template ({TEMPLATE_KEY}) rejected the messages: {message}")


@lru_cache(maxsize=8)
def compile_chat_template(template: str) -> jinja2.Template:
    # Templates come from downloaded files, so they run sandboxed: no attribute access to internals,
    # no mutation of the values passed in.
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    environment.globals["raise_exception"] = raise_exception
    try:
        return environment.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise NextTokenError(
            f"chat template ({TEMPLATE_KEY}): syntax error on line {exc.lineno}: {exc.message}"
        ) from None


@lru_cache(maxsize=8)
def template_renders_tools(template: str | None) -> bool:
    """Whether a template reads the `tools` it is given (Qwen, Hermes, Llama 3.1 have a section of
    their own for them); SmolLM2's does not."""
    if template is None:
        return False
    environment = compile_chat_template(template).environment
    return "tools" in jinja2.meta.find_undeclared_variables(environment.parse(template))


def render_chat_template(
    template: str | None,
    messages: list[dict],
    *,
    add_generation_prompt: bool,
    bos_token: str,
    eos_token: str,
    tools: list[dict] | None = None,
) -> str:
    """`tools` (OpenAI's function declarations) go to templates that render them themselves."""
    if template is None:
        raise NextTokenError(f"this model has no chat template ({TEMPLATE_KEY} is missing from its metadata)")
    compiled = compile_chat_template(template)
    try:
        return compiled.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            tools=tools,
        )
    except jinja2.TemplateError as exc:
        raise NextTokenError(f"chat template ({TEMPLATE_KEY}) failed to render: {exc}") from None
