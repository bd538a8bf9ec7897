"""`ftplan serve`'s page in a real headless Chromium (Debian's `chromium`, driven by Playwright): a shared link
renders without a click, an input change re-ranks, a download arrives, a bad GPU shows the CLI's 422 line.

The screenshot goes to the test's tmp folder; FTPLAN_UPDATE_SCREENSHOT=1 writes docs/serve.png (the README's).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="ftplan serve needs the serve extra: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx", reason="the dev extra (httpx) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra (playwright) is not installed")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# what the machine's closed network and a root user need (see the project's CI notes)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
READY = "body[data-state=ready], body[data-state=error]"
TIMEOUT_MS = 180_000  # planning + the scaling curve, on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`ftplan serve` as a user starts it, in a scratch working directory."""
    port = free_port()
    cwd = tmp_path_factory.mktemp("serve")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "ftplan", "serve", "--port", str(port)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/api/gpus", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"ftplan serve did not start: {proc.stdout.read()}")
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page
        browser.close()
        assert not errors, errors


def wait_ready(page) -> str:
    page.wait_for_selector(READY)
    return page.evaluate("document.body.dataset.state")


def ranking(page) -> list[tuple[str, str]]:
    rows = page.locator("#ranking tbody tr")
    return [(rows.nth(i).locator("td").nth(1).inner_text(), rows.nth(i).locator("td").nth(2).inner_text())
            for i in range(rows.count())]


def test_page_in_chromium(server: str, page, tmp_path: Path) -> None:
    # a shared link renders without a click
    page.goto(f"{server}/?model=7b&gpus=8xA800&method=lora")
    assert wait_ready(page) == "ready"
    lora = ranking(page)
    assert lora and {m for m, _ in lora} == {"lora"}
    expected = httpx.post(f"{server}/api/plan", json={"model": "7b", "gpus": "8xA800", "method": ["lora"], "top": 5},
                          timeout=300).json()
    assert [name for _, name in lora] == [p["name"] for p in expected["plans"]]
    assert "llama-2-7b" in page.locator("#summary").inner_text()
    assert page.locator("#memory-chart rect").count() >= 5  # the stacked bar's categories
    assert page.locator("#time-chart rect").count() >= 1
    page.wait_for_selector("#scale-chart circle")
    assert page.locator("#scale-chart circle").count() == 5  # 1, 2, 4, 8, 16 GPUs
    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("FTPLAN_UPDATE_SCREENSHOT") == "1":
        from PIL import Image  # matplotlib's dependency: 256 colours keep the committed file small

        (ROOT / "docs").mkdir(exist_ok=True)
        Image.open(shot).convert("RGB").quantize(256).save(ROOT / "docs" / "serve.png", optimize=True)

    # change an input: the ranking follows, and the address bar holds the new input
    page.select_option("#method", "full")
    page.wait_for_function("document.querySelector('#ranking tbody td:nth-child(2)').textContent === 'full'")
    assert wait_ready(page) == "ready"
    full = ranking(page)
    assert {m for m, _ in full} == {"full"} and full != lora
    assert "method=full" in page.url

    # download the winner's files
    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    assert download.suggested_filename.endswith(".zip")
    with zipfile.ZipFile(io.BytesIO(Path(download.path()).read_bytes())) as zf:
        names = {Path(n).name for n in zf.namelist()}
        assert {"plan.json", "accelerate.yaml", "launch.sh", "llamafactory.yaml"} <= names
        plan = json.loads(next(zf.read(n) for n in zf.namelist() if n.endswith("plan.json")))
    assert plan["name"] == full[0][1]
    assert ("ds_config.json" in names) == (plan["config"]["engine"] == "deepspeed")

    # a bad GPU: the 422 line, as the CLI prints it
    page.fill("#gpus", "8xA9000")
    page.press("#gpus", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    detail = httpx.post(f"{server}/api/plan", json={"model": "7b", "gpus": "8xA9000", "method": ["full"], "top": 5},
                        timeout=300).json()["detail"]
    assert page.locator("#error").inner_text() == detail
    assert "unknown GPU 'A9000'" in detail
