"""The results dashboard (/dashboard) in a real headless Chromium, driven by Playwright for Python.

The browser is Debian's /usr/bin/chromium (ABRAY_CHROMIUM overrides the path); Playwright never downloads
one here. When it is missing these tests fail with a message saying so: they never skip.

The service is the real one (`abray serve` in its own process, the session's Ray), with tiny digits jobs.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from urllib.parse import urlsplit

import httpx
import pytest

from support.browser import CHROMIUM, CHROMIUM_ARGS
from support.service import ApiServer


GRID_JOB = {"name": "dash-grid", "epochs": 2, "batch_size": 64,
            "grid": {"optimizer": ["sgdm", "ab"], "delay": [0, 4], "seed": [0, 1]}}
FREE_JOB = {"name": "dash-free", "epochs": 3, "batch_size": 64, "mode": "free", "workers": 2,
            "cpus_per_worker": 0.5, "grid": {"optimizer": ["ab"], "seed": [0]}}


# ---- the browser ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"the dashboard's browser tests need Chromium at {CHROMIUM} (Debian: `apt-get install "
                    "chromium`; or set ABRAY_CHROMIUM to another Chromium binary). They never download one.",
                    pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the dashboard's browser tests need the `playwright` Python package (the project's "
                    "test extra: pip install -e '.[test]')", pytrace=False)
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    except Exception as err:
        playwright.stop()
        pytest.fail(f"could not start Chromium at {CHROMIUM}: {err}", pytrace=False)
    yield browser
    browser.close()
    playwright.stop()


class Watched:
    """A page in a fresh browser context, with everything that went wrong on it recorded."""

    def __init__(self, browser, base_url: str):
        self.base = urlsplit(base_url)
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.console_errors, self.page_errors, self.failed, self.bad_status, self.requests = [], [], [], [], []
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.failed.append(f"{r.url}: {r.failure}"))
        self.page.on("response", lambda r: r.status >= 400 and self.bad_status.append(f"{r.status} {r.url}"))
        self.page.on("request", lambda r: self.requests.append(r))

    def goto(self, path: str):
        self.page.goto(f"{self.base.scheme}://{self.base.netloc}{path}")
        return self.page

    def foreign_requests(self) -> list[str]:
        return [r.url for r in self.requests
                if not r.url.startswith("data:") and (urlsplit(r.url).hostname, urlsplit(r.url).port)
                != (self.base.hostname, self.base.port)]

    def assert_clean(self, allow_status: tuple[int, ...] = ()):
        """No console error, no script error, no failed request, and no request leaving the service."""
        allowed = [f"status of {s} " for s in allow_status]
        console = [m for m in self.console_errors if not any(a in m for a in allowed)]
        bad = [b for b in self.bad_status if int(b.split()[0]) not in allow_status]
        assert not console, f"console errors: {console}"
        assert not self.page_errors, f"uncaught errors in the page: {self.page_errors}"
        assert not self.failed, f"failed requests: {self.failed}"
        assert not bad, f"error responses: {bad}"
        assert not self.foreign_requests(), f"requests that left {self.base.netloc}: {self.foreign_requests()}"

    def close(self):
        self.context.close()


@pytest.fixture
def watched(browser, api_server):
    w = Watched(browser, api_server.url)
    yield w
    w.close()


def detail(page) -> dict:
    return page.evaluate("() => ({...document.getElementById('job-detail').dataset})")


def chart(page, div_id: str) -> list[dict]:
    """A Plotly div's traces, as the page holds them."""
    return page.evaluate("""id => (document.getElementById(id).data || []).map(t => ({
        name: t.name, type: t.type, x: Array.from(t.x || []), y: Array.from(t.y || []),
        dash: t.line ? t.line.dash : null, showlegend: t.showlegend !== false,
        error_y: t.error_y ? {visible: t.error_y.visible, array: Array.from(t.error_y.array || [])} : null}))""",
                         div_id)


FINISHED = ("succeeded", "failed", "cancelled")


def api_status(server, job_id: int) -> str:
    return httpx.get(f"{server.url}/jobs/{job_id}", headers=server.auth, timeout=30).json()["status"]


def wait_detail(page, job_id: int, status: str):
    page.wait_for_selector(f'#job-detail[data-job-id="{job_id}"][data-status="{status}"]', state="attached")


# ---- the jobs --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def grid_job(api_server) -> int:
    """2 optimizers x 2 delays x 2 seeds, submitted once for the module; tests wait for it as they need."""
    with api_server.client() as client:
        response = client.post("/jobs", json=GRID_JOB)
    assert response.status_code == 201, response.text
    return response.json()["id"]


