"""The results dashboard (/dashboard) in a real headless Chromium, driven by Playwright for Python.

The browser is Debian's /usr/bin/chromium (ABRAY_CHROMIUM overrides the path); Playwright never downloads
one here. When it is missing these tests fail with a message saying so: they never skip.

The service is the real one (`abray serve` in its own process, the session's Ray), with tiny digits jobs. Its
links to Ray's dashboard and Grafana point at two ports where the tests start (and stop) small web servers.
"""

from __future__ import annotations

import io
import json
import math
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import pandas as pd
import pytest

from abray.results import CONFIG_COLUMNS
from abray.service.cluster import free_port
from support.browser import CHROMIUM, CHROMIUM_ARGS
from support.service import ApiServer, finish_jobs


GRID_JOB = {"name": "dash-grid", "epochs": 2, "batch_size": 64,
            "grid": {"optimizer": ["sgdm", "ab"], "delay": [0, 4], "seed": [0, 1]}}
FREE_JOB = {"name": "dash-free", "epochs": 3, "batch_size": 64, "mode": "free", "workers": 2,
            "cpus_per_worker": 0.5, "grid": {"optimizer": ["ab"], "seed": [0]}}
RHO_JOB = {"name": "dash-rho", "epochs": 2, "batch_size": 64, "grid": {"delay": [0, 4], "rho": [0.5, 1.5]}}
# every trial fails before its first epoch: a CUDA device no machine here has (the session's Ray advertises a GPU, so
# the trial is placed; a data folder of the client's choosing is refused by the service, see docs/reliability.md)
BROKEN_JOB = {"name": "dash-broken", "device": "cuda:99", "epochs": 1, "batch_size": 64}


# ---- the service ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def link_ports() -> dict:
    return {"ray_dashboard": free_port(), "grafana": free_port()}


@pytest.fixture(scope="module")
def api_server(ray_cluster, tmp_path_factory, link_ports):
    """The service of this module: as conftest's, with Ray's dashboard and Grafana configured at link_ports."""
    server = ApiServer(tmp_path_factory.mktemp("service"), ray_cluster["address"],
                       ray_dashboard_url=f"http://127.0.0.1:{link_ports['ray_dashboard']}",
                       grafana_url=f"http://127.0.0.1:{link_ports['grafana']}").start()
    yield server
    finish_jobs(server)
    server.stop()


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

    def __init__(self, browser, base_url: str, width: int = 1280):
        self.base = urlsplit(base_url)
        self.context = browser.new_context(viewport={"width": width, "height": 900}, accept_downloads=True)
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
        name: t.name, type: t.type, x: Array.from(t.x || []), y: Array.from(t.y || []), meta: t.meta,
        dash: t.line ? t.line.dash : null, showlegend: t.showlegend !== false,
        error_y: t.error_y ? {visible: t.error_y.visible, array: Array.from(t.error_y.array || [])} : null}))""",
                         div_id)


def table(page, table_id: str) -> tuple[list[str], list[list[str]]]:
    """A table's column keys and its shown rows' cell texts."""
    return page.evaluate("""id => { const t = document.getElementById(id);
        return [[...t.tHead.rows[0].cells].map(c => c.dataset.key),
                [...t.tBodies[0].rows].map(r => [...r.cells].map(c => c.innerText.trim()))]; }""", table_id)


def boxes_overlap(a: dict, b: dict) -> bool:
    return a["left"] < b["right"] and b["left"] < a["right"] and a["top"] < b["bottom"] and b["top"] < a["bottom"]


def legend_and_plot(page, div_id: str) -> tuple[dict, dict]:
    """The bounding boxes of a chart's legend and of its plot area (where the curves are)."""
    return page.evaluate("""id => { const d = document.getElementById(id);
        const box = e => { const r = e.getBoundingClientRect(); return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; };
        return [box(d.querySelector('.legend')), box(d.querySelector('.nsewdrag'))]; }""", div_id)


FINISHED = ("succeeded", "failed", "cancelled")


