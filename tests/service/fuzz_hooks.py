"""Schemathesis hooks for tests/service/test_fuzz.py (loaded by `st run` through SCHEMATHESIS_HOOKS): one check
beyond schemathesis' own, that a submission changes the job count by exactly what its answer says: one job for
a 201, none for a 200 replay or any refusal. The fuzzer is the only client (one worker), so the count is known
from the answers; it is read back after every submission."""

from __future__ import annotations

import os

import httpx
import schemathesis

_expected: list[int] = []  # the job count the answers so far imply, once read


def job_count() -> int:
    response = httpx.get(f"{os.environ['FUZZ_BASE_URL']}/jobs", params={"limit": 1}, timeout=30,
                         headers={"Authorization": f"Bearer {os.environ['FUZZ_TOKEN']}"})
    response.raise_for_status()
    return response.json()["total"]


def _submits(case) -> bool:
    return case.method.upper() == "POST" and case.operation.path == "/jobs"


@schemathesis.hook
def before_call(context, case, kwargs):
    if _submits(case) and not _expected:
        _expected.append(job_count())


@schemathesis.check
def writes_change_the_job_count_as_answered(ctx, response, case):
    if not _submits(case) or not _expected:
        return None
    before = _expected[0]
    _expected[0] = before + (1 if response.status_code == 201 else 0)
    after = job_count()
    if after != _expected[0]:
        found, _expected[0] = _expected[0], after
        raise AssertionError(f"POST /jobs answered {response.status_code} and the job count went from {before} to "
                             f"{after} (expected {found})")
    return None
