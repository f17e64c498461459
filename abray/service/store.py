"""The job store: jobs, their trials and every trial's per-epoch metrics, in one SQL database, and the job
state machine.

SQLAlchemy 2; an SQLite file by default, PostgreSQL by URL (postgresql+psycopg://...). The API writes
jobs, the job driver (abray.service.driver) writes trials and metrics while the sweep runs, and both read
through `results_frame`, which returns the project's one tidy schema (abray.results.schema).

Every change of a job's status goes through the functions under "the job state machine" below (claim,
heartbeat, request_cancel, finish), whoever makes it: the API, the scheduler or the driver.

The schema carries a version (table abray_meta). A database made by another version is refused at
start with both numbers, rather than read wrongly. Only the service, at its first start, creates a database
(`connect(url, create=True)`); every other connection (job drivers, the service's own pool) refuses a missing
one, so a deleted SQLite file is never silently replaced by an empty one. `unwritable` says why writes
cannot land now (the file deleted, replaced or made read-only), for /health and the write routes.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import pandas as pd
from sqlalchemy import (JSON, Boolean, Column, DateTime, Float, ForeignKey, Integer, String, Table, Text,
                        create_engine, event, func, make_url, select, text, update)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from ..results.schema import CONFIG_COLUMNS, METRIC_COLUMNS, metric_row, metric_types
from ..sweeps.spec import MAX_NAME_LENGTH

SCHEMA_VERSION = 2  # 2: the metrics table gained reversed_fraction
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
TRIAL_STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")
# The job state machine: each status and the statuses it may become. A status changes only through `_move`,
# a conditional UPDATE, so of two processes racing (a cancel against the scheduler's claim, two schedulers
# claiming one job, the driver finishing while the scheduler fails it) exactly one wins.
TRANSITIONS = {
    "queued": ("running", "cancelled"),
    "running": ("succeeded", "failed", "cancelled"),
}


# ids are INTEGER columns: 64-bit on SQLite, 32-bit on PostgreSQL; no id beyond the smaller can exist
MAX_ID = 2**31 - 1


class SchemaError(RuntimeError):
    """The database holds another schema version than this abray's, or none."""


class MissingDatabase(RuntimeError):
    """The SQLite file is not there, and this connection may not create it."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware(moment: Optional[datetime]) -> Optional[datetime]:
    """Times are stored in UTC; SQLite hands them back without their zone."""
    return moment.replace(tzinfo=timezone.utc) if moment is not None and moment.tzinfo is None else moment


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "abray_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH))
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    spec: Mapped[dict] = mapped_column(JSON)
    total_trials: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[Optional[str]] = mapped_column(String(255), unique=True)
    storage: Mapped[str] = mapped_column(Text)  # the job's own folder: Tune's experiment and the driver's log
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    cancel_requested_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    driver_pid: Mapped[Optional[int]] = mapped_column(Integer)
    driver_host: Mapped[Optional[str]] = mapped_column(String(255))
    error: Mapped[Optional[str]] = mapped_column(Text)


class Trial(Base):
    __tablename__ = "trials"
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    trial_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    config: Mapped[dict] = mapped_column(JSON)
    epochs_reported: Mapped[int] = mapped_column(Integer, default=0)
    test_accuracy: Mapped[Optional[float]] = mapped_column(Float)
    diverged: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[Optional[str]] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


_SQL_TYPES = {int: Integer, float: Float, bool: Boolean, str: Text}


class Metric(Base):
    """One reported epoch of one trial; its columns are the schema's METRIC_COLUMNS (abray.results.schema)."""
    __table__ = Table(
        "metrics", Base.metadata,
        Column("job_id", Integer, primary_key=True),
        Column("trial_id", String(64), primary_key=True),
        *(Column(name, _SQL_TYPES[kind], primary_key=name == "epoch", nullable=nullable)
          for name, (kind, nullable) in metric_types().items()),
    )


