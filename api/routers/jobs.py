"""/jobs: submit a sweep, list and follow jobs, cancel, and read trials, results and the summary."""

from __future__ import annotations

import json
from typing import Literal, Optional

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response, status
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from abray.results.schema import FORMATS, frame_bytes
from abray.results.summary import SUMMARY_COLUMNS, summarize
from abray.service import store
from abray.service.admission import admit
from abray.service.settings import Settings
from abray.sweeps.spec import DEFAULT_SPEC
from abray.training.config import ConfigError

from ..deps import get_session, get_settings, json_body, require_read, require_writable, require_write, unprocessable
from ..schemas import JobList, JobOut, JobStatus, Message, Summary, TrialOut

router = APIRouter(prefix="/jobs", tags=["jobs"])

JOB_ID = Path(ge=1, le=store.MAX_ID, description="the job's id")
NOT_FOUND = {404: {"model": Message, "description": "no such job"}}
READ = {401: {"model": Message, "description": "no valid token, when reads need one"},
        503: {"model": Message, "description": "the database is unavailable"}}
WRITE = {401: {"model": Message, "description": "no valid token (sent before the body is read)"},
         503: {"model": Message, "description": "the database cannot take writes (deleted, replaced or read-only); "
                                                "nothing was stored"}}


def job_out(session: Session, job: store.Job, progress: Optional[dict] = None) -> JobOut:
    aware = store.aware
    return JobOut(id=job.id, name=job.name, status=job.status, progress=progress or store.progress(session, job),
                  created_at=aware(job.created_at), started_at=aware(job.started_at),
                  finished_at=aware(job.finished_at), cancel_requested_at=aware(job.cancel_requested_at),
                  error=job.error, spec=job.spec)


def get_job(job_id: int = JOB_ID, session: Session = Depends(get_session)) -> store.Job:
    job = session.get(store.Job, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return job


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobOut,
             dependencies=[Depends(require_write), Depends(require_writable)],
             openapi_extra={"requestBody": {"required": True, "description": "a sweep spec, as for `abray sweep` "
                                            "(without the fields the service sets: storage, storage_path, output)",
                                            "content": {"application/json": {
                                                "schema": {"$ref": "#/components/schemas/JobSpec"},
                                                "example": dict(DEFAULT_SPEC, epochs=5)}}}},
             responses={201: {"description": "the job, queued", "headers": {"Location": {
                                  "description": "the job's URL", "schema": {"type": "string"}}}},
                        200: {"description": "a retry: the job this Idempotency-Key already created"},
                        **WRITE,
                        409: {"model": Message, "description": "the Idempotency-Key was used with another spec"},
                        413: {"model": Message, "description": "the body is larger than this service takes "
                                                               "(refused before it is read)"},
                        422: {"description": "an invalid spec, or one beyond this service's limits; every problem "
                                             "is listed, and nothing is stored"}})
def submit(request: Request, response: Response, values: object = Depends(json_body),
           idempotency_key: Optional[str] = Header(None, max_length=255,
                                                   description="retries with the same key never create two jobs"),
           session: Session = Depends(get_session), settings: Settings = Depends(get_settings)) -> JobOut:
    try:
        parsed = admit(values, settings, request.app.state.scheduler.capacity())
    except ConfigError as err:
        raise unprocessable(err.errors) from None
    warnings = parsed.warnings()
    if idempotency_key is not None:
        replay = _replay(session, idempotency_key, values, response)
        if replay is not None:
            return replay.model_copy(update={"warnings": warnings})
    job = store.Job(name=parsed.options.name, status="queued", spec=values, total_trials=parsed.size,
                    idempotency_key=idempotency_key, storage="", created_at=store.utcnow())
    try:
        session.add(job)
        session.flush()  # the id names the job's folder; one transaction, so a failure leaves no row
        job.storage = str((settings.storage / "jobs" / str(job.id)).resolve())
        session.commit()
    except IntegrityError:
        session.rollback()  # a concurrent retry with the same key won the race: answer with its job
        replay = _replay(session, idempotency_key, values, response) if idempotency_key else None
        if replay is None:
            raise
        return replay.model_copy(update={"warnings": warnings})
    response.headers["Location"] = f"/jobs/{job.id}"
    return job_out(session, job).model_copy(update={"warnings": warnings})


def _replay(session: Session, key: str, spec: dict, response: Response) -> Optional[JobOut]:
    job = session.scalar(select(store.Job).where(store.Job.idempotency_key == key))
    if job is None:
        return None
    if json.dumps(job.spec, sort_keys=True) != json.dumps(spec, sort_keys=True):
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"Idempotency-Key {key!r} was already used for job {job.id}, with another spec")
    response.status_code = status.HTTP_200_OK
    response.headers["Idempotent-Replayed"] = "true"
    return job_out(session, job)


