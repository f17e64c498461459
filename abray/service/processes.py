"""The job drivers' processes: start one, tell whether it runs, end it, and find those on a Ray cluster.

A driver is `python -m abray.service.driver JOB_ID` in its own session, so an API restart does not signal it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional


DRIVER_MODULE = "abray.service.driver"


def launch(job_id: int, database_url: str, ray_address: str, fixed_cluster: bool, log_path: Path) -> subprocess.Popen:
    """Start the driver for `job_id` in a new session (an API restart does not signal it). `fixed_cluster`:
    the service's own local head, which cannot grow, so the driver refuses trials bigger than it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, ABRAY_DATABASE_URL=database_url, RAY_ADDRESS=ray_address, PYTHONUNBUFFERED="1",
               ABRAY_FIXED_CLUSTER="1" if fixed_cluster else "0")
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", DRIVER_MODULE, str(job_id)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def driver_alive(pid: Optional[int], host: Optional[str]) -> Optional[bool]:
    """Whether the driver process runs; None when it runs on another host (then only its heartbeat tells)."""
    if pid is None or host != socket.gethostname():
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state not in ("Z", "X")  # a zombie has exited; its parent just has not reaped it


def kill_driver(pid: int) -> None:
    """End a driver and everything in its session (its Tune trials end with it, being its actors)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def drivers_on(ray_address: str) -> list[tuple[int, int, str]]:
    """(pid, job id, database URL) of each driver on this machine that `launch` started for the Ray cluster at
    `ray_address`, whatever storage or database it belongs to (found by its command line and environment)."""
    from .cluster import _psutil

    psutil = _psutil()
    found = []
    for proc in psutil.process_iter():
        try:
            words = proc.cmdline()
            if DRIVER_MODULE not in words:
                continue
            job = words[words.index(DRIVER_MODULE) + 1:][:1]
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if job and job[0].isdigit() and env.get("RAY_ADDRESS") == ray_address and env.get("ABRAY_DATABASE_URL"):
            found.append((proc.pid, int(job[0]), env["ABRAY_DATABASE_URL"]))
    return found
