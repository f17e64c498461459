"""Dependencies: the settings, a database session per request, the token checks, the database's writability and
the request body, read within the service's limit.

A write route lists them in this order, so a request without a valid token gets its 401 before a byte of its
body is read, and a body over the limit its 413 before any of it is parsed.
"""

from __future__ import annotations

import json
from typing import Iterator

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from abray.service import store
from abray.service.settings import Settings

from . import auth

bearer = HTTPBearer(auto_error=False, description="the service's token (ABRAY_TOKEN, or printed at first start)")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def token_ok(request: Request, credentials: HTTPAuthorizationCredentials | None) -> bool:
    return auth.valid(credentials.credentials if credentials else None, request.app.state.token_digest)


def _check(request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
    if not token_ok(request, credentials):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                            "missing bearer token" if credentials is None else "wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


def require_write(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    _check(request, credentials)


def require_read(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    if request.app.state.settings.reads_need_token:
        _check(request, credentials)


def require_writable(request: Request) -> None:
    """503 when a write would not land where the service reads (the SQLite file deleted, replaced or read-only)."""
    problem = store.unwritable(request.app.state.engine, request.app.state.database_identity)
    if problem is not None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"{problem}; nothing was stored")


def unprocessable(errors: list[dict]) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors: loc is the field's path in the body."""
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                         [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": "value_error"} for e in errors])


def too_large(size: str, limit: int) -> HTTPException:
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                         f"the request body is {size} bytes; this service takes at most {limit} "
                         "(`abray serve --max-body-bytes`)")


async def json_body(request: Request) -> object:
    """The request body as JSON, read only up to the service's limit: a declared length beyond it is refused at
    once, a body without one (chunked) when its count passes the limit."""
    limit = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(declared, limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(f"more than {limit}", limit)
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as err:  # not JSON, not UTF-8, nested too deep, an integer too long
        raise unprocessable([{"loc": [], "msg": f"the body is not valid JSON: {str(err)[:200]}"}]) from None
