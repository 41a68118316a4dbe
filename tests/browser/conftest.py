"""What the browser tests share (tests/browser/test_*_browser.py): Debian's Chromium
(/usr/bin/chromium, from apt) driven by Playwright, the app served on a free port in a thread over
the test database, screenshots under tests/browser/screenshots/ (postgresql/ within it on
PostgreSQL; git-ignored) and axe-core's
check (shipped in axe-playwright-python).

Skipped, saying why, when Chromium or Playwright is missing (`apt-get install -y chromium`,
`pip install -r requirements-dev.txt`), except where COALITION_REQUIRE_BROWSER is set (.ci/run):
there a missing browser fails. No browser is ever downloaded."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from coalition import limits
from tests.conftest import ON_POSTGRES

CHROMIUM = "/usr/bin/chromium"
# .ci/run runs the suite on SQLite and on PostgreSQL at the same time: each its own folder.
SHOTS = Path(__file__).resolve().parent / "screenshots" / ("postgresql" if ON_POSTGRES else "")
PHONE = {"width": 390, "height": 844}



def _missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import axe_playwright_python.sync_playwright  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"browser tests need {exc.name} (pip install -r requirements-dev.txt)"
    return None


MISSING = _missing()
if MISSING and os.environ.get("COALITION_REQUIRE_BROWSER"):
    raise RuntimeError(f"COALITION_REQUIRE_BROWSER is set: {MISSING}")
if MISSING is None:
    from axe_playwright_python import sync_playwright as axe_api
    from playwright import sync_api


@pytest.fixture(scope="session", autouse=True)
def _browser_available():
    if MISSING:  # session-scoped: before any other fixture of the browser tests starts
        pytest.skip(MISSING)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM,
                                              args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture
def live(app):
    """The app on 127.0.0.1 and a free port, served by a thread for this test."""
    app.extensions[limits.EXTENSION].limiter.enabled = False  # one address makes every request
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def page(browser, live):
    context = browser.new_context(base_url=live, viewport={"width": 1280, "height": 900},
                                  accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def accessible(page, name: str) -> None:
    """No serious or critical axe-core violation on the page as it is now."""
    results = axe_api.Axe().run(page)
    bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
           for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, f"{name}: {bad}"


def look(page, name: str, *, phone: bool = True) -> None:
    """Screenshot and check the page at desktop width, then at phone width."""
    shot(page, name)
    accessible(page, name)
    if phone:
        size = page.viewport_size
        page.set_viewport_size(PHONE)
        shot(page, f"{name}-phone")
        accessible(page, f"{name}-phone")
        page.set_viewport_size(size)
