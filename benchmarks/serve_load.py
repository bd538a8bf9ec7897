"""`ftplan serve` under load: N concurrent /api/plan requests against one process planning them one after another.

Prints three measured figures (issue 26's bar in brackets):
- serial_s: one process answering the N request bodies one after another, through the same code as a worker
  (ftplan/serve_work.py: option parsing, planning, JSON);
- concurrent_s: `ftplan serve` (a real server in its own process, its default workers) answering the same N
  bodies sent at once, from the first request sent to the last answer received, and the ratio to serial_s
  [<= 1.2];
- the slowest GET / and GET /api/models while those requests are in flight [< 1 s].

    python benchmarks/serve_load.py                 # 100 requests
    python benchmarks/serve_load.py --requests 200 --workers 4

Timings depend on the machine and what else runs on it; quote them with the core count and the load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bodies(n: int) -> list[dict]:
    """N /api/plan bodies: Llama-2-7B on one node of 8 A800s, four sequence lengths x three methods."""
    seq = (512, 1024, 2048, 4096)
    methods = (["lora"], ["full"], ["qlora"])
    return [{"model": "7b", "gpus": "8xA800", "seq_len": seq[i % 4], "method": methods[i % 3]} for i in range(n)]


def serial_s(requests: list[dict]) -> float:
    from ftplan import serve_work

    cmds = serve_work.commands()
    with tempfile.TemporaryDirectory() as scratch:
        def answer(body: dict) -> None:
            kind, _ = serve_work.handle(serve_work.Job("plan", body, os.getcwd()), cmds, serve_work.WorkSettings(),
                                        Path(scratch))
            assert kind == "json", kind

        answer(requests[0])  # warm caches, as a worker is after its first request
        start = time.perf_counter()
        for body in requests:
            answer(body)
        return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def concurrent(url: str, requests: list[dict], workers: int) -> tuple[float, float, int]:
    import httpx

    limits = httpx.Limits(max_connections=len(requests) + 10, max_keepalive_connections=len(requests) + 10)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        for _ in range(workers):  # warm every worker once
            assert (await client.post("/api/plan", json=requests[0])).status_code == 200
        done = asyncio.Event()
        slowest_get = 0.0
        gets = 0

        async def probe() -> None:
            nonlocal slowest_get, gets
            while not done.is_set():
                for path in ("/", "/api/models"):
                    t = time.perf_counter()
                    response = await client.get(path)
                    assert response.status_code == 200
                    slowest_get = max(slowest_get, time.perf_counter() - t)
                    gets += 1
                await asyncio.sleep(0.2)

        start = time.perf_counter()
        tasks = [asyncio.create_task(client.post("/api/plan", json=b)) for b in requests]
        prober = asyncio.create_task(probe())
        answers = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        done.set()
        await prober
    assert all(a.status_code == 200 for a in answers), {a.status_code for a in answers}
    return elapsed, slowest_get, gets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--workers", type=int, default=None, help="ftplan serve --workers (default: its own)")
    args = parser.parse_args()
    requests = bodies(args.requests)
    import httpx

    from ftplan.serve_pool import default_workers

    workers = args.workers or default_workers()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ftplan", "serve", "--port", str(port), "--workers", str(workers)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/api/gpus", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("ftplan serve did not start")
            time.sleep(0.2)
        load = os.getloadavg()[0]
        before = serial_s(requests)  # serial runs before and after the concurrent one: a shared machine drifts
        conc, slowest_get, gets = asyncio.run(concurrent(url, requests, workers))
        after = serial_s(requests)
    finally:
        server.terminate()
        server.wait(timeout=30)
    ser = (before + after) / 2
    print(f"cores: {os.cpu_count()}, load average before: {load:.1f}, ftplan serve workers: {workers}")
    print(f"serial_s: {ser:.2f} (mean of {before:.2f} before and {after:.2f} after; {args.requests} plans one "
          f"after another in one process, {ser / args.requests:.3f} s each)")
    print(f"concurrent_s: {conc:.2f} ({args.requests} /api/plan requests at once); ratio to serial: "
          f"{conc / ser:.2f} (aim <= 1.2)")
    print(f"slowest GET / or /api/models during them: {slowest_get:.3f} s over {gets} requests (aim < 1 s)")


if __name__ == "__main__":
    main()
