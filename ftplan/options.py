"""Every command's options, built once from the option groups (planner.options: dataclasses whose fields carry
help text, flag names and ranges; typer makes them flags and the enums their choices).

A command names the groups it takes; `@grouped` turns each group's fields into flags and hands the command
the built groups:

    @app.command()
    @grouped
    def estimate(opts: Annotated[Options, ESTIMATE], out: EmitOutput) -> None: ...

`Expose` says which fields of which groups a command shows (all of a group by default) and its own defaults;
the fields it hides keep the group's defaults. A new option therefore goes into its group in planner/options.py
(a memory switch into planner.strategy.Switches) and reaches every command that shows the group.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import typer

from planner.fields import option, option_fields
from planner.options import field_types, is_group

ALL: tuple[str, ...] | None = None  # every field of the group


@dataclass(frozen=True)
class Expose:
    """Which fields of a composite's groups a command shows: group name -> field names (ALL: every one);
    groups not named stay hidden. `defaults` replaces a shown field's default for this command."""

    groups: tuple[tuple[str, tuple[str, ...] | None], ...]
    defaults: tuple[tuple[str, Any], ...] = ()
    sources: bool = False  # --from FILE: the options from a training setup (ftplan/from_file.py)

    def shown(self, group: str, names: list[str]) -> list[str]:
        picked = dict(self.groups)
        if group not in picked:
            return []
        wanted = picked[group]
        if wanted is None:
            return names
        unknown = set(wanted) - set(names)
        if unknown:
            raise TypeError(f"group {group} has no field {sorted(unknown)}")
        return [n for n in names if n in wanted]


def expose(*, defaults: dict[str, Any] | None = None, sources: bool = False,
           **groups: tuple[str, ...] | None) -> Expose:
    return Expose(tuple(groups.items()), tuple((defaults or {}).items()), sources)


FROM = "from_file"
_CONTEXT = "ftplan_context"
FromOpt = Annotated[list[Path] | None, typer.Option(
    "--from", help="Your training setup: a LLaMA-Factory or axolotl YAML, a TrainingArguments JSON, a ds_config.json "
                   "or an accelerate config (repeat to combine; a YAML's `deepspeed:` file is read too). Flags on "
                   "the command line win over the files.", rich_help_panel="Model")]


# --- output options (not part of the question, so not in planner.options) ---------------------------------

@dataclass(frozen=True, kw_only=True)
class JsonOutput:
    json_out: bool = option(False, flags=("--json",), help="Print machine-readable JSON.")

    PANEL: ClassVar[str] = "Output"


@dataclass(frozen=True, kw_only=True)
class EmitOutput(JsonOutput):
    emit_dir: Path | None = option(None, flags=("--emit",), help=(
        "Write plan.json, ds_config, accelerate.yaml, launch.sh and LLaMA-Factory YAML into this folder."))
    force: bool = option(False, flags=("--force",), help="Overwrite files that already exist in the --emit "
                                                          "directory.")


@dataclass(frozen=True, kw_only=True)
class PlanOutput(EmitOutput):
    pick: int = option(1, help="With --emit: write the plan ranked N (the # column) instead of the best.")


@dataclass(frozen=True, kw_only=True)
class ScaleOutput(JsonOutput):
    out: Path = option(Path("ftplan-reports"), flags=("--out",), help=(
        "Directory for the report files (PNG chart and JSON)."))
    force: bool = option(False, flags=("--force",), help="Overwrite the report files if they exist.")


ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite files that already exist.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.", rich_help_panel="Output")]


# --- groups -> typer parameters -----------------------------------------------------------------------------

def _typer_annotation(f: dataclasses.Field, typ: Any, panel: str | None) -> Any:
    meta = f.metadata
    kwargs: dict[str, Any] = {"help": meta["help"], "rich_help_panel": meta["panel"] or panel}
    for bound in ("min", "max"):
        if meta[bound] is not None:
            kwargs[bound] = meta[bound]
    return Annotated[typ, typer.Option(*meta["flags"], **kwargs)]


