"""/docs (Swagger UI) and /redoc (ReDoc) over /openapi.json, working offline: their JavaScript and CSS come from
the `fastapi-offline` package (which bundles Swagger UI, Apache-2.0, and ReDoc, MIT) and are served here, as the
dashboard serves plotly's; nothing is loaded from a CDN. Only these known files are served, and the pages' policy
makes the browser refuse anything from elsewhere.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

router = APIRouter(tags=["docs"])

# Swagger UI starts itself from an inline script; both inject styles
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'")
# ReDoc's sidebar shows a logo from Redocly's CDN (hidden when it fails to load): it gets an empty image instead
REDOC_LOGO = (b"https://cdn.redoc.ly/redoc/logo-mini.svg", b"data:,")

STATIC = {  # name -> media type
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}


def assets() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def _page(html: Response) -> Response:
    html.headers.update({"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                         "Referrer-Policy": "no-referrer"})
    return html


@router.get("/docs", include_in_schema=False)
def swagger(request: Request) -> Response:
    return _page(get_swagger_ui_html(
        openapi_url=request.app.openapi_url, title=f"{request.app.title}: API",
        swagger_js_url="/docs/static/swagger-ui-bundle.js", swagger_css_url="/docs/static/swagger-ui.css",
        swagger_favicon_url="/docs/static/favicon.png",
        # no validator badge: it would send the document to validator.swagger.io
        swagger_ui_parameters={"validatorUrl": None, "defaultModelsExpandDepth": 1, "defaultModelExpandDepth": 2}))


@router.get("/redoc", include_in_schema=False)
def redoc(request: Request) -> Response:
    return _page(get_redoc_html(openapi_url=request.app.openapi_url, title=f"{request.app.title}: API",
                                redoc_js_url="/docs/static/redoc.standalone.js",
                                redoc_favicon_url="/docs/static/favicon.png", with_google_fonts=False))


@lru_cache(maxsize=len(STATIC))
def _asset(name: str, mtime_ns: int) -> bytes:
    body = (assets() / name).read_bytes()
    return body.replace(*REDOC_LOGO) if name == "redoc.standalone.js" else body


@router.get("/docs/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    if name not in STATIC:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no docs file {name!r}")
    path = assets() / name
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"docs file {name!r} is missing from this installation")
    return Response(_asset(name, path.stat().st_mtime_ns), media_type=STATIC[name],
                    headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"})
