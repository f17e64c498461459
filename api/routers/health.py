"""/health: whether the database answers and the job cluster (Ray) is reachable, and the monitoring pages that
run next to it (Ray's dashboard, Grafana), for the results dashboard to link to."""

from __future__ import annotations

import os
from typing import Optional
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request, Response, status
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from abray.service import store
from abray.service.cluster import answers, head_record
from abray.service.settings import Settings

from ..deps import get_session
from ..schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(request: Request, response: Response, session: Session = Depends(get_session)) -> Health:
    engine = session.get_bind()
    database = {"ok": False, "url": engine.url.render_as_string(hide_password=True), "dialect": engine.dialect.name}
    counts = {}
    try:
        session.execute(text("SELECT 1"))
        database.update(ok=True, schema_version=int(store.get_meta(session, "schema_version")))
        rows = session.execute(select(store.Job.status, func.count()).group_by(store.Job.status)).all()
        counts = {s: 0 for s in store.JOB_STATUSES} | dict(rows)
    except Exception as err:
        database["error"] = f"{type(err).__name__}: {err}"
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
