"""/health: whether the database answers and takes writes, whether the job cluster (Ray) is reachable, and the
monitoring pages that run next to it (Ray's dashboard, Grafana), for the results dashboard to link to.

The status code always tells (200 ok, 503 degraded); when reads need the token, the details (the database's
URL, the Ray address, job counts, the links) are shown only with it.
"""

from __future__ import annotations

import os
from typing import Optional
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from abray.service import store
from abray.service.cluster import answers, head_record
from abray.service.settings import Settings

from ..deps import bearer, get_session, token_ok
from ..schemas import Health

router = APIRouter(tags=["health"])


def database_state(request: Request, session: Session) -> tuple[dict, dict]:
    engine = session.get_bind()
    database = {"ok": False, "url": engine.url.render_as_string(hide_password=True), "dialect": engine.dialect.name}
    counts = {}
    try:
        session.execute(text("SELECT 1"))
        database["schema_version"] = int(store.get_meta(session, "schema_version"))
        rows = session.execute(select(store.Job.status, func.count()).group_by(store.Job.status)).all()
        counts = {s: 0 for s in store.JOB_STATUSES} | dict(rows)
        problem = (store.unwritable(request.app.state.engine, request.app.state.database_identity)
                   or store.read_only_server(session))
        if problem is None:
            database["ok"] = True
        else:
            database["error"] = problem
    except Exception as err:
        database["error"] = f"{type(err).__name__}: {str(err)[:500]}"
    return database, counts


@router.get("/health", response_model=Health, responses={503: {"model": Health, "description": "degraded"}})
def health(request: Request, response: Response, session: Session = Depends(get_session),
           credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> Health:
    """ok (200) when the database answers and takes writes and the Ray cluster answers; degraded (503) otherwise.
    When reads need the token, the details come only with it."""
    database, counts = database_state(request, session)
    scheduler = request.app.state.scheduler
    address = scheduler.ray_address
    ray = {"address": address, "ok": bool(address) and answers(address)}
    if not address:
        ray["error"] = scheduler.ray_error or "starting the local Ray head"
    elif not ray["ok"]:
        ray["error"] = f"no answer from the Ray head at {address}"
    ok = database["ok"] and ray["ok"]
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    if request.app.state.settings.reads_need_token and not token_ok(request, credentials):
        return Health(status="ok" if ok else "degraded")
    return Health(status="ok" if ok else "degraded", database=database, ray=ray, jobs=counts,
                  links=links(request.app.state.settings, scheduler.fixed_cluster))


def links(settings: Settings, local_head: bool) -> dict[str, str]:
    """Ray's dashboard and Grafana, those of them that answer: configured, or the service's own local head's."""
    record = head_record(settings.storage) if local_head else None
    candidates = {"ray_dashboard": settings.ray_dashboard_url or (record or {}).get("dashboard_url"),
                  "grafana": settings.grafana_url or os.environ.get("RAY_GRAFANA_HOST")}
    return {name: url for name, url in candidates.items() if url and _url_answers(url)}


def _url_answers(url: str) -> bool:
    parts = urlsplit(url if "//" in url else f"http://{url}")
    port: Optional[int] = parts.port or (443 if parts.scheme == "https" else 80)
    return bool(parts.hostname) and answers(f"{parts.hostname}:{port}", timeout=0.5)