def normalize_url(url: str) -> str:
    """Accept plain postgresql:// URLs and use the psycopg 3 driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def sqlite_path(url: str) -> Optional[Path]:
    """The file of an SQLite URL; None for other databases and in-memory SQLite."""
    url = make_url(normalize_url(url))
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def connect(url: str, create: bool = False) -> Engine:
    """An engine on `url` whose schema is this version's. `create`: make the database (an SQLite file) and its
    tables when there are none; only the service does, at its start. Otherwise a missing SQLite file or an
    empty database is refused, and no connection of this engine will ever create the file."""
    url = normalize_url(url)
    path = sqlite_path(url)
    if path is not None:
        if not path.exists():
            if not create:
                raise MissingDatabase(f"database {path} does not exist; `abray serve` creates it at its first "
                                      "start, and nothing else may (was it deleted?)")
            sqlite3.connect(path).close()
        # mode=rw: SQLite opens the file or fails, never makes a new empty one (a pool opens connections later)
        engine = create_engine(url, creator=lambda: sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=30,
                                                                    check_same_thread=False))

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):
            # WAL: readers never block the job drivers' writes; foreign keys are off by default in SQLite
            cursor = conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
    else:
        # a server that accepts and never answers fails the connection in 10 s instead of hanging the caller
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20,
                               connect_args={"connect_timeout": 10})
    check_schema(engine, create)
    return engine


def check_schema(engine: Engine, create: bool = False) -> None:
    from sqlalchemy import inspect

    tables = set(inspect(engine).get_table_names())
    if "abray_meta" not in tables:
        if tables & {"jobs", "trials", "metrics"}:
            raise SchemaError(f"database {engine.url.render_as_string(hide_password=True)} has abray tables but no "
                              f"schema version; this abray needs version {SCHEMA_VERSION}")
        if not create:
            raise SchemaError(f"database {engine.url.render_as_string(hide_password=True)} has no abray tables; "
                              "`abray serve` creates them at its first start")
        Base.metadata.create_all(engine)
        with Session(engine) as session, session.begin():
            session.merge(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
        return
    with Session(engine) as session:
        found = session.get(Meta, "schema_version")
    if found is None or found.value != str(SCHEMA_VERSION):
        raise SchemaError(f"database {engine.url.render_as_string(hide_password=True)} has schema version "
                          f"{found.value if found else 'none'}; this abray needs version {SCHEMA_VERSION}. "
                          "Use a new database (or the abray version that made it).")


def file_identity(engine: Engine) -> Optional[tuple[int, int]]:
    """The SQLite file's (device, inode) now, to tell later whether it is still the same file; None otherwise."""
    path = sqlite_path(str(engine.url))
    try:
        found = os.stat(path) if path is not None else None
    except OSError:
        return None
    return (found.st_dev, found.st_ino) if found is not None else None


def unwritable(engine: Engine, identity: Optional[tuple[int, int]]) -> Optional[str]:
    """Why a write would not land in the database the service opened, or None. SQLite only (a file check, cheap
    enough before every write): the file deleted or replaced since `identity` was taken (writes would go to a
    file nobody reads), or made read-only (no write permission bit, which holds even for root)."""
    path = sqlite_path(str(engine.url))
    if path is None:
        return None
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return f"the database file {path} was deleted while the service ran; restore it, or restart the service " \
               "to begin a new one"
    except OSError as err:
        return f"the database file {path} cannot be read: {err.strerror}"
    if identity is not None and (found.st_dev, found.st_ino) != identity:
        return f"the database file {path} was replaced while the service ran; restart the service to use the new one"
    if not found.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(path, os.W_OK):
        return f"the database file {path} is read-only (mode {stat.S_IMODE(found.st_mode):04o})"
    return None