# ---- serving -----------------------------------------------------------------------------------------

def test_serves_its_own_files_and_nothing_else(api_server):
    with httpx.Client(base_url=api_server.url, timeout=30) as client:  # no token: the page needs none
        page = client.get("/dashboard")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert 'src="/dashboard/static/plotly.min.js"' in page.text and "http" not in page.text.split("<body")[0]
        for name, kind in [("app.js", "javascript"), ("style.css", "css"), ("plotly.min.js", "javascript")]:
            r = client.get(f"/dashboard/static/{name}")
            assert r.status_code == 200 and kind in r.headers["content-type"], name
        plotly = client.get("/dashboard/static/plotly.min.js", headers={"Accept-Encoding": "gzip"})
        assert plotly.headers.get("content-encoding") == "gzip" and b"plotly.js v" in plotly.content[:200]
        raw = client.get("/dashboard/static/plotly.min.js", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in raw.headers and gzip.compress(raw.content)  # served as is too
        for name in ["index.html", "nope.js", "..%2F..%2Fapi%2Fsettings.py", "..%2Fweb%2Fapp.js", "%2Fetc%2Fpasswd"]:
            assert client.get(f"/dashboard/static/{name}").status_code == 404, name
        assert client.get("/dashboard/static/../../api/settings.py").status_code == 404


# ---- the page ----------------------------------------------------------------------------------------

def test_page_loads_clean_and_stays_on_the_service(watched, grid_job):
    """(a) the page, its JS and CSS load; the job list renders, while a job runs too, without a console error,
    a failed request, or any request to another host."""
    page = watched.goto("/dashboard")
    page.wait_for_selector("body[data-state=ready]")
    page.wait_for_selector(f'#jobs-table tr[data-job-id="{grid_job}"]')
    assert page.evaluate("typeof Plotly") == "object"
    newest = page.locator("#jobs-table tbody tr").first.get_attribute("data-job-id")
    page.wait_for_selector(f'#job-detail[data-job-id="{newest}"]', state="attached")  # opened by default
    page.wait_for_timeout(2500)  # at least one poll
    loaded = {urlsplit(r.url).path for r in watched.requests}
    assert {"/dashboard", "/dashboard/static/app.js", "/dashboard/static/style.css",
            "/dashboard/static/plotly.min.js", "/jobs"} <= loaded
    watched.assert_clean()


def test_a_running_job_updates_without_reload(watched, api_server, grid_job):
    """(c) opened on a job before it finishes, the page follows it to the end by polling: status, progress and
    the number of points grow, all without reloading. The job runs in mode "free", so it also has a staleness
    histogram."""
    with api_server.client() as client:
        response = client.post("/jobs", json=FREE_JOB)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]

    page = watched.goto(f"/dashboard#job={job_id}")
    page.wait_for_selector(f'#job-detail[data-job-id="{job_id}"]', state="attached")
    page.evaluate("window.__sameDocument = true")
    seen, finished_at, deadline, tick = [], None, time.time() + 150, 0
    while time.time() < deadline:
        tick += 1
        now = detail(page)
        if not seen or now != seen[-1]:
            seen.append(now)
        if now["status"] in FINISHED:
            break
        if finished_at is None and tick % 5 == 0 and api_status(api_server, job_id) in FINISHED:
            finished_at = time.time()
        if finished_at is not None and time.time() - finished_at > 10:
            pytest.fail(f"the job finished 10 s ago but the page did not follow it; it showed: {seen}")
        time.sleep(0.2)
    first, last = seen[0], seen[-1]
    assert first["status"] in ("queued", "running") and int(first["points"]) < 3, seen
    assert last["status"] == "succeeded", seen
    assert any(s["status"] == "running" for s in seen), f"never shown running: {seen}"
    points = [int(s["points"]) for s in seen]
    assert points == sorted(points), f"points went back: {seen}"
    assert int(last["done"]) == int(last["total"]) == 1 and int(last["points"]) == 3, seen
    assert len({s["renders"] for s in seen}) >= 3, f"too few refreshes: {seen}"
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    row = page.locator(f'#jobs-table tr[data-job-id="{job_id}"]')
    row.locator(".status.succeeded").wait_for()  # the job list followed too

    # staleness: one trial, summed over its epochs; the bars add up to its updates
    page.wait_for_selector("#chart-staleness:not([hidden])")
    assert page.locator("#staleness-note").is_hidden()
    bars = chart(page, "chart-staleness")
    assert len(bars) == 1 and bars[0]["type"] == "bar" and bars[0]["x"], bars
    with api_server.client() as client:
        results = client.get(f"/jobs/{job_id}/results").json()
    total = sum(sum(json.loads(r["staleness_hist"]).values()) for r in results)
    assert sum(bars[0]["y"]) == total > 0
    watched.assert_clean()


