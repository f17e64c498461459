"""The OpenAPI docs (/docs: Swagger UI, /redoc: ReDoc) in a real headless Chromium: they render POST /jobs's typed
body from the service's own files, and no request leaves the service (they work offline)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import httpx
import pytest

from support.browser import CHROMIUM, CHROMIUM_ARGS
from support.service import ApiServer


@pytest.fixture(scope="module")
def docs_server(ray_cluster, tmp_path_factory):
    server = ApiServer(tmp_path_factory.mktemp("docs"), ray_cluster["address"], max_running_jobs=0).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    assert os.access(CHROMIUM, os.X_OK), f"the docs' browser test needs Chromium at {CHROMIUM} (scripts/test-deps.sh)"
    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    yield browser
    browser.close()
    playwright.stop()


def test_the_docs_assets_are_served_here_and_nothing_else(docs_server):
    with httpx.Client(base_url=docs_server.url, timeout=30) as client:
        for path, marker in (("/docs", "/docs/static/swagger-ui-bundle.js"), ("/redoc", "/docs/static/redoc.standalone.js")):
            page = client.get(path)
            assert page.status_code == 200 and marker in page.text, path
            assert "cdn." not in page.text and "fonts.googleapis" not in page.text, path
        for name, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "css"),
                           ("redoc.standalone.js", "javascript"), ("favicon.png", "image/png")):
            response = client.get(f"/docs/static/{name}")
            assert response.status_code == 200 and kind in response.headers["content-type"] and response.content
        for name in ("index.html", "..%2F..%2Fapi%2Fmain.py", "swagger-ui-bundle.js.map"):
            assert client.get(f"/docs/static/{name}").status_code == 404, name


@pytest.mark.parametrize("path,ready", [("/docs", "#operations-jobs-submit_jobs_post"),
                                        ("/redoc", "text=Grid")])
def test_the_docs_render_offline_with_the_typed_body(chromium, docs_server, path, ready):
    base = urlsplit(docs_server.url)
    context = chromium.new_context()
    page = context.new_page()
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    try:
        page.goto(docs_server.url + path)
        page.wait_for_selector(ready, timeout=30_000)
        if path == "/docs":  # open POST /jobs's body schema: every field with its type, range and default
            body = "#operations-jobs-submit_jobs_post .opblock-section-request-body"
            page.click("#operations-jobs-submit_jobs_post .opblock-summary")
            page.click(f"{body} button[data-name='model']")
            page.wait_for_selector("text=max_trials", timeout=30_000)
            text = page.inner_text(body)
            expected = ("momentumCollapse allnumber[0, 1)", "Default0.9", "delayCollapse allinteger[0, 10000]",
                        "optimizerCollapse allstring", "Enum", "grid", "max_trials")
        else:
            text = page.inner_text("body")
            expected = ("Grid", "momentum", "[ 0 .. 1 )", "Default: 0.9", '"sgdm" "ab"', "max_trials")
        for found in expected:
            assert found in text, (path, found, text[:3000])
        outside = [u for u in requests if not u.startswith(("data:", "blob:"))
                   and (urlsplit(u).hostname, urlsplit(u).port) != (base.hostname, base.port)]
        assert not outside, f"requests that left the service: {outside}"
        assert not errors, errors
    finally:
        context.close()
