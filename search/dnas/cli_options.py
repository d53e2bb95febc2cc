"""`SearchConfig` fields as command-line options, for argparse (`python -m search.run`, what torchrun starts)
and for typer (`dnas search`), plus the way back from a config to an argument list.

Both command lines are generated from the dataclass, so every setting reaches them with its real default,
booleans as `--x/--no-x`, and a new field needs no CLI edit. `config_to_argv` spells out every setting, so
the process `dnas search` starts parses exactly the config the user asked for.
"""

from __future__ import annotations

import argparse
import inspect
import types
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal

from search.dnas.config import SearchConfig

REPEATED = -1


@dataclass(frozen=True)
class ConfigOption:
    """One field of SearchConfig, seen as a command-line option."""

    name: str
    base: type  # int, float, str, bool or tuple
    default: Any
    help: str
    optional: bool = False  # `X | None`
    choices: tuple[str, ...] | None = None  # Literal[...]
    arity: int = 1  # tuple[float, float] -> 2; tuple[float, ...] -> REPEATED (the option may be given repeatedly)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def envvar(self) -> str:
        return "DNAS_SEARCH_" + self.name.upper()


def _describe(name: str, hint: Any, default: Any, help_text: str) -> ConfigOption:
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint, optional, origin = args[0], True, typing.get_origin(args[0])
    if origin is Literal:
        return ConfigOption(name, str, default, help_text, optional, tuple(typing.get_args(hint)))
    if origin is tuple:
        args = typing.get_args(hint)
        arity = REPEATED if len(args) == 2 and args[1] is Ellipsis else len(args)
        return ConfigOption(name, args[0], default, help_text, optional, arity=arity)
    if hint not in (int, float, str, bool):
        raise TypeError(f"SearchConfig.{name}: no command-line form for {hint!r}")
    return ConfigOption(name, hint, default, help_text, optional)


def config_options() -> list[ConfigOption]:
    hints = typing.get_type_hints(SearchConfig)
    out = []
    for f in fields(SearchConfig):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        out.append(_describe(f.name, hints[f.name], default, f.metadata.get("help", "")))
    return out


# ---- argparse -----------------------------------------------------------------------------------------------
def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("search settings (SearchConfig)")
    for o in config_options():
        if o.base is bool:
            group.add_argument(o.flag, action=argparse.BooleanOptionalAction, default=o.default, help=o.help)
        elif o.arity == REPEATED:  # `--x 1 --x 2` (what config_to_argv and typer write) or `--x 1 2`
            group.add_argument(o.flag, type=o.base, nargs="+", action="extend", default=o.default, help=o.help)
        elif o.arity > 1:
            group.add_argument(o.flag, type=o.base, nargs=o.arity, default=o.default, help=o.help,
                               metavar=("LO", "HI") if o.arity == 2 else None)  # fmt: skip
        else:
            group.add_argument(o.flag, type=o.base, default=o.default, choices=o.choices, help=o.help)


def config_from_namespace(ns: argparse.Namespace) -> SearchConfig:
    values = {}
    for o in config_options():
        value = getattr(ns, o.name)
        values[o.name] = tuple(value) if o.arity != 1 and value is not None else value
    return SearchConfig(**values)


def config_to_argv(cfg: SearchConfig) -> list[str]:
    """Every setting, explicitly: floats by repr (exact round trip), None left to its default."""
    argv: list[str] = []
    for o in config_options():
        value = getattr(cfg, o.name)
        if value is None:
            continue
        if o.base is bool:
            argv.append(o.flag if value else "--no-" + o.flag[2:])
        elif o.arity == REPEATED:
            for v in value:
                argv += [o.flag, repr(v) if isinstance(v, float) else str(v)]
        elif o.arity > 1:
            argv += [o.flag, *(repr(v) for v in value)]
        else:
            argv += [o.flag, repr(value) if isinstance(value, float) else str(value)]
    return argv


# ---- typer ----------------------------------------------------------------------------------------------------
def typer_parameters() -> list[inspect.Parameter]:
    """Keyword parameters typer turns into options (with `--x/--no-x` booleans and DNAS_SEARCH_* env vars)."""
    import typer

    params = []
    for o in config_options():
        annotation: Any = o.base
        if o.choices:
            annotation = Literal[o.choices]  # typer offers them as choices
        elif o.arity == REPEATED:
            annotation = list[o.base]  # type: ignore[name-defined]  # a repeatable option
        elif o.arity > 1:
            annotation = tuple[(o.base,) * o.arity]  # type: ignore[misc]
        if o.optional:
            annotation = annotation | None
        flag = o.flag if o.base is not bool else f"{o.flag}/--no-{o.flag[2:]}"
        option = typer.Option(flag, help=o.help, envvar=o.envvar, show_default=True)
        params.append(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default,
                                        annotation=typing.Annotated[annotation, option]))  # fmt: skip
    return params


def config_from_kwargs(kwargs: dict[str, Any]) -> SearchConfig:
    """The SearchConfig part of a typer call's keyword arguments."""
    names = {o.name: o for o in config_options()}
    values = {}
    for k, v in kwargs.items():
        if k in names:
            if names[k].arity == REPEATED:
                v = tuple(v) if v else None  # typer gives an empty list for a repeatable option not given
            elif names[k].arity > 1:
                v = tuple(v)
            values[k] = v
    return SearchConfig(**values)
