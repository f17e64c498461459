"""/docs (Swagger UI) and /redoc (ReDoc) over /openapi.json, working offline: their JavaScript and CSS come from
the `fastapi-offline` package (which bundles Swagger UI, Apache-2.0, and ReDoc, MIT) and are served here, as the
dashboard serves plotly's; nothing is loaded from a CDN. Only these known files are served."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse

router = APIRouter(tags=["docs"])

STATIC = {  # name -> media type
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}


def assets() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


@router.get("/docs", include_in_schema=False)
def swagger(request: Request) -> Response:
    return get_swagger_ui_html(openapi_url=request.app.openapi_url, title=f"{request.app.title}: API",
                               swagger_js_url="/docs/static/swagger-ui-bundle.js",
                               swagger_css_url="/docs/static/swagger-ui.css",
                               swagger_favicon_url="/docs/static/favicon.png",
                               swagger_ui_parameters={"defaultModelsExpandDepth": 2, "defaultModelExpandDepth": 2})


@router.get("/redoc", include_in_schema=False)
def redoc(request: Request) -> Response:
    return get_redoc_html(openapi_url=request.app.openapi_url, title=f"{request.app.title}: API",
                          redoc_js_url="/docs/static/redoc.standalone.js", redoc_favicon_url="/docs/static/favicon.png",
                          with_google_fonts=False)


@router.get("/docs/static/{name}", include_in_schema=False)
def static(name: str) -> FileResponse:
    if name not in STATIC:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no docs file {name!r}")
    path = assets() / name
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"docs file {name!r} is missing from this installation")
    return FileResponse(path, media_type=STATIC[name],
                        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"})
