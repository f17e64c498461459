"""Dependencies: the settings, a database session per request, and the token checks."""

from __future__ import annotations

from typing import Iterator

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from abray.service.settings import Settings

from . import auth

bearer = HTTPBearer(auto_error=False, description="the service's token (ABRAY_TOKEN, or printed at first start)")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def _check(request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
    token = credentials.credentials if credentials else None
    if not auth.valid(token, request.app.state.token_digest):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                            "missing bearer token" if token is None else "wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


def require_write(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    _check(request, credentials)


def require_read(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    if request.app.state.settings.reads_need_token:
        _check(request, credentials)
