"""`ftplan serve`'s JSON API answers what the CLI's `--json` prints, and its 422s carry the CLI's error line."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="ftplan serve needs the serve extra: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (the dev extra)")

from cli_helpers import run  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from ftplan.serve import ServeSettings, create_app  # noqa: E402

TINY = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 512, "intermediate_size": 1376,
        "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8, "max_position_embeddings": 2048}


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(ServeSettings(workers=2))) as c:  # `with`: the lifespan starts the workers
        yield c


def cli_json(capsys, monkeypatch, *args: str):
    code, out, err = run(capsys, monkeypatch, *args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize(("endpoint", "body", "args"), [
    ("plan", {"model": "7b", "gpus": "8xA800", "method": ["lora", "qlora"], "seq_len": 1024, "top": 2},
     ("plan", "--model", "7b", "--gpus", "8xA800", "--method", "lora", "--method", "qlora", "--seq-len", "1024",
      "--top", "2")),
    ("plan", {"model": "13b", "gpus": "2x8xH100", "method": ["full"], "global-batch": 64, "tokens": 1e8},
     ("plan", "--model", "13b", "--gpus", "2x8xH100", "--method", "full", "--global-batch", "64", "--tokens", "1e8")),
    ("estimate", {"model": "7b", "gpus": "8xA800", "method": "full", "zero": 3, "offload": "optimizer",
                  "grad_ckpt": "full", "micro_batch": 2, "sequence_parallel": False},
     ("estimate", "--model", "7b", "--gpus", "8xA800", "--method", "full", "--zero", "3", "--offload", "optimizer",
      "--grad-ckpt", "full", "--micro-batch", "2", "--no-sequence-parallel")),
    ("estimate", {"model": "7b", "gpus": "8xA800", "seq_len": 8192, "rope_scaling": "linear:2.0"},
     ("estimate", "--model", "7b", "--gpus", "8xA800", "--seq-len", "8192", "--rope-scaling", "linear:2.0")),
    ("estimate", {"model": "llama-3.1-8b", "gpus": "8xH100", "stage": "grpo", "generation": "vllm-colocate",
                  "seq_len": 4096, "completion_len": 3968, "completion_len_mean": 1019},
     ("estimate", "--model", "llama-3.1-8b", "--gpus", "8xH100", "--stage", "grpo", "--generation", "vllm-colocate",
      "--seq-len", "4096", "--completion-len", "3968", "--completion-len-mean", "1019")),
], ids=["plan-lora-qlora", "plan-full-job", "estimate-zero3", "estimate-rope", "estimate-grpo-mean"])
def test_api_answers_like_cli(client, capsys, monkeypatch, endpoint: str, body: dict, args: tuple[str, ...]) -> None:
    response = client.post(f"/api/{endpoint}", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == cli_json(capsys, monkeypatch, *args)


def test_scale_answers_like_cli(client, capsys, monkeypatch, tmp_path: Path) -> None:
    response = client.post("/api/scale", json={"model": "7b", "gpu": "A800", "max_gpus": 4, "method": "full"})
    assert response.status_code == 200, response.text
    expected = cli_json(capsys, monkeypatch, "scale", "--model", "7b", "--gpu", "A800", "--max-gpus", "4",
                        "--method", "full", "--out", str(tmp_path))
    assert response.json() == expected
    assert [r["gpus"] for r in expected["rows"]] == [1, 2, 4]


def test_catalogs_like_cli(client, capsys, monkeypatch) -> None:
    assert client.get("/api/models").json() == cli_json(capsys, monkeypatch, "models")
    assert client.get("/api/gpus").json() == cli_json(capsys, monkeypatch, "gpus")


def test_pasted_config_is_read_like_a_file(client, capsys, monkeypatch, tmp_path: Path) -> None:
    folder = tmp_path / "custom"  # the pasted config's model is named after this folder
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    body = {"model_config": TINY, "gpus": "2xA800", "method": ["lora"], "seq_len": 512}
    response = client.post("/api/plan", json=body)
    assert response.status_code == 200, response.text
    expected = cli_json(capsys, monkeypatch, "plan", "--model", str(folder), "--gpus", "2xA800", "--method", "lora",
                        "--seq-len", "512")
    got = response.json()
    for plan in [*got["plans"], *expected["plans"]]:
        plan["config"]["model"].pop("source")  # where the config was read from differs
    assert got == expected


@pytest.mark.parametrize(("endpoint", "body", "args"), [
    ("plan", {"model": "7b", "gpus": "8xA9000"}, ("plan", "--model", "7b", "--gpus", "8xA9000")),
    ("plan", {"model": "llama-9", "gpus": "8xA800"}, ("plan", "--model", "llama-9", "--gpus", "8xA800")),
    ("estimate", {"model": "7b", "gpus": "8xA800", "zero": 5}, ("estimate", "--model", "7b", "--gpus", "8xA800",
                                                                 "--zero", "5")),
    ("estimate", {"model": "7b", "gpus": "8xA800", "seq_len": "long"},
     ("estimate", "--model", "7b", "--gpus", "8xA800", "--seq-len", "long")),
    ("estimate", {"model": "7b", "gpus": "8xA800", "method": "magic"},
     ("estimate", "--model", "7b", "--gpus", "8xA800", "--method", "magic")),
    ("estimate", {"model": "7b"}, ("estimate", "--model", "7b")),
    ("estimate", {"model": "7b", "gpus": "8xA800", "seq_len": 8192},
     ("estimate", "--model", "7b", "--gpus", "8xA800", "--seq-len", "8192")),
    ("estimate", {"model": "7b", "gpus": "8xA800", "rope_scaling": "cubic:2"},
     ("estimate", "--model", "7b", "--gpus", "8xA800", "--rope-scaling", "cubic:2")),
    ("scale", {"model": "7b", "gpu": "A800", "max_gpus": 0}, ("scale", "--model", "7b", "--gpu", "A800",
                                                               "--max-gpus", "0")),
    ("estimate", {"model": "7b", "gpus": "8xA800", "stage": "grpo", "completion_len_mean": 600},
     ("estimate", "--model", "7b", "--gpus", "8xA800", "--stage", "grpo", "--completion-len-mean", "600")),
], ids=["bad-gpu", "bad-model", "zero-range", "not-int", "bad-choice", "missing", "positions", "rope", "max-gpus",
        "mean-above-cap"])
def test_bad_input_is_422_with_the_cli_line(client, capsys, monkeypatch, tmp_path: Path, endpoint: str, body: dict,
                                            args: tuple[str, ...]) -> None:
    response = client.post(f"/api/{endpoint}", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    if endpoint == "scale":
        args = (*args, "--out", str(tmp_path))
    code, out, err = run(capsys, monkeypatch, *args, "--json")
    assert code == 2 and out == ""
    assert err == f"ftplan: error: {detail}\n"


@pytest.mark.parametrize(("body", "needle"), [
    ({"model": "7b", "gpus": "8xA800", "bogus": 1}, "No such option: --bogus"),
    ({"model": "7b", "gpus": "8xA800", "emit": "out"}, "No such option: --emit"),
    ({"model": "7b", "gpus": "8xA800", "top": [1, 2]}, "--top: takes one value"),
    ({"model": "7b", "gpus": "8xA800", "all": "yes"}, "--all: expected true or false"),
    ({"model_config": "not an object", "gpus": "8xA800"}, "model_config must be a config.json object"),
    ({"model_config": {"model_type": "llama"}, "gpus": "8xA800"}, "lacks 'hidden_size'"),
], ids=["unknown", "cli-only", "list", "flag", "paste-type", "paste-bad"])
def test_api_only_mistakes_are_422(client, body: dict, needle: str) -> None:
    response = client.post("/api/plan", json=body)
    assert response.status_code == 422
    assert needle in response.json()["detail"]
    assert "\n" not in response.json()["detail"]


def test_not_json_is_422(client) -> None:
    for content in (b"{", b"[1, 2]", b'"7b"'):
        response = client.post("/api/estimate", content=content, headers={"Content-Type": "application/json"})
        assert response.status_code == 422 and isinstance(response.json()["detail"], str)


def test_emit_zip_holds_what_plan_emit_writes(client, capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # paths inside the files point under the server's working directory
    body = {"model": "7b", "gpus": "8xA800", "method": ["full"], "pick": 2, "emit": "out"}
    response = client.post("/api/emit", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    code, _, err = run(capsys, monkeypatch, "plan", "--model", "7b", "--gpus", "8xA800", "--method", "full",
                       "--emit", "out", "--pick", "2")
    assert code == 0, err
    with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
        names = sorted(zf.namelist())
        assert names == sorted(f"out/{p.name}" for p in (tmp_path / "out").iterdir())
        for name in names:
            assert zf.read(name).decode() == (tmp_path / name).read_text(), name
        assert zf.getinfo("out/launch.sh").external_attr >> 16 == 0o755
    # a plan entry from /api/plan is emitted as `ftplan emit plan.json` would
    entry = client.post("/api/plan", json={"model": "7b", "gpus": "8xA800", "method": ["full"], "top": 2}).json()
    again = client.post("/api/emit", json={"plan": entry["plans"][1], "emit": "out"})
    assert again.status_code == 200
    with zipfile.ZipFile(io.BytesIO(again.content)) as zf:
        # the engine's config file, whichever engine the time model ranks second (ds_config.json or accelerate.yaml)
        engine_file = next(n for n in ("out/ds_config.json", "out/accelerate.yaml") if n in zf.namelist())
        assert zf.read(engine_file).decode() == (tmp_path / engine_file).read_text()
    for bad, needle in (({"model": "7b", "gpus": "8xA800", "pick": 10**6}, "--pick 1000000 is outside"),
                        ({"plan": {"config": {}}}, "is not an ftplan plan"),
                        ({"model": "7b", "gpus": "8xA800", "emit": "/etc"}, "relative folder")):
        response = client.post("/api/emit", json=bad)
        assert response.status_code == 422 and needle in response.json()["detail"], response.text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url():
    """A real uvicorn server in this process (threads answer the requests, as in `ftplan serve`)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def test_twenty_concurrent_requests_all_answer(server_url: str, client) -> None:
    bodies = []
    for i in range(20):
        if i % 4 == 3:
            bodies.append(("plan", {"model": "7b", "gpus": f"{i}xA9000"}))  # a mistake among good requests
        elif i % 4 == 2:
            bodies.append(("plan", {"model": "7b", "gpus": "2xA800", "method": ["qlora"],
                                    "seq_len": 256 * (i % 5 + 1)}))
        else:
            bodies.append(("estimate", {"model": "7b", "gpus": "8xA800", "micro_batch": i % 4 + 1,
                                        "zero": i % 4, "method": "full"}))
    expected = [client.post(f"/api/{e}", json=b) for e, b in bodies]

    def ask(item: tuple[str, dict]) -> httpx.Response:
        return httpx.post(f"{server_url}/api/{item[0]}", json=item[1], timeout=300)

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(ask, bodies))
    for want, got in zip(expected, answers, strict=True):
        assert got.status_code == want.status_code
        assert got.json() == want.json()
    assert httpx.get(f"{server_url}/api/gpus", timeout=60).status_code == 200  # still serving


def test_serve_path_imports_nothing_heavy() -> None:
    code = ("import sys; from fastapi.testclient import TestClient; from ftplan.serve import create_app; "
            "c = TestClient(create_app()); "
            "assert c.post('/api/plan', json={'model': '7b', 'gpus': '2xA800', 'method': ['lora']}).status_code == 200;"
            "assert c.post('/api/emit', json={'model': '7b', 'gpus': '2xA800', 'method': ['lora']}).status_code == 200;"
            "assert c.post('/api/scale', json={'model': '7b', 'gpu': 'A800', 'max_gpus': 2}).status_code == 200;"
            "heavy = ('torch', 'transformers', 'deepspeed', 'peft', 'accelerate', 'bitsandbytes');"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_page_and_assets_are_served_locally(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline
    for name in ("app.js", "style.css"):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and "https://" not in asset.text
    assert client.get("/static/../serve.py").status_code == 404
