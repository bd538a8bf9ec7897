"""Run the ftplan CLI in-process, through `ftplan.cli.main` (the console script's entry point, which maps
PlanError and usage errors to one stderr line and exit code 2). Importable from every test folder because
tests/conftest.py puts this folder on sys.path (pytest's default "prepend" import mode)."""

from __future__ import annotations

import sys

import pytest

from ftplan import cli


def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["ftplan", *args])
    monkeypatch.setenv("COLUMNS", "200")
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err
