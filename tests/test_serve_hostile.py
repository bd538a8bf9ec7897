"""What any web page, script or scanner can send `ftplan serve` (issues 22 and 26): it reads no file a request
names (unless inside --models-dir), bounds bodies, work and concurrency, stops abandoned and overdue work,
answers internal errors without their text, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="ftplan serve needs the serve extra: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (the dev extra)")

from cli_helpers import run  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from ftplan import serve as serve_module  # noqa: E402
from ftplan.serve import BUG, LOOPBACK_HOSTS, ServeSettings, create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 512, "intermediate_size": 1376,
        "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8, "max_position_embeddings": 2048}
# a request that plans for a while: 67 GPU counts of a 70B model
SLOW_SCALE = {"model": "70b", "gpu": "A800", "max_gpus": 512, "method": "full"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


class Server:
    """A real uvicorn server in this process (its pool's workers are processes, as under `ftplan serve`)."""

    def __init__(self, settings: ServeSettings, **config) -> None:
        import uvicorn

        self.app = create_app(settings)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=2, **config))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.thread.start()
        assert wait_until(lambda: self.server.started, 60), "uvicorn did not start"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def pool(self):
        return self.app.state.pool


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("models-base")
    root = base / "models"
    (root / "tiny").mkdir(parents=True)
    (root / "tiny" / "config.json").write_text(json.dumps(TINY))
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "nested" / "deeper" / "config.json").write_text(json.dumps(TINY))
    (base / "outside").mkdir()
    (base / "outside" / "config.json").write_text(json.dumps(TINY))
    (root / "link-out").symlink_to(base / "outside")  # a folder symlink leading out
    (root / "cfg-link").mkdir()
    (root / "cfg-link" / "config.json").symlink_to(base / "outside" / "config.json")  # a file symlink leading out
    (root / "passwd.json").symlink_to("/etc/passwd")
    (root / "zero.json").symlink_to("/dev/zero")
    (root / "fifo").mkdir()
    os.mkfifo(root / "fifo" / "config.json")
    (root / "inner-link").symlink_to(root / "tiny")  # a symlink that stays inside is fine
    return root


@pytest.fixture(scope="module")
def client(models_dir: Path):
    with TestClient(create_app(ServeSettings(workers=2, models_dir=models_dir))) as c:
        yield c


@pytest.fixture(scope="module")
def no_files_client():
    with TestClient(create_app(ServeSettings(workers=1))) as c:
        yield c


def detail(response) -> str:
    text = response.json()["detail"]
    assert isinstance(text, str) and "\n" not in text and "Traceback" not in text
    return text


# ---------------------------------------------------------------- files

@pytest.mark.parametrize(("model", "needle"), [
    ("/etc/passwd", "this server reads no files"),
    ("../../etc/passwd", "this server reads no files"),
    ("./tiny", "this server reads no files"),
    ("x.json", "this server reads no files"),
    ("tiny", "unknown model 'tiny'"),
])
def test_without_models_dir_no_file_is_read(no_files_client, model: str, needle: str) -> None:
    response = no_files_client.post("/api/estimate", json={"model": model, "gpus": "1xA800"})
    assert response.status_code == 422 and needle in detail(response)


@pytest.mark.parametrize(("model", "needle"), [
    ("../outside", "'..' is not allowed"),
    ("nested/../../outside", "'..' is not allowed"),
    ("/etc/passwd", "relative to the server's models folder"),
    ("~/x", "relative to the server's models folder"),
    ("link-out", "leads out of the server's models folder"),
    ("cfg-link", "leads out of the server's models folder"),
    ("passwd.json", "leads out of the server's models folder"),
    ("zero.json", "leads out of the server's models folder"),
    ("fifo", "a FIFO (named pipe), not a regular file"),
    ("nope", "neither in the catalog"),
    ("tiny\x00x", "relative to the server's models folder"),
])
def test_models_dir_paths_stay_inside(client, model: str, needle: str) -> None:
    response = client.post("/api/estimate", json={"model": model, "gpus": "1xA800"})
    assert response.status_code == 422 and needle in detail(response)
    assert str(Path("/").resolve()) + "tmp" not in detail(response)  # no server path in the answer


def test_models_dir_models_answer_like_the_cli(client, models_dir: Path, capsys, monkeypatch) -> None:
    for name in ("tiny", "nested/deeper", "inner-link", "tiny/config.json"):
        response = client.post("/api/estimate", json={"model": name, "gpus": "1xA800", "method": "full"})
        assert response.status_code == 200, response.text
        code, out, err = run(capsys, monkeypatch, "estimate", "--model", str(models_dir / name), "--gpus", "1xA800",
                             "--method", "full", "--json")
        assert code == 0, err
        got, want = response.json(), json.loads(out)
        for answer in (got, want):
            answer["config"]["model"].pop("source")
            if name == "inner-link":  # the server reads the symlink's target, named after its folder
                answer["config"]["model"].pop("name")
        assert got == want


