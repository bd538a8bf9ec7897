"""`--fsdp-version 1` is the user's FSDP: `plan`, `scale` and `tune` search FSDP1 rows then, never FSDP2."""

from __future__ import annotations

import json

import pytest
from cli_helpers import run

from planner.build import build_config
from planner.search import plan, search_space
from planner.strategy import Engine, FsdpVersion


def test_the_search_runs_the_fsdp_the_user_asked_for() -> None:
    base = build_config(model="7b", gpus="8xA800", check=False)
    for version in (FsdpVersion.ONE, FsdpVersion.TWO):
        result = plan(base, search_space(base, fsdp_version=version))
        fsdp = [e for e in result.plans if e.config.engine is Engine.fsdp]
        assert fsdp and all(e.config.fsdp_version is version for e in fsdp)


def test_plan_fsdp_version_1_on_the_command_line(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    code, out, err = run(capsys, monkeypatch, "plan", "--model", "7b", "--gpus", "8xA800", "--fsdp-version", "1",
                         "--json")
    assert code == 0, err
    versions = {p["config"]["fsdp_version"] for p in json.loads(out)["plans"] if p["config"]["engine"] == "fsdp"}
    assert versions == {1}
