"""`--solve` and the recommendation through the CLI's JSON and `ftplan serve`'s API (the same answer)."""

from __future__ import annotations

import json

import pytest
from cli_helpers import run
from fastapi.testclient import TestClient

from ftplan.serve import create_app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())


def cli_json(capsys, monkeypatch, *args: str) -> dict:
    code, out, err = run(capsys, monkeypatch, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_estimate_solves_the_longest_sequence(client, capsys, monkeypatch) -> None:
    args = ("estimate", "--model", "7b", "--gpus", "1xA100-80G", "--micro-batch", "4", "--solve", "seq-len")
    out = cli_json(capsys, monkeypatch, *args)
    limit = out["limit"]
    assert limit["knob"] == "seq-len" and limit["value"] > 0
    assert limit["one_step_above"]["value"] == limit["value"] + 1 and not limit["one_step_above"]["fits"]
    assert set(out["memory_readings_bytes"]) == {"allocated", "reserved", "device"}
    body = {"model": "7b", "gpus": "1xA100-80G", "micro_batch": 4, "solve": "seq-len"}
    response = client.post("/api/estimate", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == out


def test_plan_recommends_with_headroom_and_solves_for_it(client, capsys, monkeypatch) -> None:
    out = cli_json(capsys, monkeypatch, "plan", "--model", "7b", "--gpus", "8xA800", "--method", "lora",
                   "--solve", "micro-batch")
    rec, winner = out["recommendation"], out["plans"][0]
    assert rec["plan"] == winner["name"] and not rec["tight"] and rec["fastest_tight"]
    assert 0 < rec["fastest_gain"] <= rec["tight_margin"]
    assert out["limit"]["knob"] == "micro-batch" and out["limit"]["at_value"]["name"].startswith(winner["name"][:4])
    response = client.post("/api/plan", json={"model": "7b", "gpus": "8xA800", "method": ["lora"],
                                              "solve": "micro-batch"})
    assert response.status_code == 200 and response.json() == out


def test_bad_solve_is_one_line(capsys, monkeypatch) -> None:
    code, _, err = run(capsys, monkeypatch, "estimate", "--model", "7b", "--gpus", "8xA800", "--solve", "length")
    assert code == 2 and "solve" in err and "Traceback" not in err