def read_only_server(session: Session) -> Optional[str]:
    """PostgreSQL: why the server takes no writes (a standby, or read-only transactions by default), or None."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    if session.execute(text("SHOW transaction_read_only")).scalar() == "on":
        return "the PostgreSQL server is read-only (transaction_read_only is on; a standby?)"
    return None


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def get_meta(session: Session, key: str) -> Optional[str]:
    found = session.get(Meta, key)
    return found.value if found else None


def set_meta(session: Session, key: str, value: str) -> None:
    session.merge(Meta(key=key, value=value))


# ---- the job state machine ---------------------------------------------------------------------------------

def _move(session: Session, job_id: int, source: str, target: str, **values) -> bool:
    """source -> target if the job is in `source` now (a conditional UPDATE); False if it is not."""
    if target not in TRANSITIONS.get(source, ()):
        raise ValueError(f"a job cannot go from {source} to {target}")
    return session.execute(update(Job).where(Job.id == job_id, Job.status == source)
                           .values(status=target, **values)).rowcount == 1


def claim(session: Session, job_id: int) -> bool:
    """queued -> running, by the scheduler about to start the job's driver. False if another process claimed it
    or it was cancelled meanwhile."""
    now = utcnow()
    return _move(session, job_id, "queued", "running", started_at=now, heartbeat_at=now)


def set_driver(session: Session, job_id: int, pid: int, host: str) -> None:
    """Where the claimed job's driver process runs."""
    session.execute(update(Job).where(Job.id == job_id).values(driver_pid=pid, driver_host=host))


def heartbeat(session: Session, job_id: int) -> bool:
    """The running job's driver is alive; True once its cancellation has been requested."""
    session.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(heartbeat_at=utcnow()))
    return session.scalar(select(Job.cancel_requested_at).where(Job.id == job_id)) is not None


def request_cancel(session: Session, job_id: int) -> str:
    """Cancel a job: a queued one at once ("cancelled"); a running one by request, which its driver acts on
    within seconds ("requested"); a finished one not at all ("finished")."""
    now = utcnow()
    if _move(session, job_id, "queued", "cancelled", cancel_requested_at=now, finished_at=now):
        return "cancelled"
    requested = session.execute(update(Job).where(Job.id == job_id, Job.status == "running")
                                .values(cancel_requested_at=func.coalesce(Job.cancel_requested_at, now))).rowcount
    return "requested" if requested else "finished"


def finish(session: Session, job_id: int, status: str, error: Optional[str] = None) -> bool:
    """running -> succeeded, failed or cancelled, once: by the driver when its sweep ends, or by the scheduler
    when the driver is gone. Trials still marked running are closed with it. False if the job was not running."""
    if not _move(session, job_id, "running", status, error=error, finished_at=utcnow()):
        return False
    close_trials(session, job_id, "cancelled" if status == "cancelled" else "failed")
    return True


# ---- writes by the job driver, while the sweep runs ------------------------------------------------------

def record_trial(session: Session, job_id: int, trial_id: str, config: dict, status: str,
                 error: Optional[str] = None) -> None:
    trial = session.get(Trial, (job_id, trial_id))
    if trial is None:
        trial = Trial(job_id=job_id, trial_id=trial_id, config=config, status=status)
        session.add(trial)
    trial.status, trial.updated_at = status, utcnow()
    if error is not None:
        trial.error = error


def record_epoch(session: Session, job_id: int, trial_id: str, metrics: dict) -> None:
    """One epoch's metrics (a Tune report, or any row of the schema's metric columns) of a trial that record_trial
    has seen. An epoch reported again (a trial restarted by a resumed sweep) replaces its row and is not counted
    again: a trial's epochs_reported is its number of rows."""
    row = metric_row(metrics)
    new = session.get(Metric, (job_id, trial_id, row["epoch"])) is None
    session.merge(Metric(job_id=job_id, trial_id=trial_id, **row))
    session.execute(update(Trial).where(Trial.job_id == job_id, Trial.trial_id == trial_id).values(
        epochs_reported=Trial.epochs_reported + int(new), test_accuracy=row["test_accuracy"],
        diverged=bool(row["diverged"]), updated_at=utcnow()))


