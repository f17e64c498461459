"""Screenshot of the results dashboard with a real finished sweep: writes docs/dashboard.png.

    .venv/bin/python dashboards/screenshot.py [--epochs N] [--out docs/dashboard.png]

It starts its own local Ray instance (`ray.init(address="local")`, never a `ray start` head, so it stops only
what it started), runs `abray serve` on it with a temporary storage folder, submits the demo sweep (`make demo`'s:
digits; SGDM and AB; delays 0, 4, 16, 32; seeds 0 and 1; abray train's defaults), waits for it, and photographs /dashboard#job=N in
headless Chromium (Debian's /usr/bin/chromium, or --chromium). About 80 s on two cores.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test support: service, browser
from support.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from support.service import LocalService  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def wait_finished(service: LocalService, job_id: int, timeout: float) -> dict:
    shown = set()

    def finished(job: dict) -> bool:
        p = job["progress"]
        line = f"job {job_id}: {job['status']}, {p['done']}/{p['total']} trials done, {p['running']} running"
        if line not in shown:
            print(line, flush=True)
            shown.add(line)
        return job["status"] in ("succeeded", "failed", "cancelled")

    return service.wait_for(job_id, finished, timeout=timeout, every=2)


def screenshot(url: str, job_id: int, out: Path, width: int, height: int, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
        errors = []
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/dashboard#job={job_id}")
        page.wait_for_selector(f'#job-detail[data-job-id="{job_id}"][data-status="succeeded"]', state="attached",
                               timeout=30_000)
        page.wait_for_timeout(1000)  # let Plotly finish laying out
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        browser.close()
    if errors:
        raise SystemExit(f"the page logged errors: {errors}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    parser.add_argument("--epochs", type=int, default=None, help="default: abray train's (60)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--chromium", default=CHROMIUM)
    parser.add_argument("--keep", action="store_true", help="keep the service's storage folder (printed)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the sweep")
    args = parser.parse_args(argv)
    if not os.access(args.chromium, os.X_OK):
        raise SystemExit(f"no Chromium at {args.chromium} (Debian: apt-get install chromium; or --chromium PATH)")

    import ray

    storage = Path(tempfile.mkdtemp(prefix="abray-dashboard-"))
    # our own instance, stopped by ray.shutdown() below: never `ray stop`, which would end every Ray on the machine
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    service = LocalService(storage, ray_address=ray.get_runtime_context().gcs_address,
                           token=secrets.token_urlsafe(24), poll_s=0.5, reads_need_token=False)
    try:
        service.start()
        from abray.sweeps.spec import DEFAULT_SPEC

        spec = dict(DEFAULT_SPEC, **({"epochs": args.epochs} if args.epochs else {}))
        response = httpx.post(f"{service.url}/jobs", json=spec, headers=service.auth, timeout=30)
        response.raise_for_status()
        job_id = response.json()["id"]
        started = time.time()
        job = wait_finished(service, job_id, args.timeout)
        print(f"job {job_id} {job['status']} in {time.time() - started:.0f} s")
        if job["status"] != "succeeded":
            raise SystemExit(f"the sweep did not succeed: {job['error']}")
        screenshot(service.url, job_id, args.out, args.width, args.height, args.chromium)
        print(f"wrote {args.out}")
    finally:
        service.stop()
        ray.shutdown()
        if args.keep:
            print(f"storage kept in {storage}")
        else:
            import shutil

            shutil.rmtree(storage, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