def flag(group: type, name: str) -> Any:
    """One group field as a typer parameter type, for a command that takes it alone."""
    f = next(f for f in dataclasses.fields(group) if f.name == name)
    return _typer_annotation(f, field_types(group)[name], getattr(group, "PANEL", None))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return inspect.Parameter.empty


@dataclass(frozen=True)
class _Slot:
    """One command parameter that is a group (or a composite of groups) and the flags it became."""

    name: str
    cls: type
    parts: tuple[tuple[str | None, tuple[str, ...]], ...]  # (group field of the composite or None, flags shown)
    sources: bool = False


def _unpack(annotation: Any) -> tuple[type | None, Expose | None]:
    if typing.get_origin(annotation) is Annotated:
        base, *extras = typing.get_args(annotation)
        spec = next((e for e in extras if isinstance(e, Expose)), None)
        if is_group(base) and (spec is not None or not extras):
            return base, spec
        return None, None
    return (annotation, None) if is_group(annotation) else (None, None)


def _parameters(cls: type, spec: Expose | None, taken: set[str]) -> tuple[list[inspect.Parameter], _Slot]:
    types = field_types(cls)
    defaults = dict(spec.defaults) if spec else {}
    composite = all(is_group(types[f.name]) for f in dataclasses.fields(cls))
    params: list[inspect.Parameter] = []
    parts: list[tuple[str | None, tuple[str, ...]]] = []
    groups = [(f.name, types[f.name]) for f in dataclasses.fields(cls)] if composite else [(None, cls)]
    for group_name, group in groups:
        names = [f.name for f in option_fields(group)]
        shown = names if spec is None else spec.shown(group_name or "", names)
        if composite and spec is None:
            raise TypeError(f"{cls.__name__} is a composite: say which groups a command shows with Expose")
        group_types = field_types(group)
        by_name = {f.name: f for f in dataclasses.fields(group)}
        for name in shown:
            if name in taken:
                raise TypeError(f"option '{name}' is shown twice")
            taken.add(name)
            f = by_name[name]
            params.append(inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=defaults.get(name, _default(f)),
                annotation=_typer_annotation(f, group_types[name], getattr(group, "PANEL", None))))
        parts.append((group_name, tuple(shown)))
    return params, _Slot("", cls, tuple(parts), bool(spec and spec.sources))


def _build(slot: _Slot, values: dict[str, Any]) -> Any:
    types = field_types(slot.cls)
    if slot.parts and slot.parts[0][0] is None:
        return slot.cls(**{n: values[n] for n in slot.parts[0][1]})
    return slot.cls(**{group: types[group](**{n: values[n] for n in shown}) for group, shown in slot.parts if shown})


def _given(ctx: Any, name: str) -> bool:
    """Whether the user gave this option (on the command line or through its environment variable)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def grouped(func: Any) -> Any:
    """Turn a command's group parameters into their flags (see the module docstring)."""
    hints = typing.get_type_hints(func, include_extras=True)
    params: list[inspect.Parameter] = []
    slots: list[_Slot] = []
    signature = inspect.signature(func).parameters
    taken = {name for name, param in signature.items() if _unpack(hints.get(name, param.annotation))[0] is None}
    for name, param in signature.items():
        annotation = hints.get(name, param.annotation)
        cls, spec = _unpack(annotation)
        if cls is None:
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=annotation))
            continue
        group_params, slot = _parameters(cls, spec, taken)
        params += group_params
        slots.append(dataclasses.replace(slot, name=name))
    if any(slot.sources for slot in slots):
        params.append(inspect.Parameter(FROM, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=FromOpt))
    params.append(inspect.Parameter(_CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        ctx, files = kwargs.pop(_CONTEXT), kwargs.pop(FROM, None)
        built = {slot.name: _build(slot, kwargs) for slot in slots}
        shown = {n for slot in slots for _, names in slot.parts for n in names}
        if files:
            from ftplan.from_file import apply, note

            explicit = {n for n in shown if _given(ctx, n)}
            for slot in slots:
                if slot.sources:
                    built[slot.name] = apply(built[slot.name], list(files), explicit)
            print(f"ftplan: {note(list(files))}; flags given on the command line win", file=sys.stderr)
        rest = {k: v for k, v in kwargs.items() if k not in shown}
        return func(**built, **rest)

    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