def close_trials(session: Session, job_id: int, status: str) -> None:
    """Give trials still marked running when the sweep ended (Tune stops them without a callback) `status`."""
    session.execute(update(Trial).where(Trial.job_id == job_id, Trial.status == "running")
                    .values(status=status, updated_at=utcnow()))


# ---- reads ------------------------------------------------------------------------------------------------

def epochs_reported(session: Session, job_id: int) -> int:
    """Epochs recorded for the job, over all trials: every record_epoch adds one, so it versions the results."""
    return session.scalar(select(func.coalesce(func.sum(Trial.epochs_reported), 0))
                          .where(Trial.job_id == job_id))


def progress(session: Session, job: Job) -> dict:
    """Trials done (finished, diverged included), running, failed, diverged and cancelled, out of the total;
    and the epochs reported so far (the rows of the job's results)."""
    return progress_of(session, [job])[job.id]


def progress_of(session: Session, jobs: list[Job]) -> dict[int, dict]:
    """`progress` for many jobs (a page of the job list) in one query."""
    trials: dict[int, list] = {job.id: [] for job in jobs}
    if jobs:
        for job_id, *row in session.execute(select(Trial.job_id, Trial.status, Trial.diverged, Trial.epochs_reported)
                                            .where(Trial.job_id.in_(list(trials)))):
            trials[job_id].append(row)
    found = {}
    for job in jobs:
        rows = trials[job.id]
        done = sum(1 for s, _, _ in rows if s == "succeeded")
        running = sum(1 for s, _, _ in rows if s == "running")
        failed = sum(1 for s, _, _ in rows if s == "failed")
        cancelled = sum(1 for s, _, _ in rows if s == "cancelled")
        diverged = sum(1 for s, d, _ in rows if d and s == "succeeded")
        found[job.id] = {"total": job.total_trials, "done": done, "running": running, "failed": failed,
                         "diverged": diverged, "cancelled": cancelled,
                         "pending": max(0, job.total_trials - done - running - failed - cancelled),
                         "epochs": sum(e for _, _, e in rows)}
    return found


def _fetch_raw(session: Session, query) -> list[tuple]:
    """Plain tuples from the driver's own cursor. Large reads (10,000 metric rows) spend most of their time
    making SQLAlchemy Row objects otherwise; this halves a results query."""
    connection = session.connection()
    compiled = query.compile(dialect=connection.dialect)
    params = [compiled.params[k] for k in compiled.positiontup] if compiled.positional else compiled.params
    cursor = connection.connection.driver_connection.cursor()
    try:
        cursor.execute(str(compiled), params)
        return cursor.fetchall()
    finally:
        cursor.close()


def results_frame(session: Session, job_id: int) -> pd.DataFrame:
    """The job's tidy frame (results.CONFIG_COLUMNS then METRIC_COLUMNS), one row per trial and epoch."""
    names = ["trial_id"] + METRIC_COLUMNS
    query = (select(*(Metric.__table__.c[c] for c in names)).where(Metric.job_id == job_id)
             .order_by(Metric.trial_id, Metric.epoch))
    rows = _fetch_raw(session, query)
    columns = list(zip(*rows)) if rows else [()] * len(names)
    metrics = pd.DataFrame({name: pd.Series(col, dtype=object if name in ("trial_id", "staleness_hist") else None)
                            for name, col in zip(names, columns)}, columns=names)
    configs = session.execute(select(Trial.trial_id, Trial.config).where(Trial.job_id == job_id)).all()
    config_frame = pd.DataFrame([{"trial_id": t, **{c: cfg.get(c) for c in CONFIG_COLUMNS}} for t, cfg in configs],
                                columns=["trial_id"] + CONFIG_COLUMNS)
    frame = metrics.merge(config_frame, on="trial_id", how="left")
    frame.insert(0, "job_id", job_id)
    frame = frame[["job_id", "trial_id"] + CONFIG_COLUMNS + METRIC_COLUMNS]
    return frame.astype({"diverged_step": "Int64", "diverged": bool, "epoch": int, "steps": int})
