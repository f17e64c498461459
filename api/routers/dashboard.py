"""/dashboard: the results dashboard (dashboards/web), served with plotly's own JavaScript bundle.

The page is static and needs no token; the data it shows comes from the /jobs endpoints, with the
service's token setting (the page keeps the token in the browser's localStorage). Nothing is loaded
from a CDN: the HTML, app.js, charts.js, table.js, style.css and plotly.min.js (from the `plotly` Python
package) are served here, and only these known files (no paths from the request reach the file system).
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import FileResponse, RedirectResponse

router = APIRouter(tags=["dashboard"])

# Everything the page loads comes from the project itself: this policy makes the browser refuse anything else.
# Plotly sets inline styles and injects <style> elements; the favicon is an empty data: URL.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'self'")


def web_dir() -> Path:
    """dashboards/web: next to the `api` package in a checkout (or an editable install), else the installed
    `dashboards` package's data."""
    repo = Path(__file__).resolve().parents[2] / "dashboards" / "web"
    if (repo / "index.html").is_file():
        return repo
    try:
        installed = Path(str(resources.files("dashboards").joinpath("web")))
    except ModuleNotFoundError:
        installed = None
    if installed is not None and (installed / "index.html").is_file():
        return installed
    raise RuntimeError("the dashboard's files (dashboards/web) are missing from this installation")


def plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


# name -> (where it is, media type, Cache-Control)
STATIC = {
    "app.js": (lambda: web_dir() / "app.js", "text/javascript; charset=utf-8", "no-cache"),
    "charts.js": (lambda: web_dir() / "charts.js", "text/javascript; charset=utf-8", "no-cache"),
    "table.js": (lambda: web_dir() / "table.js", "text/javascript; charset=utf-8", "no-cache"),
    "style.css": (lambda: web_dir() / "style.css", "text/css; charset=utf-8", "no-cache"),
    "plotly.min.js": (plotly_js, "text/javascript; charset=utf-8", "public, max-age=86400"),
}


@lru_cache(maxsize=4)
def _gzipped(path: Path, mtime_ns: int) -> bytes:
    return gzip.compress(path.read_bytes(), compresslevel=6)


@router.get("/dashboard", include_in_schema=False)
def dashboard() -> FileResponse:
    """The results dashboard: jobs, accuracy against delay, loss curves, staleness and the summary table."""
    return FileResponse(web_dir() / "index.html", media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP,
                                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


@router.get("/dashboard/", include_in_schema=False)
def dashboard_slash() -> RedirectResponse:
    return RedirectResponse("/dashboard", status_code=status.HTTP_308_PERMANENT_REDIRECT)


@router.get("/dashboard/static/{name}", include_in_schema=False)
def static(name: str, request: Request) -> Response:
    """One of the dashboard's own files; anything else is a 404."""
    if name not in STATIC:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dashboard file {name!r}")
    locate, media_type, cache = STATIC[name]
    path = locate()
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dashboard file {name!r} is missing from this installation")
    headers = {"Cache-Control": cache, "X-Content-Type-Options": "nosniff", "Vary": "Accept-Encoding"}
    if name == "plotly.min.js" and "gzip" in request.headers.get("accept-encoding", ""):
        # 4.8 MB as is, about a third of that gzipped; compressed once per file version
        body = _gzipped(path, path.stat().st_mtime_ns)
        return Response(body, media_type=media_type, headers={**headers, "Content-Encoding": "gzip"})
    return FileResponse(path, media_type=media_type, headers=headers)