def test_forty_fifo_requests_take_no_worker(client) -> None:
    def ask(_: int):
        return client.post("/api/estimate", json={"model": "fifo", "gpus": "1xA800"})

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=40) as pool:
        answers = list(pool.map(ask, range(40)))
    assert {a.status_code for a in answers} == {422}
    assert time.monotonic() - start < 60
    assert client.post("/api/estimate", json={"model": "tiny", "gpus": "1xA800"}).status_code == 200


def test_a_reward_model_follows_the_same_rule(no_files_client, client) -> None:
    """The online RL stages' reward model is a model a request names: catalog, or inside --models-dir."""
    base = {"model": "7b", "gpus": "8xA800", "stage": "grpo"}
    for c, name, needle in ((no_files_client, "/etc/passwd", "this server reads no files"),
                            (no_files_client, "tiny", "unknown model 'tiny'"),
                            (client, "../outside", "'..' is not allowed"),
                            (client, "link-out", "leads out of the server's models folder")):
        for key in ("reward_model", "reward-model"):
            response = c.post("/api/estimate", json={**base, key: name})
            assert response.status_code == 422 and needle in detail(response), (name, response.text)
    ok = no_files_client.post("/api/estimate", json={**base, "reward_model": "llama-3.2-1b"})
    assert ok.status_code == 200, ok.text
    assert client.post("/api/estimate", json={**base, "reward_model": "tiny"}).status_code == 200
    entry = ok.json()
    entry["config"]["reward_model"] = "/etc/passwd"  # a posted plan names a file
    response = no_files_client.post("/api/emit", json={"plan": entry})
    assert response.status_code == 422 and "this server reads no files" in detail(response)


@pytest.mark.parametrize("field", ["calibration", "emit_dir", "out"])
def test_file_options_are_cli_only(client, field: str) -> None:
    response = client.post("/api/plan", json={"model": "7b", "gpus": "8xA800", field: "/etc/passwd"})
    assert response.status_code == 422
    assert "reads no files" in detail(response) or "No such option" in detail(response)


# ---------------------------------------------------------------- bodies

