"""The FastAPI app: `create_app()` wires the settings, the store, the token and the scheduler.

Run it with `abray serve` (uvicorn, 127.0.0.1:8000 unless told otherwise); OpenAPI docs are at /docs.
"""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import FastAPI

from abray.service import store
from abray.service.scheduler import Scheduler
from abray.service.settings import Settings, from_env

from . import auth
from .cache import ResultCache
from .routers import dashboard, health, jobs


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    settings = settings or from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.storage.mkdir(parents=True, exist_ok=True)
        engine = store.connect(settings.database)
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

    app = FastAPI(title="abray", version="0.1.0", lifespan=lifespan,
                  description="Submit Ray Tune sweeps over delay and optimizer, follow them, and read their results "
                              "in the tidy schema. Writes need `Authorization: Bearer <token>`.")
    app.state.settings = settings
    app.state.result_cache = ResultCache()
    app.include_router(jobs.router)
    app.include_router(health.router)
    app.include_router(dashboard.router)
    return app
