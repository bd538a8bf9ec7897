"""The options object (planner/options.py, ftplan/options.py): every command's flags come from the groups, a
field added to a group reaches every command that shows it, and the flags and defaults that existed before the
regrouping are still there."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar

import pytest
import typer

from ftplan import cli
from ftplan import options as o
from planner.build import build_config, config_from
from planner.fields import option
from planner.options import Options, field_types, from_flat, group_of, replace_flat, to_flat
from planner.strategy import Method, Switches

GOLDEN = Path(__file__).parent / "golden" / "cli_flags_before_options.json"


def commands() -> dict[str, object]:
    cli._register()
    out: dict[str, object] = {}

    def walk(group: object, prefix: str) -> None:
        for name, cmd in group.commands.items():  # type: ignore[attr-defined]
            if hasattr(cmd, "commands"):
                walk(cmd, f"{prefix}{name} ")
            else:
                out[prefix + name] = cmd

    walk(typer.main.get_command(cli.app), "")
    return out


def flags(cmd: object) -> dict[str, object]:
    rows = {}
    for p in cmd.params:  # type: ignore[attr-defined]
        default = p.default.value if hasattr(p.default, "value") else p.default
        rows["/".join(p.opts + p.secondary_opts)] = default
    return rows


def test_every_flag_and_default_of_before_is_kept() -> None:
    before = json.loads(GOLDEN.read_text())
    now = {name: flags(cmd) for name, cmd in commands().items()}
    for command, rows in before.items():
        assert command in now, command
        for flag, default in rows.items():
            # a parameter keeps its names (it may have gained one: calibrate's --out is also --device-fit)
            names = set(flag.split("/"))
            match = [key for key in now[command] if names <= set(key.split("/"))]
            assert match, f"{command} lost {flag}"
            assert repr(now[command][match[0]]) == default, f"{command} {flag}: {now[command][match[0]]!r} != {default}"


def test_option_names_are_unique_across_groups() -> None:
    types = field_types(Options)
    names = [f.name for g in dataclasses.fields(Options) for f in dataclasses.fields(types[g.name])]
    assert len(names) == len(set(names)) == len(group_of(Options))


@pytest.mark.parametrize("command", ["estimate", "plan", "scale", "tune"])
def test_every_switch_is_a_flag_of_the_planning_commands(command: str) -> None:
    shown = {p.name for p in commands()[command].params}  # type: ignore[attr-defined]
    assert {f.name for f in dataclasses.fields(Switches)} <= shown


@dataclass(frozen=True, kw_only=True)
class Extra:
    """A group a helper might add."""

    new_knob: int = option(3, help="A new knob.", min=1)
    flagged: bool = option(False, help="A new switch.")

    PANEL: ClassVar[str] = "Memory"


def test_a_new_group_field_becomes_a_flag_and_reaches_the_command() -> None:
    seen = {}
    app = typer.Typer()

    @app.command()
    @o.grouped
    def probe(opts: Annotated[Options, o.expose(target=o.ALL, switches=("kernels",))], extra: Extra) -> None:
        seen["opts"], seen["extra"] = opts, extra

    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["--model", "7b", "--new-knob", "5", "--flagged", "--kernels", "liger"])
    assert result.exit_code == 0, result.output
    assert seen["extra"] == Extra(new_knob=5, flagged=True)
    assert seen["opts"].target.model == "7b" and seen["opts"].switches.kernels.value == "liger"
    assert seen["opts"].strategy == Options().strategy  # hidden groups keep their defaults
    bad = CliRunner().invoke(app, ["--new-knob", "0"])
    assert bad.exit_code == 2 and "--new-knob" in bad.output


def test_a_field_shown_twice_is_refused() -> None:
    def twice(opts: Annotated[Options, o.expose(strategy=("zero",))], more: Extra, zero: int = 0) -> None: ...

    with pytest.raises(TypeError, match="shown twice"):
        o.grouped(twice)


def test_flat_round_trip_and_build_config_agree() -> None:
    flat = {"model": "7b", "gpus": "8xA800", "method": Method.full, "zero": 3, "micro_batch": 2, "kernels": "liger"}
    opts, rest = from_flat(Options, flat)
    assert rest == {} and to_flat(opts)["zero"] == 3 and to_flat(opts)["micro_batch"] == 2
    assert str(build_config(**flat)) == str(config_from(opts)) == "Z3-TP1-PP1-DP8-mb2-ga1"
    assert replace_flat(opts, micro_batch=4).strategy.micro_batch == 4
    with pytest.raises(TypeError, match="no option 'bogus'"):
        replace_flat(opts, bogus=1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'top'"):
        build_config(model="7b", gpus="8xA800", top=3)  # not part of a configuration


def test_choices_given_by_name_become_their_enum_members() -> None:
    """An API caller's `fsdp="full_shard"` is the CLI's parsed FsdpStrategy.full_shard (an optional choice too);
    a name that is no choice is one PlanError naming the choices."""
    from planner.errors import PlanError
    from planner.strategy import FsdpStrategy

    by_name = build_config(model="7b", gpus="8xA800", method="lora", fsdp="full_shard")
    by_enum = build_config(model="7b", gpus="8xA800", method=Method.lora, fsdp=FsdpStrategy.full_shard)
    assert by_name == by_enum and by_name.fsdp is FsdpStrategy.full_shard
    with pytest.raises(PlanError, match="method must be one of full, lora, qlora, got 'lorax'"):
        build_config(model="7b", gpus="8xA800", method="lorax")