def test_json_only(client) -> None:
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"},
                    {"Content-Type": "multipart/form-data; boundary=x"}, {}):
        response = client.post("/api/plan", content=b'{"model": "7b", "gpus": "8xA800"}', headers=headers)
        assert response.status_code == 415, headers
        assert "Content-Type: application/json" in detail(response)
    ok = client.post("/api/estimate", content=b'{"model": "7b", "gpus": "8xA800"}',
                     headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_oversized_bodies_are_refused(client) -> None:
    big = json.dumps({"model": "7b", "gpus": "8xA800", "model_config": {"x": "y" * 2**21}}).encode()
    response = client.post("/api/plan", content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "larger than 1,048,576 bytes" in detail(response)

    def chunks():  # no Content-Length: counted as it streams
        yield b'{"pad": "'
        for _ in range(40):
            yield b"z" * 2**16
        yield b'"}'

    response = client.post("/api/plan", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


@pytest.mark.parametrize(("raw", "needle"), [
    (b'{"model": "7b", "gpus": "8xA800", "tokens": 1e999}', "is not a finite number (it overflows a float)"),
    (b'{"model": "7b", "gpus": "8xA800", "tokens": NaN}', "NaN is not a JSON number"),
    (b'{"model": "7b", "gpus": "8xA800", "seq_len": ' + b"9" * 5000 + b"}", "Exceeds the limit"),
    (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
    (b'{"model": "7b", "gpus": "8xA800", "host_memory": "nan"}', "--host-memory: expected a finite number"),
    (b'{"model": "7b", "gpus": "8xA800", "nvme": "-inf"}', "--nvme: expected a finite number"),
    (b'{"model_config": {"hidden_size": Infinity}, "gpus": "8xA800"}', "Infinity is not a JSON number"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_bodies_json_cannot_carry_are_422(client, raw: bytes, needle: str) -> None:
    response = client.post("/api/estimate", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and needle in detail(response)


# ---------------------------------------------------------------- bounded work

@pytest.mark.parametrize(("endpoint", "body", "needle"), [
    ("scale", {"model": "7b", "gpu": "A800", "max_gpus": 10**6}, "--max-gpus 1000000 is more than this server plans"),
    ("scale", {"model": "7b", "gpu": "A800", "max_gpus": 1e6}, "--max-gpus"),
    ("plan", {"model": "7b", "gpus": "4096x8xA800"}, "32,768 GPUs are more than this server plans"),
    ("plan", {"model": "7b", "gpus": "8xA800", "seq_len": 2**21}, "--seq-len 2097152 is more than"),
    ("plan", {"model": "7b", "gpus": "8xA800", "top": 10**6}, "--top 1000000 is more than"),
    ("estimate", {"model": "7b", "gpus": "8xA800", "micro_batch": 10**5}, "--micro-batch 100000 is more than"),
    ("plan", {"model_config": {**TINY, "num_hidden_layers": 2000}, "gpus": "8xA800"}, "has 2,000 layers"),
    ("plan", {"model_config": {**TINY, "num_hidden_layers": 10**9}, "gpus": "8xA800"}, "must lie in 1..4,096"),
    ("plan", {"model_config": {**TINY, "hidden_size": 4}, "gpus": "8xA800"}, "head_dim is 0"),
    ("plan", {"model": "7b", "gpus": "8xA800", "method": ["lora"] * 100}, "at most 64 values"),
])
def test_work_per_request_is_bounded(client, endpoint: str, body: dict, needle: str) -> None:
    response = client.post(f"/api/{endpoint}", json=body)
    assert response.status_code == 422 and needle in detail(response)


def test_an_overdue_request_is_stopped_and_its_worker_replaced() -> None:
    with TestClient(create_app(ServeSettings(workers=1, timeout_s=1.5))) as c:
        before = c.app.state.pool.pids()
        start = time.monotonic()
        response = c.post("/api/scale", json=SLOW_SCALE)
        assert response.status_code == 504 and "1.5 s limit" in detail(response)
        assert time.monotonic() - start < 20
        assert wait_until(lambda: not alive(before[0]), 10)
        after = c.app.state.pool.pids()
        assert len(after) == 1 and after != before
        assert c.post("/api/estimate", json={"model": "7b", "gpus": "8xA800"}).status_code == 200


def test_an_abandoned_scale_request_stops_within_its_timeout() -> None:
    timeout_s = 30.0
    with Server(ServeSettings(workers=1, timeout_s=timeout_s)) as server:
        assert httpx.post(f"{server.url}/api/estimate", json={"model": "7b", "gpus": "8xA800"},
                          timeout=60).status_code == 200
        busy = server.pool.pids()
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{server.url}/api/scale", json=SLOW_SCALE, timeout=1.0)  # the client gives up after 1 s
        gave_up = time.monotonic()
        assert wait_until(lambda: not alive(busy[0]), timeout_s), "the abandoned request kept planning"
        stopped_after_s = time.monotonic() - gave_up
        assert stopped_after_s < timeout_s
        # the replacement answers the next request
        assert httpx.post(f"{server.url}/api/estimate", json={"model": "7b", "gpus": "8xA800"},
                          timeout=60).status_code == 200


# ---------------------------------------------------------------- concurrency

def test_two_hundred_concurrent_requests_all_answer() -> None:
    bodies = []
    for i in range(200):
        if i % 5 == 4:
            bodies.append(("estimate", {"model": "7b", "gpus": f"{i}xA9000"}, 422))
        elif i % 5 == 3:
            bodies.append(("estimate", {"model": "/etc/passwd", "gpus": "8xA800"}, 422))
        else:
            bodies.append(("estimate", {"model": "7b", "gpus": "8xA800", "micro_batch": i % 4 + 1, "zero": i % 4,
                                        "method": "full"}, 200))
    with Server(ServeSettings(workers=2)) as server:
        def ask(item):
            return httpx.post(f"{server.url}/api/{item[0]}", json=item[1], timeout=300)

        with ThreadPoolExecutor(max_workers=200) as pool:
            futures = [pool.submit(ask, b) for b in bodies]
            time.sleep(0.5)
            start = time.monotonic()
            page = httpx.get(f"{server.url}/", timeout=60)
            models = httpx.get(f"{server.url}/api/models", timeout=60)
            catalog_s = time.monotonic() - start  # printed, not asserted: timings belong in benchmarks/
            answers = [f.result() for f in futures]
        assert page.status_code == 200 and models.status_code == 200
        print(f"GET / and /api/models during 200 requests: {catalog_s:.2f} s")
        assert [a.status_code for a in answers] == [b[2] for b in bodies]
        first = next(a.json() for a, b in zip(answers, bodies, strict=True) if b[2] == 200)
        assert first["fits"] in (True, False) and first["memory_per_gpu_bytes"]["total"] > 0


def test_a_full_queue_answers_busy_at_once() -> None:
    with Server(ServeSettings(workers=1, max_waiting=3)) as server:
        def ask(_: int):
            return httpx.post(f"{server.url}/api/plan", json={"model": "7b", "gpus": "8xA800"}, timeout=300)

        with ThreadPoolExecutor(max_workers=30) as pool:
            answers = list(pool.map(ask, range(30)))
        codes = [a.status_code for a in answers]
        assert set(codes) <= {200, 503} and codes.count(503) >= 20, codes
        busy = next(a for a in answers if a.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["detail"]
        assert httpx.get(f"{server.url}/api/gpus", timeout=60).status_code == 200


# ---------------------------------------------------------------- errors, hosts, CORS

def test_an_internal_error_is_logged_not_returned(monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals /srv/x")

    monkeypatch.setattr(serve_module, "read_json_body", broken)
    with TestClient(create_app(ServeSettings(workers=1)), raise_server_exceptions=False) as c, \
            caplog.at_level(logging.ERROR, logger="ftplan.serve"):
        response = c.post("/api/plan", json={"model": "7b", "gpus": "8xA800"})
    assert response.status_code == 500 and response.json() == {"detail": BUG}
    assert "secret internals" in caplog.text


def test_a_bug_in_a_worker_comes_back_as_a_traceback_for_the_log(monkeypatch, tmp_path: Path) -> None:
    from ftplan import answers, serve_work

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(answers, "estimate_answer", broken)
    kind, text = serve_work.handle(serve_work.Job("estimate", {"model": "7b", "gpus": "8xA800"}, str(tmp_path)),
                                   serve_work.commands(), serve_work.WorkSettings(), tmp_path)
    assert kind == "bug" and "RuntimeError: secret internals" in text and "Traceback" in text


def test_a_worker_that_dies_is_a_500_and_replaced(caplog) -> None:
    with TestClient(create_app(ServeSettings(workers=1)), raise_server_exceptions=False) as c, \
            caplog.at_level(logging.ERROR, logger="ftplan.serve"):
        pid = c.app.state.pool.pids()[0]
        threading.Timer(1.0, os.kill, (pid, signal.SIGKILL)).start()
        response = c.post("/api/scale", json=SLOW_SCALE)
        assert response.status_code == 500 and response.json() == {"detail": BUG}
        assert "a worker died" in caplog.text
        assert c.post("/api/estimate", json={"model": "7b", "gpus": "8xA800"}).status_code == 200


def test_only_loopback_host_names_on_loopback() -> None:
    with TestClient(create_app(ServeSettings(workers=1, allowed_hosts=LOOPBACK_HOSTS)),
                    base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/gpus").status_code == 200
        assert c.get("/api/gpus", headers={"Host": "localhost:8000"}).status_code == 200
        rebound = c.post("/api/plan", json={"model": "7b", "gpus": "8xA800"}, headers={"Host": "evil.example:8000"})
        assert rebound.status_code == 400


def test_no_cors_unless_asked() -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    with TestClient(create_app(ServeSettings(workers=1))) as c:
        response = c.options("/api/plan", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
        simple = c.post("/api/estimate", json={"model": "7b", "gpus": "8xA800"},
                        headers={"Origin": preflight["Origin"]})
        assert "access-control-allow-origin" not in simple.headers
    with TestClient(create_app(ServeSettings(workers=1, cors_origins=("http://localhost:3000",)))) as c:
        asked = c.options("/api/plan", headers={**preflight, "Origin": "http://localhost:3000"})
        assert asked.status_code == 200
        assert asked.headers["access-control-allow-origin"] == "http://localhost:3000"
        other = c.options("/api/plan", headers=preflight)
        assert "access-control-allow-origin" not in other.headers


# ---------------------------------------------------------------- the process

def start_serve(port: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "ftplan", "serve", "--port", str(port), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def test_sigterm_stops_the_server_and_its_workers() -> None:
    port = free_port()
    proc = start_serve(port, "--workers", "1")
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return httpx.get(f"{url}/api/gpus", timeout=5).status_code == 200
            except httpx.TransportError:
                return proc.poll() is not None

        assert wait_until(up, 120) and proc.poll() is None
        assert httpx.post(f"{url}/api/estimate", json={"model": "7b", "gpus": "8xA800"}, timeout=60).status_code == 200
        threading.Thread(target=lambda: httpx.post(f"{url}/api/scale", json=SLOW_SCALE, timeout=120),
                         daemon=True).start()
        time.sleep(1.5)  # the worker is planning
        helpers = descendants(proc.pid)
        assert helpers
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert proc.returncode in (0, -signal.SIGTERM)
        assert wait_until(lambda: not any(alive(p) for p in helpers), 10), "a worker outlived the server"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_taken_port_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start_serve(port)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert out == f"ftplan: error: cannot listen on 127.0.0.1:{port}: Address already in use; another server uses " \
                  "it: pick a free one with --port\n"
