"""The decoding options of `generate`, `chat` and `seq2seq`, derived from the declarations in
decoding/config.py: one typer option per setting, with its help, and a GenerationConfig built from
them (which checks every value) before the command runs."""

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from typing import Annotated, Any, Optional

import typer

from nexttoken.decoding.config import KEEP_NAME, GenerationConfig, Option, SamplingConfig, options_of


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
