"""/jobs: submit a sweep, list and follow jobs, cancel, and read trials, results and the summary."""

from __future__ import annotations

import json
from typing import Any, Literal, Optional

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request, Response, status
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from abray.results.schema import FORMATS, frame_bytes
from abray.results.summary import SUMMARY_COLUMNS, summarize
from abray.service import store
from abray.service.settings import Settings
from abray.sweeps.spec import DEFAULT_SPEC, parse_spec
from abray.training.config import ConfigError

from ..deps import get_session, get_settings, require_read, require_write
from ..schemas import JobList, JobOut, JobStatus, Summary, TrialOut

router = APIRouter(prefix="/jobs", tags=["jobs"])

# fields the service sets itself: each job writes only under its own folder
SERVICE_FIELDS = ("storage", "storage_path", "output")


def unprocessable(errors: list[dict]) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors: loc is the field's path in the body."""
    return HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY,
                         [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": "value_error"} for e in errors])


def job_out(session: Session, job: store.Job, progress: Optional[dict] = None) -> JobOut:
    aware = store.aware
    return JobOut(id=job.id, name=job.name, status=job.status, progress=progress or store.progress(session, job),
                  created_at=aware(job.created_at), started_at=aware(job.started_at),
                  finished_at=aware(job.finished_at), cancel_requested_at=aware(job.cancel_requested_at),
                  error=job.error, spec=job.spec)


def get_job(job_id: int, session: Session = Depends(get_session)) -> store.Job:
    job = session.get(store.Job, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return job


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobOut, dependencies=[Depends(require_write)],
             responses={200: {"description": "a retry: the job this Idempotency-Key already created"},
                        409: {"description": "the Idempotency-Key was used with another spec"},
                        422: {"description": "an invalid or oversized spec; nothing is stored"}})
def submit(response: Response,
           spec: dict[str, Any] = Body(..., examples=[dict(DEFAULT_SPEC, epochs=5)],
                                       description="a sweep spec, as for `abray sweep` (without `storage`)"),
           idempotency_key: Optional[str] = Header(None, max_length=255,
                                                   description="retries with the same key never create two jobs"),
           session: Session = Depends(get_session), settings: Settings = Depends(get_settings)) -> JobOut:
    service_set = [f for f in SERVICE_FIELDS if f in spec]
    if service_set:
        raise unprocessable([{"loc": [f], "msg": "set by the service (each job writes under its own folder); "
                                                 "leave it out"} for f in service_set])
    try:
        parsed = parse_spec(spec)
    except ConfigError as err:
        raise unprocessable(err.errors) from None
    if parsed.size > settings.max_trials:
        raise unprocessable([{"loc": ["grid"], "msg": f"sweep has {parsed.size} trials, more than this service "
                                                      f"accepts ({settings.max_trials})"}])
    warnings = parsed.warnings()
    if idempotency_key is not None:
        replay = _replay(session, idempotency_key, spec, response)
        if replay is not None:
            return replay.model_copy(update={"warnings": warnings})
    job = store.Job(name=parsed.options.name, status="queued", spec=spec, total_trials=parsed.size,
                    idempotency_key=idempotency_key, storage="", created_at=store.utcnow())
    try:
        session.add(job)
        session.flush()  # the id names the job's folder; one transaction, so a failure leaves no row
        job.storage = str((settings.storage / "jobs" / str(job.id)).resolve())
        session.commit()
    except IntegrityError:
        session.rollback()  # a concurrent retry with the same key won the race: answer with its job
        replay = _replay(session, idempotency_key, spec, response) if idempotency_key else None
        if replay is None:
            raise
        return replay.model_copy(update={"warnings": warnings})
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


@router.get("", response_model=JobList, dependencies=[Depends(require_read)])
def list_jobs(status_filter: Optional[JobStatus] = Query(None, alias="status"),
              limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0),
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
            responses={404: {"description": "no such job"}})
def read_job(job: store.Job = Depends(get_job), session: Session = Depends(get_session)) -> JobOut:
    return job_out(session, job)


@router.post("/{job_id}/cancel", response_model=JobOut, dependencies=[Depends(require_write)],
             responses={404: {"description": "no such job"}, 409: {"description": "the job has already finished"}})
def cancel(job_id: int, response: Response, session: Session = Depends(get_session)) -> JobOut:
    """A queued job is cancelled at once (200); a running one stops its trials within seconds (202)."""
    job = get_job(job_id, session)
    outcome = store.request_cancel(session, job_id)
    session.commit()
    session.refresh(job)
    if outcome == "finished":
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} has already finished ({job.status}); "
                                                      "there is nothing to cancel")
    if outcome == "requested":
        response.status_code = status.HTTP_202_ACCEPTED
    return job_out(session, job)


@router.get("/{job_id}/trials", response_model=list[TrialOut], dependencies=[Depends(require_read)])
def trials(job: store.Job = Depends(get_job), session: Session = Depends(get_session)) -> list[TrialOut]:
    found = session.scalars(select(store.Trial).where(store.Trial.job_id == job.id)
                            .order_by(store.Trial.trial_id)).all()
    return [TrialOut(trial_id=t.trial_id, status=t.status, config=t.config, epochs_reported=t.epochs_reported,
                     test_accuracy=t.test_accuracy, diverged=t.diverged, error=t.error) for t in found]


@router.get("/{job_id}/results", dependencies=[Depends(require_read)],
            responses={200: {"content": {media: {} for media in FORMATS.values()},
                             "description": "the tidy results: a row per trial and epoch, so far"}})
def results(request: Request, format: Literal[tuple(FORMATS)] = "json", job: store.Job = Depends(get_job),
            session: Session = Depends(get_session)) -> Response:
    """The tidy schema (job_id, trial_id, config columns, metric columns): `pandas.read_csv(url)` and
    `pandas.read_parquet(url)` read it directly; JSON is a list of records (`pandas.read_json(url)`)."""
    version = store.epochs_reported(session, job.id)
    body = request.app.state.result_cache.get(
        (job.id, format), version, lambda: frame_bytes(store.results_frame(session, job.id), format))
    return Response(body, media_type=FORMATS[format],
                    headers={"Content-Disposition": f'attachment; filename="job-{job.id}.{format}"'})


@router.get("/{job_id}/summary", response_model=Summary, dependencies=[Depends(require_read)])
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
