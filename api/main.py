"""The FastAPI app: `create_app()` wires the settings, the store, the token and the scheduler.

Run it with `abray serve` (uvicorn, 127.0.0.1:8000 unless told otherwise); OpenAPI docs are at /docs and /redoc,
served offline. Requests naming a Host the service does not answer to are refused first (DNS rebinding); a
database that fails mid-request is a 503, never a 500.
"""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import FastAPI, Request, status
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from abray.service import store
from abray.service.scheduler import Scheduler
from abray.service.settings import Settings, from_env, host_allowed

from . import auth
from .cache import ResultCache
from .routers import dashboard, docs, health, jobs
from .schemas import JobSpec


class HostCheck:
    """ASGI middleware: refuse (400) requests whose Host header is not one this service answers to, before
    anything else runs. A page on an attacker's domain rebound to this machine's address sends that domain."""

    def __init__(self, app, settings: Settings):
        self.app = app
        self.names, self.any_ip = settings.served_hosts()

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not host_allowed(header, self.names, self.any_ip):
                response = JSONResponse({"detail": f"this service does not answer to the host {header[:100]!r} "
                                                   "(`abray serve --allowed-hosts`)"}, status_code=400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def openapi_document(app: FastAPI, settings: Settings):
    """FastAPI's document, plus the typed spec of POST /jobs (its body is read within the size limit, not by
    FastAPI), and without security or 401 on reads when reads are open."""

    def build() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        spec = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(spec.pop("$defs", {}))
        schemas["JobSpec"] = spec
        for path, operations in document["paths"].items():
            get = operations.get("get")
            if get is None:
                continue
            if not settings.reads_need_token:
                get.pop("security", None)
                get.get("responses", {}).pop("401", None)
            elif path == "/health":  # the status for anyone, the details with the token
                get["security"] = [{"HTTPBearer": []}, {}]
        app.openapi_schema = document
        return document

    return build


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    settings = settings or from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.storage.mkdir(parents=True, exist_ok=True)
        # the only place a database is created; later connections (drivers, this pool) refuse a missing one
        engine = store.connect(settings.database, create=True)
        app.state.engine, app.state.database_identity = engine, store.file_identity(engine)
        app.state.sessions = store.session_factory(engine)
        with app.state.sessions.begin() as session:
            app.state.token_digest = auth.token_digest(session, settings.token)
        app.state.scheduler = Scheduler(settings, app.state.sessions)
        app.state.scheduler.start()
        # Everything imported so far lives as long as the process: keep it out of the collector's full passes.
        # A 10,000-row results query makes enough tuples to start one, and walking every module's objects
        # then tripled its p99 (benchmarks/api_throughput.py).
        gc.collect()
        gc.freeze()
        yield
        app.state.scheduler.stop()  # job drivers run on in their own sessions; a restart picks them up
        engine.dispose()

    app = FastAPI(title="abray", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Submit Ray Tune sweeps over delay and optimizer, follow them, and read their results "
                              "in the tidy schema. Writes need `Authorization: Bearer <token>`"
                              + (", and so do reads." if settings.reads_need_token else "; reads are open."))
    app.state.settings = settings
    app.state.result_cache = ResultCache()

    @app.exception_handler(OperationalError)
    async def database_unavailable(request: Request, err: OperationalError) -> JSONResponse:
        detail = str(err.orig if err.orig is not None else err).strip().splitlines()[0][:300]
        return JSONResponse({"detail": f"the database is unavailable: {detail}"},
                            status_code=status.HTTP_503_SERVICE_UNAVAILABLE)

    app.include_router(jobs.router)
    app.include_router(health.router)
    app.include_router(dashboard.router)
    app.include_router(docs.router)
    app.openapi = openapi_document(app, settings)
    app.add_middleware(HostCheck, settings=settings)
    return app
