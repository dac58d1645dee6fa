"""The decoding options of `generate`, `chat` and `seq2seq`, derived from the declarations in
decoding/config.py: one typer option per setting, with its help, and a GenerationConfig built from
them (which checks every value) before the command runs. The grammar options (`grammar_options`)
are the CLI's own: they read files and name the kind of grammar in the flag."""

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from nexttoken.decoding.config import KEEP_NAME, GenerationConfig, Option, SamplingConfig, options_of
from nexttoken.decoding.grammar import Grammar
from nexttoken.errors import InvalidGrammar


def cli_type(annotation: Any, spec: Option) -> Any:
    """The type typer parses an option's text into; repeatable options are lists."""
    if spec.parse is not None:
        return str if typing.get_origin(annotation) is not Mapping else Optional[list[str]]
    if typing.get_origin(annotation) is tuple:
        return Optional[list[typing.get_args(annotation)[0]]]
    return annotation


def cli_value(annotation: Any, spec: Option, value: Any) -> Any:
    """The setting's value from what typer parsed."""
    if spec.parse is not None and typing.get_origin(annotation) is Mapping:
        return dict(spec.parse(item) for item in value or ())
    if spec.parse is not None:
        return spec.parse(value)
    if typing.get_origin(annotation) is tuple:
        return tuple(value or ())
    return value


def declared(cls: type, exclude: tuple[str, ...]) -> dict[str, tuple[Any, Option, Any]]:
    """name -> (type, Option, default) of the settings of `cls` that are CLI options."""
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default if f.default_factory is MISSING else f.default_factory() for f in fields(cls)}
    return {name: (hints[name], spec, defaults[name]) for name, spec in options_of(cls).items()
            if spec.flag is not None and name not in exclude}


def cli_default(annotation: Any, spec: Option, default: Any) -> Any:
    if spec.parse is not None and typing.get_origin(annotation) is not Mapping:
        return str(default).lower()  # early_stopping: the word for it
    return None if isinstance(default, tuple | Mapping) else default


def decoding_options(exclude: tuple[str, ...] = (), **defaults: Any) -> Callable:
    """Give a command one option per decoding setting (but `exclude`d ones, with `defaults` of its
    own); the command receives them as `config`, a GenerationConfig."""
    settings = {**declared(GenerationConfig, exclude), **declared(SamplingConfig, exclude)}
    sampling_names = set(declared(SamplingConfig, exclude))

    def decorate(command: Callable) -> Callable:
        own = [p for p in inspect.signature(command).parameters.values() if p.name != "config"]
        added = []
        for name, (annotation, spec, default) in settings.items():
            flag = name.replace("_", "-") if spec.flag == KEEP_NAME else spec.flag
            option = typer.Option(f"--{flag}", help=spec.help)
            value = defaults.get(name, cli_default(annotation, spec, default))
            added.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=value,
                                           annotation=Annotated[cli_type(annotation, spec), option]))

        @functools.wraps(command)
        def run(**given: Any) -> Any:
            values = {name: cli_value(settings[name][0], settings[name][1], given.pop(name)) for name in settings}
            sampling = SamplingConfig(**{k: v for k, v in values.items() if k in sampling_names})
            config = GenerationConfig(sampling=sampling, **{k: v for k, v in values.items() if k not in sampling_names})
            return command(**given, config=config)

        run.__signature__ = inspect.Signature(
            [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind == p.POSITIONAL_OR_KEYWORD and p.default is not p.empty
             else p for p in own] + added)
        run.__annotations__ = {p.name: p.annotation for p in run.__signature__.parameters.values()}
        return run

    return decorate


GRAMMAR_OPTIONS = {
    "json_schema": typer.Option("--json-schema", help="Constrain the text to a JSON Schema: a file, or the schema itself."),
    "json_object": typer.Option("--json-object", help="Constrain the text to a JSON object (any)."),
    "regex": typer.Option("--regex", help="Constrain the text to match a regular expression."),
    "choice": typer.Option("--choice", help="Constrain the text to one of these strings (repeatable)."),
    "lark": typer.Option("--grammar", help="Constrain the text to a Lark grammar file (llguidance's dialect)."),
}
GRAMMAR_TYPES = {"json_schema": Optional[str], "json_object": bool, "regex": Optional[str],
                 "choice": Optional[list[str]], "lark": Optional[Path]}


def read_source(value: str, flag: str) -> str:
    """`value` itself when it reads as JSON (it starts with '{'), else the text of the file it names."""
    if value.lstrip().startswith("{"):
        return value
    try:
        return Path(value).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidGrammar(flag, f"--{flag.replace('_', '-')}: cannot read {value!r} ({exc.strerror or exc})") from None


def grammar_of(json_schema: str | None = None, json_object: bool = False, regex: str | None = None,
               choice: list[str] | None = None, lark: Path | None = None) -> Grammar | None:
    """The grammar the options name; at most one of them."""
    given = {"--json-schema": json_schema, "--json-object": json_object or None, "--regex": regex,
             "--choice": choice or None, "--grammar": lark}
    named = [flag for flag, value in given.items() if value is not None]
    if len(named) > 1:
        raise InvalidGrammar("grammar", f"{' and '.join(named)}: give one grammar option, not several")
    if json_schema is not None:
        return Grammar.json_schema(read_source(json_schema, "json_schema"))
    if json_object:
        return Grammar.json_object()
    if regex is not None:
        return Grammar.regex(regex)
    if choice:
        return Grammar.choice(choice)
    if lark is not None:
        return Grammar.lark(read_source(str(lark), "lark"))
    return None


def grammar_options(command: Callable) -> Callable:
    """Give a command (decorated by `decoding_options`) the grammar options; the grammar they name
    goes into its `config`."""
    own = list(inspect.signature(command).parameters.values())

    @functools.wraps(command)
    def run(**given: Any) -> Any:
        grammar = grammar_of(**{name: given.pop(name) for name in GRAMMAR_OPTIONS})
        if grammar is not None:
            given["config"] = replace(given["config"], grammar=grammar)
        return command(**given)

    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=False if name == "json_object" else None,
                               annotation=Annotated[GRAMMAR_TYPES[name], option])
             for name, option in GRAMMAR_OPTIONS.items()]
    run.__signature__ = inspect.Signature(own + added)
    run.__annotations__ = {p.name: p.annotation for p in run.__signature__.parameters.values()}
    return run