def test_a_finished_job_shows_its_charts_and_summary(watched, api_server, grid_job):
    """(b) 2 optimizers x 2 delays x 2 seeds: two accuracy lines with two points and error bars each (the summary
    endpoint's means and stds), eight loss curves, no staleness chart (simulated runs only), a 4-row summary.
    A click on the job's row selects it, through the URL hash."""
    api_server.wait_for(grid_job, lambda j: j["status"] in FINISHED)
    with api_server.client() as client:
        summary = client.get(f"/jobs/{grid_job}/summary").json()
    assert summary["status"] == "succeeded", summary

    page = watched.goto("/dashboard")
    page.locator(f'#jobs-table tr[data-job-id="{grid_job}"]').click()
    wait_detail(page, grid_job, "succeeded")
    assert page.evaluate("location.hash") == f"#job={grid_job}"
    assert page.locator(f'#jobs-table tr.selected[data-job-id="{grid_job}"]').count() == 1

    accuracy = chart(page, "chart-accuracy")
    assert sorted(t["name"] for t in accuracy) == ["ab", "sgdm"]
    for trace in accuracy:
        rows = sorted((r for r in summary["rows"] if r["optimizer"] == trace["name"]), key=lambda r: r["delay"])
        assert trace["x"] == [0, 4]
        assert trace["y"] == pytest.approx([r["mean"] for r in rows])
        assert trace["error_y"]["visible"] is True
        assert trace["error_y"]["array"] == pytest.approx([r["std"] for r in rows])

    loss = chart(page, "chart-loss")
    assert len(loss) == 8 and all(t["x"] == [1, 2] for t in loss), loss
    assert len({(t["name"], t["dash"]) for t in loss}) == 8  # optimizer and delay by name, seed by line style
    assert sorted(t["name"] for t in loss if t["showlegend"]) == ["ab D=0", "ab D=4", "sgdm D=0", "sgdm D=4"]
    page.select_option("#loss-metric", "train_loss")
    assert len(chart(page, "chart-loss")) == 8

    assert page.locator("#staleness-note").is_visible() and page.locator("#chart-staleness").is_hidden()
    table = page.locator("#summary-table tbody tr")
    assert table.count() == 4
    assert table.first.locator("td").first.inner_text().strip() == "ab"
    assert detail(page)["points"] == "16"
    watched.assert_clean()


def test_reads_that_need_the_token_ask_for_it(browser, ray_cluster, tmp_path):
    """(d) with ABRAY_READS_NEED_TOKEN=1 the page asks for the token, refuses a wrong one, shows the jobs once the
    right one is entered, and keeps it in localStorage for the next visit."""
    server = ApiServer(tmp_path, ray_cluster["address"], reads_need_token=True, max_running_jobs=0).start()
    watched = Watched(browser, server.url)
    try:
        with server.client() as client:
            job_id = client.post("/jobs", json=dict(GRID_JOB, name="dash-token")).json()["id"]
        assert httpx.get(f"{server.url}/jobs").status_code == 401

        page = watched.goto("/dashboard")
        page.wait_for_selector("body[data-state=auth]")
        assert page.locator("#auth-banner").is_visible()
        assert page.locator("#jobs-table tbody tr").count() == 0

        page.fill("#token-input", "wrong-token-0123456789")
        page.click("#token-save")
        page.wait_for_selector('#auth-banner[data-reason="wrong bearer token"]')
        assert page.locator("#jobs-table tbody tr").count() == 0

        page.fill("#token-input", server.token)
        page.click("#token-save")
        page.wait_for_selector(f'#jobs-table tr[data-job-id="{job_id}"][data-status="queued"]')
        wait_detail(page, job_id, "queued")
        assert page.locator("#auth-banner").is_hidden()
        assert page.evaluate("localStorage.getItem('abray.token')") == server.token

        sent = [r for r in watched.requests if urlsplit(r.url).path.startswith("/jobs")]
        assert sent[-1].headers.get("authorization") == f"Bearer {server.token}"

        page.reload()  # the token is remembered
        page.wait_for_selector(f'#jobs-table tr[data-job-id="{job_id}"]')
        assert page.evaluate("document.body.dataset.state") == "ready"
        watched.assert_clean(allow_status=(401,))
    finally:
        watched.close()
        server.stop()