@router.get("", response_model=JobList, dependencies=[Depends(require_read)], responses=READ)
def list_jobs(status_filter: Optional[JobStatus] = Query(None, alias="status"),
              limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=store.MAX_ID),
              session: Session = Depends(get_session)) -> JobList:
    query = select(store.Job)
    count = select(func.count()).select_from(store.Job)
    if status_filter:
        query, count = query.where(store.Job.status == status_filter), count.where(store.Job.status == status_filter)
    found = session.scalars(query.order_by(store.Job.id.desc()).limit(limit).offset(offset)).all()
    progress = store.progress_of(session, found)  # one query for the page, not one per job
    return JobList(items=[job_out(session, j, progress[j.id]) for j in found], total=session.scalar(count),
                   limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobOut, dependencies=[Depends(require_read)],
            responses={**NOT_FOUND, **READ})
def read_job(job: store.Job = Depends(get_job), session: Session = Depends(get_session)) -> JobOut:
    return job_out(session, job)


@router.post("/{job_id}/cancel", response_model=JobOut,
             dependencies=[Depends(require_write), Depends(require_writable)],
             responses={200: {"description": "the job was queued: cancelled at once"},
                        202: {"model": JobOut, "description": "the job runs: its trials stop within seconds"},
                        **NOT_FOUND, **WRITE,
                        409: {"model": Message, "description": "the job has already finished"}})
def cancel(response: Response, job_id: int = JOB_ID, session: Session = Depends(get_session)) -> JobOut:
    """A queued job is cancelled at once (200); a running one stops its trials within seconds (202)."""
    # the write first: on SQLite it takes the write lock before reading, so racing the scheduler's claim it
    # waits its turn rather than failing to upgrade a read
    outcome = store.request_cancel(session, job_id)
    session.commit()
    job = session.get(store.Job, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    if outcome == "finished":
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} has already finished ({job.status}); "
                                                      "there is nothing to cancel")
    if outcome == "requested":
        response.status_code = status.HTTP_202_ACCEPTED
    return job_out(session, job)


@router.get("/{job_id}/trials", response_model=list[TrialOut], dependencies=[Depends(require_read)],
            responses={**NOT_FOUND, **READ})
def trials(job: store.Job = Depends(get_job), session: Session = Depends(get_session)) -> list[TrialOut]:
    found = session.scalars(select(store.Trial).where(store.Trial.job_id == job.id)
                            .order_by(store.Trial.trial_id)).all()
    return [TrialOut(trial_id=t.trial_id, status=t.status, config=t.config, epochs_reported=t.epochs_reported,
                     test_accuracy=t.test_accuracy, diverged=t.diverged, error=t.error) for t in found]


@router.get("/{job_id}/results", dependencies=[Depends(require_read)],
            responses={200: {"content": {media: {} for media in FORMATS.values()},
                             "description": "the tidy results: a row per trial and epoch, so far"},
                       **NOT_FOUND, **READ})
def results(request: Request, format: Literal[tuple(FORMATS)] = "json", job: store.Job = Depends(get_job),
            session: Session = Depends(get_session)) -> Response:
    """The tidy schema (job_id, trial_id, config columns, metric columns): `pandas.read_csv(url)` and
    `pandas.read_parquet(url)` read it directly; JSON is a list of records (`pandas.read_json(url)`)."""
    version = store.epochs_reported(session, job.id)
    body = request.app.state.result_cache.get(
        (job.id, format), version, lambda: frame_bytes(store.results_frame(session, job.id), format))
    return Response(body, media_type=FORMATS[format],
                    headers={"Content-Disposition": f'attachment; filename="job-{job.id}.{format}"'})


@router.get("/{job_id}/summary", response_model=Summary, dependencies=[Depends(require_read)],
            responses={**NOT_FOUND, **READ})
def summary(request: Request, job: store.Job = Depends(get_job), session: Session = Depends(get_session)) -> Summary:
    """Final test accuracy (percent) per setting (optimizer, delay and every other swept field): mean and std
    over seeds, with trial and divergence counts. The same summary as `abray results`."""
    def build() -> bytes:
        table = summarize(store.results_frame(session, job.id))
        keys = [c for c in table.columns if c not in SUMMARY_COLUMNS]
        return json.dumps({"group_by": keys, "rows": json.loads(table.to_json(orient="records"))}).encode()

    body = json.loads(request.app.state.result_cache.get((job.id, "summary"), store.epochs_reported(session, job.id),
                                                         build))
    return Summary(job_id=job.id, status=job.status, **body)
