"""End to end: `halluc dashboard` serves the fixture runs and Debian's Chromium (driven by playwright) opens every page.

Needs /usr/bin/chromium (CI installs it with apt-get) and the playwright Python package (dev extra); never runs
`playwright install`. Screenshots of every page are saved under the test's tmp_path.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FIXTURES = Path(__file__).parent / "fixtures" / "runs"
TIMEOUT_MS = 30_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"halluc dashboard exited with status {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the dashboard did not answer on {url} within {timeout} s")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The real server, started through the CLI on a free port of 127.0.0.1, stopped with its process group."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "halluc.cli", "dashboard", "--runs", str(FIXTURES), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium); CI's .ci/run does")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[dev]' (do not run `playwright install`)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _metrics(run: str) -> dict:
    return json.loads((FIXTURES / run / "metrics.json").read_text())


def _first_hallucinating_image(run: str) -> str:
    """Id of the run's first image whose caption CHAIR marks a hallucinated mention in."""
    details = json.loads((FIXTURES / run / "chair_details.json").read_text())
    return next(str(d["image_id"]) for d in details if any(m["hallucinated"] for m in d["mentions"]))


def _open(browser, url: str, title: str):
    """Open a page and wait for its title; the checks that follow wait for their own content."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.get_by_role("heading", name=title, exact=True).wait_for(timeout=TIMEOUT_MS)
    return page


def _shot(page, shots: Path, name: str) -> None:
    """Full-page screenshot once charts have painted and the script has finished."""
    page.get_by_test_id("stStatusWidget").wait_for(state="detached", timeout=TIMEOUT_MS)
    height = page.get_by_test_id("stMain").evaluate("main => main.scrollHeight")  # the app scrolls inside stMain
    page.set_viewport_size({"width": 1400, "height": min(max(height, 1000), 8000)})
    page.wait_for_timeout(1000)
    page.screenshot(path=str(shots / f"{name}.png"))
    page.close()


def test_every_page_in_chromium(server: str, browser, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    chair, pope = _metrics("chair-baseline"), _metrics("pope-baseline")

    page = _open(browser, f"{server}/", "Runs")
    expect(page.get_by_test_id("stDataFrame")).to_be_visible()
    n_runs = len(list(FIXTURES.glob("*/manifest.json")))
    expect(page.get_by_text(f"{n_runs} of {n_runs} runs in {FIXTURES.resolve()}")).to_be_visible()
    _shot(page, tmp_path, "runs")

    page = _open(browser, f"{server}/compare", "Compare")
    expect(page.get_by_test_id("stMetricValue").filter(has_text=f"{chair['CHAIR_i']:.3f}").first).to_be_visible()
    expect(page.get_by_test_id("stVegaLiteChart")).to_have_count(2)
    expect(page.get_by_role("heading", name="Paired differences to the baseline")).to_be_visible()
    expect(page.get_by_test_id("stDataFrame")).to_have_count(2)  # all metrics, then chair-vhr-2 - chair-baseline
    _shot(page, tmp_path, "compare")

    image_id = _first_hallucinating_image("chair-baseline")
    page = _open(browser, f"{server}/samples?run=chair-baseline&image={image_id}", "Samples")
    expect(page.get_by_text(f"image {image_id} (")).to_be_visible()
    expect(page.locator("mark.halluc").first).to_be_visible()
    image = page.get_by_test_id("stImage").locator("img").first
    expect(image).to_be_visible()
    assert image.evaluate("img => img.complete && img.naturalWidth > 0")
    _shot(page, tmp_path, "samples")

    page = _open(browser, f"{server}/pope?run=pope-baseline", "POPE")
    expect(
        page.get_by_test_id("stMetricValue").filter(has_text=f"{pope['random']['accuracy']:.3f}").first
    ).to_be_visible()
    expect(page.get_by_test_id("stVegaLiteChart")).to_have_count(2)
    _shot(page, tmp_path, "pope")

    page = _open(browser, f"{server}/heads", "Heads")
    expect(page.get_by_test_id("stVegaLiteChart")).to_have_count(2)
    _shot(page, tmp_path, "heads")

    page = _open(browser, f"{server}/pairs", "Preference pairs")
    lost = json.loads((FIXTURES / "sentinel-demo" / "pairs.jsonl").read_text().splitlines()[0])["lose_hallucinated"]
    expect(page.locator(f'mark.halluc[title="{lost[0]}"]').first).to_be_visible()
    _shot(page, tmp_path, "pairs")

    page = _open(browser, f"{server}/crosscheck", "CrossCheck")
    report = json.loads((FIXTURES / "crosscheck-demo" / "crosscheck.json").read_text())
    best = min(report["systems"], key=lambda row: row["score"])["system"]
    expect(page.get_by_test_id("stMetricValue").filter(has_text=best)).to_be_visible()
    _shot(page, tmp_path, "crosscheck")

    assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted(
        ["runs", "compare", "samples", "pope", "heads", "pairs", "crosscheck"]
    )
