"""Command-line options generated from the pydantic models that define them, so a setting's type, default,
bounds and help are written once, in the model, and the command line cannot drift from the other entry
points that validate into the same model (a fleet file, the service's request body).

- `model_parameters`: every field of a model as keyword parameters typer turns into options (`--x`,
  booleans `--x/--no-x`, an environment variable each), for a command taking `**values`.
- `field_option`: one field as an `Annotated` type, for a command whose other parameters are its own (the
  space options of `dnas profile`, `dnas validate`, `dnas space ...`, `dnas demo`).
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError

from dnas.errors import UserError
from search.space.macro import SearchSpace
from search.space.opspec import OpSpecError
from search.space.options import SpaceOptions


def _cli_type(hint: Any) -> Any:
    """The option's type on the command line: a list is typed as one comma-separated string."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    if typing.get_origin(base) is list:
        base = str
    return base | None if optional else base


def _envvar(model: type[BaseModel], name: str, prefix: str) -> str:
    extra = model.model_fields[name].json_schema_extra
    override = extra.get("envvar") if isinstance(extra, dict) else None
    return str(override or prefix + name.upper())


def field_option(model: type[BaseModel], name: str, *flags: str, envvar: str | None = None) -> Any:
    """`Annotated[type, typer.Option(...)]` for one field: its help is the field's description."""
    field = model.model_fields[name]
    annotation = _cli_type(typing.get_type_hints(model)[name])
    option = typer.Option(*flags, help=field.description, envvar=envvar, show_default=True)
    return Annotated[annotation, option]


def model_parameters(model: type[BaseModel], *, env_prefix: str, skip: tuple[str, ...] = (),
                     hide_default: tuple[str, ...] = ()) -> list[inspect.Parameter]:  # fmt: skip
    """Keyword parameters typer turns into options: `--x` (booleans `--x/--no-x`), env `<env_prefix>X` unless
    the field names another (`json_schema_extra={"envvar": ...}`); required fields are required options."""
    hints = typing.get_type_hints(model)
    params = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        annotation = _cli_type(hints[name])
        if annotation is bool:
            flag = f"{flag}/--no-{flag[2:]}"
        option = typer.Option(flag, help=field.description, envvar=_envvar(model, name, env_prefix),
                              show_default=name not in hide_default)  # fmt: skip
        default = inspect.Parameter.empty if field.is_required() else field.default
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[annotation, option]))  # fmt: skip
    return params


# ---- the space options every command that takes a space shares -------------------------------------------------
SPACE = SpaceOptions()  # the defaults
SpaceName = field_option(SpaceOptions, "name", "--space", "--name")
Resolution = field_option(SpaceOptions, "resolution", "--resolution", envvar="DNAS_RESOLUTION")
Width = field_option(SpaceOptions, "width", "--width", envvar="DNAS_WIDTH")
Classes = field_option(SpaceOptions, "num_classes", "--classes")
HeadC = field_option(SpaceOptions, "head_c", "--head-c")
Candidates = field_option(SpaceOptions, "candidates", "--candidates")


def space_options(name: str = SPACE.name, resolution: int = SPACE.resolution, width: float = SPACE.width,
                  classes: int = SPACE.num_classes, head_c: int | None = None,
                  candidates: str | None = None) -> SpaceOptions:  # fmt: skip
    """The command line's space options, validated by the model (UserError naming the option)."""
    values: dict[str, Any] = {"name": name, "resolution": resolution, "width": width, "num_classes": classes,
                              "head_c": head_c}  # fmt: skip
    if candidates:
        values["candidates"] = [c.strip() for c in candidates.split(",") if c.strip()]
    try:
        return SpaceOptions.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = {"name": "space", "num_classes": "classes"}.get(str(first["loc"][0]), str(first["loc"][0]))
        raise UserError(f"--{flag.replace('_', '-')}: {first['msg']}") from None


def build_space(options: SpaceOptions) -> SearchSpace:
    try:
        return options.build()
    except OpSpecError as exc:
        raise UserError(f"space: {exc}") from None