def api_status(server, job_id: int) -> str:
    return httpx.get(f"{server.url}/jobs/{job_id}", headers=server.auth, timeout=30).json()["status"]


def wait_detail(page, job_id: int, status: str):
    page.wait_for_selector(f'#job-detail[data-job-id="{job_id}"][data-status="{status}"]', state="attached")


# ---- the jobs --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def jobs(api_server) -> dict:
    """The module's finished-job material, submitted at once (they run one after another): the grid (2 optimizers
    x 2 delays x 2 seeds), a rho sweep (AB, 2 delays x 2 rho) and a job whose every trial fails."""
    found = {}
    with api_server.client() as client:
        for key, spec in (("grid", GRID_JOB), ("rho", RHO_JOB), ("broken", BROKEN_JOB)):
            response = client.post("/jobs", json=spec)
            assert response.status_code == 201, response.text
            found[key] = response.json()["id"]
    return found


@pytest.fixture(scope="module")
def grid_job(jobs) -> int:
    return jobs["grid"]


def finished(server, job_id: int) -> dict:
    return server.wait_for(job_id, lambda j: j["status"] in FINISHED, timeout=300)


# ---- serving -----------------------------------------------------------------------------------------

def test_serves_its_own_files_and_nothing_else(api_server):
    with httpx.Client(base_url=api_server.url, timeout=30) as client:  # no token: the page needs none
        page = client.get("/dashboard")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert 'src="/dashboard/static/plotly.min.js"' in page.text and "http" not in page.text.split("<body")[0]
        for name, kind in [("app.js", "javascript"), ("charts.js", "javascript"), ("table.js", "javascript"),
                           ("style.css", "css"), ("plotly.min.js", "javascript")]:
            r = client.get(f"/dashboard/static/{name}")
            assert r.status_code == 200 and kind in r.headers["content-type"], name
        plotly = client.get("/dashboard/static/plotly.min.js", headers={"Accept-Encoding": "gzip"})
        assert plotly.headers.get("content-encoding") == "gzip" and b"plotly.js v" in plotly.content[:200]
        raw = client.get("/dashboard/static/plotly.min.js", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in raw.headers and raw.num_bytes_downloaded == len(raw.content)  # as is too
        # the same file, and the gzip body (httpx counts the bytes that came over the wire) is far smaller
        assert plotly.content == raw.content and plotly.num_bytes_downloaded < len(raw.content) / 2
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
    assert {"/dashboard", "/dashboard/static/app.js", "/dashboard/static/charts.js", "/dashboard/static/table.js",
            "/dashboard/static/style.css", "/dashboard/static/plotly.min.js", "/jobs", "/health"} <= loaded
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
    seen, finished_at, deadline, tick = [], None, time.time() + 300, 0  # it waits for the module's other jobs
    while time.time() < deadline:
        tick += 1
        now = detail(page)
        if not seen or now != seen[-1]:
            seen.append(now)
        if now["status"] in FINISHED:
            break
        if finished_at is None and tick % 5 == 0 and api_status(api_server, job_id) in FINISHED:
            finished_at = time.time()
        if finished_at is not None and time.time() - finished_at > 30:
            pytest.fail(f"the job finished 30 s ago but the page did not follow it; it showed: {seen}")
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
    endpoint's means and stds, in percent), eight loss curves, no staleness chart (simulated runs only), a 4-row
    summary. A click on the job's row selects it, through the URL hash."""
    finished(api_server, grid_job)
    with api_server.client() as client:
        summary = client.get(f"/jobs/{grid_job}/summary").json()
    assert summary["status"] == "succeeded" and summary["group_by"] == ["optimizer", "delay"], summary

    page = watched.goto("/dashboard")
    page.locator(f'#jobs-table tr[data-job-id="{grid_job}"] td.name').click()
    wait_detail(page, grid_job, "succeeded")
    assert page.evaluate("location.hash") == f"#job={grid_job}"
    assert page.locator(f'#jobs-table tr.selected[data-job-id="{grid_job}"]').count() == 1

    accuracy = chart(page, "chart-accuracy")
    assert sorted(t["name"] for t in accuracy) == ["ab", "sgdm"]
    for trace in accuracy:
        rows = sorted((r for r in summary["rows"] if r["optimizer"] == trace["name"]), key=lambda r: r["delay"])
        assert trace["x"] == [0, 4]
        assert trace["y"] == pytest.approx([r["accuracy_mean"] for r in rows])
        assert 10 < max(trace["y"]) <= 100  # percent, as the summary and `abray results` give it
        assert trace["error_y"]["visible"] is True
        assert trace["error_y"]["array"] == pytest.approx([r["accuracy_std"] for r in rows])

    curves = chart(page, "chart-curves")
    assert len(curves) == 8 and all(t["x"] == [1, 2] for t in curves), curves
    assert len({(t["name"], t["dash"]) for t in curves}) == 8  # optimizer and delay by name, seed by line style
    assert sorted(t["name"] for t in curves if t["showlegend"]) == ["ab D=0", "ab D=4", "sgdm D=0", "sgdm D=4"]

    assert page.locator("#staleness-note").is_visible() and page.locator("#chart-staleness").is_hidden()
    keys, rows = table(page, "summary-table")
    assert keys == ["optimizer", "delay", "accuracy_mean", "accuracy_std", "count", "diverged"] and len(rows) == 4
    assert rows[0][:2] == ["ab", "0"] and rows[0][2] == f"{summary['rows'][0]['accuracy_mean']:.1f}%"
    assert detail(page)["points"] == "16"
    watched.assert_clean()


def test_curves_by_epoch_or_step_of_loss_lr_and_staleness(watched, api_server, grid_job):
    """The curves chart draws any of loss, accuracy, learning rate and staleness, against epochs or steps, from the
    results; on a short run its log axis' labels are whole numbers ("0.5", never ".5" or a bare "5")."""
    finished(api_server, grid_job)
    results = pd.read_parquet(f"{api_server.url}/jobs/{grid_job}/results?format=parquet")
    page = watched.goto(f"/dashboard#job={grid_job}")
    wait_detail(page, grid_job, "succeeded")

    def drawn(metric, x):
        page.select_option("#curve-metric", metric)
        page.select_option("#curve-x", x)
        return {t["meta"]: t for t in chart(page, "chart-curves")}

    for metric, x, scale in [("lr_now", "steps", 1), ("staleness_mean", "epoch", 1), ("test_accuracy", "steps", 100),
                             ("train_loss", "epoch", 1)]:
        traces = drawn(metric, x)
        assert set(traces) == set(results.trial_id), metric
        for trial_id, rows in results.sort_values("epoch").groupby("trial_id"):
            assert traces[trial_id]["x"] == rows[x].tolist(), (metric, x)
            assert traces[trial_id]["y"] == pytest.approx((scale * rows[metric]).tolist()), (metric, x)
    assert page.evaluate("document.querySelector('#chart-curves .g-xtitle').textContent").startswith("epoch")

    drawn("test_loss", "epoch")  # 2 epochs of digits: less than a decade of loss
    labels = page.evaluate("[...document.querySelectorAll('#chart-curves .ytick text')].map(t => t.textContent)")
    low, high = results.test_loss.min(), results.test_loss.max()
    assert len(labels) >= 2 and math.log10(high / low) < 1.5, (labels, low, high)
    for label in labels:
        value = float(label)  # a number as written, whole
        assert not label.startswith(".") and (value >= 1 or label.startswith("0.")), labels
        assert low / 1.2 <= value <= high * 1.2, (labels, low, high)
    watched.assert_clean()


def test_trials_table_sorts_and_filters_on_every_hyperparameter(watched, api_server, grid_job):
    finished(api_server, grid_job)
    with api_server.client() as client:
        trials = client.get(f"/jobs/{grid_job}/trials").json()
    page = watched.goto(f"/dashboard#job={grid_job}")
    wait_detail(page, grid_job, "succeeded")
    keys, rows = table(page, "trials-table")
    assert set(CONFIG_COLUMNS) <= set(keys) and len(rows) == 8  # every hyperparameter is a column
    assert keys[:5] == ["trial_id", "status", "epochs_reported", "test_accuracy", "diverged"]
    assert keys[5:8] == ["optimizer", "delay", "seed"]  # the swept ones first, in the config's order

    column = {key: i for i, key in enumerate(keys)}
    header = page.locator('#trials-table th[data-key="test_accuracy"]')
    header.click()
    header.click()  # descending
    assert header.get_attribute("aria-sort") == "descending"
    expected = sorted(trials, key=lambda t: -t["test_accuracy"])
    _, rows = table(page, "trials-table")
    assert [r[column["trial_id"]] for r in rows] == [t["trial_id"] for t in expected]

    page.fill('#trials-table input[data-key="optimizer"]', "sgdm")
    page.fill('#trials-table input[data-key="delay"]', ">0")
    _, rows = table(page, "trials-table")
    wanted = [t for t in expected if t["config"]["optimizer"] == "sgdm" and t["config"]["delay"] > 0]
    assert [r[column["trial_id"]] for r in rows] == [t["trial_id"] for t in wanted] and len(wanted) == 2
    assert page.locator("#trials-table").get_attribute("data-shown") == "2"
    page.fill('#trials-table input[data-key="optimizer"]', "")
    page.fill('#trials-table input[data-key="delay"]', "")
    page.fill('#trials-table input[data-key="test_accuracy"]', f">={100 * expected[3]['test_accuracy']:.6f}")
    _, rows = table(page, "trials-table")
    assert len(rows) == 4  # the best four, still sorted
    watched.assert_clean()


def test_download_buttons_give_the_results_as_csv_and_parquet(watched, api_server, grid_job):
    finished(api_server, grid_job)
    page = watched.goto(f"/dashboard#job={grid_job}")
    wait_detail(page, grid_job, "succeeded")
    for fmt, read in (("csv", pd.read_csv), ("parquet", pd.read_parquet)):
        with page.expect_download() as info:
            page.click(f"#download-{fmt}")
        download = info.value
        assert download.suggested_filename == f"job-{grid_job}.{fmt}"
        got = read(io.BytesIO(open(download.path(), "rb").read()))
        served = read(f"{api_server.url}/jobs/{grid_job}/results?format={fmt}")
        pd.testing.assert_frame_equal(got, served)
        assert len(got) == 16
    watched.assert_clean()


def setting(row: dict) -> str:
    return row["optimizer"] + (f" rho={row['rho']}" if "rho" in row else "")


def test_several_jobs_compared_in_one_chart(watched, api_server, jobs):
    """A tick in the job list adds a job's lines to the accuracy chart (dashed, named by job), each setting its own
    line: the rho sweep draws one line per rho, not a mean over them."""
    grid, rho = jobs["grid"], jobs["rho"]
    finished(api_server, grid)
    finished(api_server, rho)
    with api_server.client() as client:
        summaries = {j: client.get(f"/jobs/{j}/summary").json() for j in (grid, rho)}
    assert summaries[rho]["group_by"] == ["optimizer", "delay", "rho"]

    page = watched.goto(f"/dashboard#job={grid}")
    wait_detail(page, grid, "succeeded")
    page.locator(f'#jobs-table tr[data-job-id="{rho}"] input.compare').check()
    page.wait_for_selector(f'#job-detail[data-compared="{rho}"]', state="attached")
    assert page.evaluate("location.hash") == f"#job={grid}&compare={rho}"
    assert detail(page)["jobId"] == str(grid)  # the open job stays open

    traces = chart(page, "chart-accuracy")
    assert sorted(t["name"] for t in traces) == sorted([f"#{grid} ab", f"#{grid} sgdm", f"#{rho} ab rho=0.5",
                                                        f"#{rho} ab rho=1.5"])
    for trace in traces:
        job = trace["meta"]
        assert trace["dash"] == ("solid" if job == grid else "dash")
        name = trace["name"].split(" ", 1)[1]
        rows = sorted((r for r in summaries[job]["rows"] if setting(r) == name), key=lambda r: r["delay"])
        assert trace["x"] == [r["delay"] for r in rows] == [0, 4]
        assert trace["y"] == pytest.approx([r["accuracy_mean"] for r in rows])

    page.locator(f'#jobs-table tr[data-job-id="{rho}"] input.compare').uncheck()
    page.wait_for_selector('#job-detail[data-compared=""]', state="attached")
    assert len(chart(page, "chart-accuracy")) == 2
    watched.assert_clean()


def test_a_failed_job_without_results_shows_its_error_not_empty_charts(watched, api_server, jobs):
    broken = jobs["broken"]
    job = finished(api_server, broken)
    assert job["status"] == "failed" and job["progress"]["epochs"] == 0, job
    page = watched.goto(f"/dashboard#job={broken}")
    wait_detail(page, broken, "failed")
    assert page.locator("#charts").is_hidden() and page.locator("#results-empty").is_visible()
    assert "No results: no trial reported an epoch" in page.locator("#results-empty").inner_text()
    assert page.locator("#job-error").is_visible() and job["error"] in page.locator("#job-error").inner_text()
    for div in ("chart-accuracy", "chart-curves", "chart-staleness"):
        assert chart(page, div) == [] and page.locator(f"#{div} .main-svg").count() == 0, div
    keys, rows = table(page, "trials-table")
    assert len(rows) == 1 and rows[0][keys.index("status")] == "failed"
    assert page.locator("#download-csv").is_disabled()
    watched.assert_clean()


def test_at_1400_px_the_job_list_fits_and_legends_stay_off_the_curves(browser, api_server, jobs):
    finished(api_server, jobs["rho"])
    watched = Watched(browser, api_server.url, width=1400)
    try:
        page = watched.goto(f"/dashboard#job={jobs['rho']}&compare={jobs['grid']}")
        wait_detail(page, jobs["rho"], "succeeded")
        page.wait_for_selector(f'#job-detail[data-compared="{jobs["grid"]}"]', state="attached")
        panel = page.evaluate("""() => { const p = document.getElementById('jobs-panel'); const r = p.getBoundingClientRect();
            return {scroll: p.scrollWidth, client: p.clientWidth, right: r.right,
                    cells: [...document.querySelectorAll('#jobs-table th, #jobs-table tbody tr:first-child td')]
                           .map(c => c.getBoundingClientRect().right)}; }""")
        assert panel["scroll"] <= panel["client"], panel  # no sideways scrolling
        assert max(panel["cells"]) <= panel["right"] + 0.5, panel  # and no column cut off
        for div in ("chart-accuracy", "chart-curves"):
            legend, plot = legend_and_plot(page, div)
            assert not boxes_overlap(legend, plot), (div, legend, plot)
        watched.assert_clean()
    finally:
        watched.close()


class _Page(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_links_to_ray_dashboard_and_grafana_appear_while_they_run(watched, api_server, link_ports):
    servers = [ThreadingHTTPServer(("127.0.0.1", port), _Page) for port in link_ports.values()]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = watched.goto("/dashboard")
        page.wait_for_selector("#links:not([hidden]) a[data-link=grafana]")
        links = page.evaluate("[...document.querySelectorAll('#links a')].map(a => [a.dataset.link, a.href, a.target])")
        assert links == [["ray_dashboard", f"http://127.0.0.1:{link_ports['ray_dashboard']}/", "_blank"],
                         ["grafana", f"http://127.0.0.1:{link_ports['grafana']}/", "_blank"]]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    checks = int(page.locator("#links").get_attribute("data-checks"))
    page.click("#refresh")
    page.wait_for_selector(f'#links[data-checks="{checks + 1}"]', state="attached")
    assert page.locator("#links").is_hidden() and page.locator("#links a").count() == 0
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
        # the row can be drawn a moment before the page says it is ready: wait for that, not assert it at once
        page.wait_for_selector("body[data-state=ready]")
        watched.assert_clean(allow_status=(401,))
    finally:
        watched.close()
        server.stop()
